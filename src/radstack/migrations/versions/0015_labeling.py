"""labeling: projects (schema, readers, assignment), their frozen cohort's items, reader tasks, labels
with their revisions, and the label objects (SR, SEG) readers stored

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-12 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('labeling_projects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('schema', sa.Text(), nullable=False),
    sa.Column('cohort', sa.Text(), nullable=False),
    sa.Column('readers_per_item', sa.Integer(), nullable=False),
    sa.Column('blinded', sa.Boolean(), nullable=False),
    sa.Column('show_ai', sa.Boolean(), nullable=False),
    sa.Column('assignment', sa.String(length=16), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('owner', sa.String(length=256), nullable=False),
    sa.Column('readers', sa.Text(), nullable=False),
    sa.Column('reviewers', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    )
    op.create_table('labeling_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['labeling_projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project_id', 'study_uid', name='uq_labeling_items_project_study'),
    sa.UniqueConstraint('project_id', 'position', name='uq_labeling_items_project_position'),
    )
    op.create_index('ix_labeling_items_study', 'labeling_items', ['study_uid'], unique=False)
    op.create_table('labeling_tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('reader', sa.String(length=256), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['labeling_items.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['labeling_projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id', 'reader', 'kind', name='uq_labeling_tasks_item_reader_kind'),
    )
    op.create_index('ix_labeling_tasks_reader_state', 'labeling_tasks', ['reader', 'state'], unique=False)
    op.create_index('ix_labeling_tasks_project_state', 'labeling_tasks', ['project_id', 'state'], unique=False)
    op.create_table('labeling_labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('reader', sa.String(length=256), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('geometry', sa.String(length=16), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('value', sa.String(length=64), nullable=True),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('frame', sa.Integer(), nullable=True),
    sa.Column('laterality', sa.String(length=16), nullable=True),
    sa.Column('site', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('source_uid', sa.String(length=64), nullable=True),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['labeling_items.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['labeling_projects.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['labeling_tasks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_labeling_labels_task_current', 'labeling_labels', ['task_id', 'superseded_at'], unique=False)
    op.create_index('ix_labeling_labels_project_label', 'labeling_labels', ['project_id', 'label'], unique=False)
    op.create_table('labeling_objects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('reader', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['labeling_projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_uid'),
    )
    op.create_index('ix_labeling_objects_project_reader', 'labeling_objects', ['project_id', 'reader'], unique=False)
    op.create_index('ix_labeling_objects_study', 'labeling_objects', ['study_uid'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_labeling_objects_study', table_name='labeling_objects')
    op.drop_index('ix_labeling_objects_project_reader', table_name='labeling_objects')
    op.drop_table('labeling_objects')
    op.drop_index('ix_labeling_labels_project_label', table_name='labeling_labels')
    op.drop_index('ix_labeling_labels_task_current', table_name='labeling_labels')
    op.drop_table('labeling_labels')
    op.drop_index('ix_labeling_tasks_project_state', table_name='labeling_tasks')
    op.drop_index('ix_labeling_tasks_reader_state', table_name='labeling_tasks')
    op.drop_table('labeling_tasks')
    op.drop_index('ix_labeling_items_study', table_name='labeling_items')
    op.drop_table('labeling_items')
    op.drop_table('labeling_projects')

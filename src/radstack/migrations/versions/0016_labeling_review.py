"""labeling review: a project's consensus rules, and the decisions of reviewers and adjudicators
(accept, edit an item's consensus; reject, restore a reader's label)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('labeling_projects') as batch:
        batch.add_column(sa.Column('consensus', sa.Text(), nullable=True))
    op.create_table('labeling_decisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('reviewer', sa.String(length=256), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=True),
    sa.Column('revision', sa.Integer(), nullable=True),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['labeling_items.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['label_id'], ['labeling_labels.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['labeling_projects.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['labeling_tasks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_labeling_decisions_item', 'labeling_decisions', ['item_id'], unique=False)
    op.create_index('ix_labeling_decisions_label', 'labeling_decisions', ['label_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_labeling_decisions_label', table_name='labeling_decisions')
    op.drop_index('ix_labeling_decisions_item', table_name='labeling_decisions')
    op.drop_table('labeling_decisions')
    with op.batch_alter_table('labeling_projects') as batch:
        batch.drop_column('consensus')

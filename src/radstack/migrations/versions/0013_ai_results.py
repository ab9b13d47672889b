"""AI results: each stored inference run on a study, its findings, the radiologists' reviews; studies' finding count

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-09 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ai_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('findings', sa.Text(), nullable=False),
    sa.Column('finding_count', sa.Integer(), nullable=False),
    sa.Column('input_key', sa.String(length=64), nullable=False),
    sa.Column('sr_series_uid', sa.String(length=64), nullable=True),
    sa.Column('sr_sop_uid', sa.String(length=64), nullable=True),
    sa.Column('trigger', sa.String(length=256), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_ai_results_study_model', 'ai_results', ['study_uid', 'model'], unique=False)
    op.create_index('ix_ai_results_model_version_created', 'ai_results', ['model', 'model_version', 'created_at'], unique=False)
    op.create_index('ux_ai_results_current', 'ai_results', ['study_uid', 'model'], unique=True, sqlite_where=sa.text('superseded_at IS NULL'), postgresql_where=sa.text('superseded_at IS NULL'))
    op.create_table('ai_finding_reviews',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('result_id', sa.Integer(), nullable=False),
    sa.Column('finding_index', sa.Integer(), nullable=False),
    sa.Column('tracking_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('box', sa.Text(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('reviewed_by', sa.String(length=256), nullable=False),
    sa.Column('role', sa.String(length=64), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['result_id'], ['ai_results.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('result_id', 'finding_index', name='uq_ai_finding_reviews_result_finding'),
    )
    op.create_index('ix_ai_finding_reviews_reviewed_at', 'ai_finding_reviews', ['reviewed_at'], unique=False)
    with op.batch_alter_table('studies') as batch:
        batch.add_column(sa.Column('ai_findings', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies') as batch:
        batch.drop_column('ai_findings')
    op.drop_index('ix_ai_finding_reviews_reviewed_at', table_name='ai_finding_reviews')
    op.drop_table('ai_finding_reviews')
    op.drop_index('ux_ai_results_current', table_name='ai_results', sqlite_where=sa.text('superseded_at IS NULL'), postgresql_where=sa.text('superseded_at IS NULL'))
    op.drop_index('ix_ai_results_model_version_created', table_name='ai_results')
    op.drop_index('ix_ai_results_study_model', table_name='ai_results')
    op.drop_table('ai_results')

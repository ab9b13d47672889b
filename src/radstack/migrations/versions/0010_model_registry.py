"""model registry: models, versions (approval, stage, contract, lineage, metrics, card), artifacts, stage history

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ai_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    )
    op.create_table('ai_model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=True),
    sa.Column('trained_by', sa.String(length=256), nullable=False),
    sa.Column('registered_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reviewed_by', sa.String(length=256), nullable=True),
    sa.Column('review_comment', sa.Text(), nullable=True),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stage_changed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('contract', sa.Text(), nullable=False),
    sa.Column('lineage', sa.Text(), nullable=False),
    sa.Column('metrics', sa.Text(), nullable=False),
    sa.Column('card', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['ai_models.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'version', name='uq_ai_model_versions_model_version'),
    )
    # One production version per model, enforced by the database.
    op.create_index('ux_ai_model_versions_production', 'ai_model_versions', ['model_id'], unique=True, sqlite_where=sa.text("stage = 'production'"), postgresql_where=sa.text("stage = 'production'"))
    op.create_table('ai_model_artifacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('blob_key', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['ai_model_versions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version_id', 'name', name='uq_ai_model_artifacts_version_name'),
    )
    op.create_index('ix_ai_model_artifacts_version_id', 'ai_model_artifacts', ['version_id'])
    op.create_table('ai_model_stage_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('previous_version_id', sa.Integer(), nullable=True),
    sa.Column('from_stage', sa.String(length=16), nullable=True),
    sa.Column('to_stage', sa.String(length=16), nullable=True),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('changed_by', sa.String(length=256), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['ai_models.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['ai_model_versions.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['previous_version_id'], ['ai_model_versions.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_ai_model_stage_changes_model_id', 'ai_model_stage_changes', ['model_id'])


def downgrade() -> None:
    op.drop_index('ix_ai_model_stage_changes_model_id', table_name='ai_model_stage_changes')
    op.drop_table('ai_model_stage_changes')
    op.drop_index('ix_ai_model_artifacts_version_id', table_name='ai_model_artifacts')
    op.drop_table('ai_model_artifacts')
    op.drop_index('ux_ai_model_versions_production', table_name='ai_model_versions', sqlite_where=sa.text("stage = 'production'"), postgresql_where=sa.text("stage = 'production'"))
    op.drop_table('ai_model_versions')
    op.drop_table('ai_models')

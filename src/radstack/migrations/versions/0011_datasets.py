"""data sets: names, immutable versions (content hash, split, counts) and their labeled items

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-26 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0011'
# The model registry's 0010 is made on another branch at the same time: whoever merges both
# makes this revise '0010'.
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ai_datasets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    )
    op.create_table('ai_dataset_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('ratios', sa.Text(), nullable=False),
    sa.Column('counts', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('item_count', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['ai_datasets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dataset_id', 'version', name='uq_ai_dataset_versions_dataset_version'),
    sa.UniqueConstraint('dataset_id', 'content_hash', name='uq_ai_dataset_versions_dataset_hash'),
    )
    op.create_table('ai_dataset_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_hash', sa.String(length=64), nullable=False),
    sa.Column('patient_key', sa.String(length=64), nullable=False),
    sa.Column('fracture', sa.Boolean(), nullable=False),
    sa.Column('label', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['ai_dataset_versions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version_id', 'position', name='uq_ai_dataset_items_version_position'),
    )
    op.create_index('ix_ai_dataset_items_version_split', 'ai_dataset_items', ['version_id', 'split', 'position'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_ai_dataset_items_version_split', table_name='ai_dataset_items')
    op.drop_table('ai_dataset_items')
    op.drop_table('ai_dataset_versions')
    op.drop_table('ai_datasets')

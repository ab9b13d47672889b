"""worklist: each study's AI priority and reading status

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('studies', sa.Column('ai_priority', sa.Integer(), nullable=True))
    op.add_column('studies', sa.Column('status', sa.String(length=16), nullable=True))
    op.create_index('ix_studies_ai_priority', 'studies', ['ai_priority'])
    op.create_index('ix_studies_status', 'studies', ['status'])


def downgrade() -> None:
    op.drop_index('ix_studies_status', table_name='studies')
    op.drop_index('ix_studies_ai_priority', table_name='studies')
    op.drop_column('studies', 'status')
    op.drop_column('studies', 'ai_priority')

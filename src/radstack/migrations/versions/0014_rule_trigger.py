"""routing rules: a trigger, so a rule can run when images arrive rather than once the study is stable

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('routing_rules') as batch:
        batch.add_column(sa.Column('trigger', sa.String(length=16), server_default='stable', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('routing_rules') as batch:
        batch.drop_column('trigger')

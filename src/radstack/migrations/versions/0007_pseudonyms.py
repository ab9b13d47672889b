"""pseudonyms: the de-identified view's UID of each study, series and instance

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('studies', 'series', 'instances'):
        op.add_column(table, sa.Column('pseudo_uid', sa.String(length=64), nullable=True))
        op.create_index(f'ix_{table}_pseudo_uid', table, ['pseudo_uid'])


def downgrade() -> None:
    for table in ('studies', 'series', 'instances'):
        op.drop_index(f'ix_{table}_pseudo_uid', table_name=table)
        op.drop_column(table, 'pseudo_uid')

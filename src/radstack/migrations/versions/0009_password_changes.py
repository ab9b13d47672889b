"""accounts: a forced password change (the first administrator) and when a password last changed

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a NOT NULL column with a default otherwise in all versions.
    with op.batch_alter_table('users') as batch:
        batch.add_column(
            sa.Column('must_change_password', sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column('password_changed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.drop_column('password_changed_at')
        batch.drop_column('must_change_password')

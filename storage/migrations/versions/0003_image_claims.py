"""image claims: who is labeling an image now, so "next image" sends two annotators to different ones

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Not batch mode on SQLite: it rebuilds `images` (DROP TABLE), and with foreign keys on that
    # deletes every segment, event and proposal through ON DELETE CASCADE. SQLite >= 3.35 drops a
    # plain column in place.
    op.drop_column('images', 'claimed_at')
    op.drop_column('images', 'claimed_by')

"""event status_before: the image status an event replaced, so undo restores it exactly

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain nullable column (no CHECK): SQLite adds it in place. Events written before this
    # migration have NULL, and undoing one of them reopens the image for review as before.
    op.add_column('annotation_events', sa.Column('status_before', sa.String(length=16), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that rebuilds the table (see 0003). SQLite >= 3.35 drops it in place.
    op.drop_column('annotation_events', 'status_before')

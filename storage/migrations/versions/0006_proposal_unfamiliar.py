"""proposals.unfamiliar: the model's familiarity check flagged the image as unlike its training data,
so the app opens a proposal made in a background job (`train prelabel`) with its segments hidden

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a server default: SQLite adds it in place; older proposals were not flagged.
    op.add_column('proposals', sa.Column('unfamiliar', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    # Not batch mode: on SQLite that rebuilds the table (see 0003). SQLite >= 3.35 drops it in place.
    op.drop_column('proposals', 'unfamiliar')

"""annotation_segments.iscrowd (COCO crowd regions survive import and export) and label_spaces
(a project's label-space definitions: imported datasets' classes, with isthing)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A NOT NULL column with a server default: SQLite adds it in place, old segments are not crowd.
    op.add_column('annotation_segments',
                  sa.Column('iscrowd', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table('label_spaces',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('classes', sa.JSON(), nullable=False),
    sa.Column('source', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_label_spaces_project_id_projects'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_label_spaces')),
    sa.UniqueConstraint('project_id', 'name', name=op.f('uq_label_spaces_project_id_name'))
    )


def downgrade() -> None:
    op.drop_table('label_spaces')
    # Not batch mode: on SQLite that rebuilds the table (see 0003). SQLite >= 3.35 drops it in place.
    op.drop_column('annotation_segments', 'iscrowd')

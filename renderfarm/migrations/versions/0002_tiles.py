"""tiles: tiled jobs, tile and assembly tasks, task weights

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tiles", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column("keep_tiles", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("tile_count", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default="render")
        )
        batch_op.add_column(sa.Column("tile", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1.0"))
    # Whole-frame tasks weigh their frame count.
    op.execute("UPDATE tasks SET weight = frame_count")


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("weight")
        batch_op.drop_column("tile")
        batch_op.drop_column("kind")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("tile_count")
        batch_op.drop_column("keep_tiles")
        batch_op.drop_column("tiles")

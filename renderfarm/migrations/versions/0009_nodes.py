"""nodes: enrolled render nodes, their keys and what they were refused

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "nodes",
        sa.Column("name", text(length=48), nullable=False),
        sa.Column("node_id", text(length=16), nullable=False),
        sa.Column("key", text(length=128), nullable=False),
        sa.Column("redis_digest", text(length=64), nullable=False),
        sa.Column("s3_access_key", text(length=128), nullable=True),
        sa.Column("s3_secret_key", text(length=128), nullable=True),
        sa.Column("site", text(length=64), nullable=False),
        sa.Column("pool", text(length=64), nullable=False),
        sa.Column("tags", text(length=1024), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("last_event_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_event_entry", text(length=40), nullable=False),
        sa.Column("last_beat_seq", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("node_id"),
    )


def downgrade() -> None:
    op.drop_table("nodes")

"""idle power: each site's idle and asleep node time, what it drew and what sleeping saved

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "idle_power",
        sa.Column("site", text(length=64), nullable=False),
        sa.Column("currency", text(length=8), nullable=False),
        sa.Column("idle_seconds", sa.Float(), nullable=False),
        sa.Column("idle_ukwh", sa.BigInteger(), nullable=False),
        sa.Column("idle_cost_pico", sa.BigInteger(), nullable=False),
        sa.Column("asleep_seconds", sa.Float(), nullable=False),
        sa.Column("asleep_ukwh", sa.BigInteger(), nullable=False),
        sa.Column("asleep_cost_pico", sa.BigInteger(), nullable=False),
        sa.Column("saved_ukwh", sa.BigInteger(), nullable=False),
        sa.Column("saved_cost_pico", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("site"),
    )


def downgrade() -> None:
    op.drop_table("idle_power")

"""sites: per-attempt time, energy, cost and CO2; site pins and cheapest-first jobs; worker sites

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column("prefer", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column("wall_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cpu_seconds", sa.Float(), nullable=True))
        for column in ("energy_ukwh", "cost_pico", "co2_ng"):
            batch_op.add_column(sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False, server_default="")
        )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("site", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, server_default="local")
        )


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("site")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        for column in ("currency", "co2_ng", "cost_pico", "energy_ukwh", "cpu_seconds", "wall_seconds", "site"):
            batch_op.drop_column(column)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("prefer")
        batch_op.drop_column("site")

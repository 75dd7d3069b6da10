"""purges: storage to delete, recorded with the decision; jobs.archived_at

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("archived_at", sa.Float(), nullable=True))
    op.create_table(
        "purges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("prefix", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("keep", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True),
        sa.Column("keep_logs", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("not_before", sa.Float(), nullable=False),
        sa.Column("deleted", sa.Integer(), nullable=False),
        sa.Column("done_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_purges_job_id", "purges", ["job_id"], unique=False)
    op.create_index("ix_purges_done_id", "purges", ["done_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_purges_done_id", table_name="purges")
    op.drop_index("ix_purges_job_id", table_name="purges")
    op.drop_table("purges")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("archived_at")

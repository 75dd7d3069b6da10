"""openjd outputs: the files an OpenJD task wrote, verified and promoted (table `outputs`); an
attempt keeps the progress and status text it last reported

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=16), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("committed_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "step", "path", name="uq_outputs_job_step_path"),
    )
    op.create_index("ix_outputs_job_id", "outputs", ["job_id"])
    op.create_index("ix_outputs_task_id", "outputs", ["task_id"])
    # Should SQLite copy the table, the copy keeps AUTOINCREMENT (see 0015).
    with op.batch_alter_table("attempts", schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("progress", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("status_text", sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_column("status_text")
        batch_op.drop_column("progress")
    op.drop_index("ix_outputs_task_id", table_name="outputs")
    op.drop_index("ix_outputs_job_id", table_name="outputs")
    op.drop_table("outputs")

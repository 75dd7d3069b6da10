"""wrangling: max workers, job chains, first-last order, failure counts that retry resets

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_workers", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("after", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
        batch_op.add_column(sa.Column("first_last", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rank", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE tasks SET failures = (SELECT count(*) FROM attempts "
               "WHERE attempts.task_id = tasks.id AND attempts.state = 'failed')")


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("failures")
        batch_op.drop_column("rank")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("first_last")
        batch_op.drop_column("after")
        batch_op.drop_column("max_workers")

"""openjd: a job keeps its OpenJD template and its steps' dependencies and host requirements; a
task keeps its step and its task parameter values

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("openjd_template", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("openjd_steps", sa.Text(), nullable=True))
    # Should SQLite copy the table, the copy keeps AUTOINCREMENT (see 0015).
    with op.batch_alter_table("tasks", schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("step", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("parameters", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_column("parameters")
        batch_op.drop_column("step")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("openjd_steps")
        batch_op.drop_column("openjd_template")

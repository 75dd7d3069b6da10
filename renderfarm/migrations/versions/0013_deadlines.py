"""deadlines: when a job must be done, and the manager's plan for it (when and where it renders)

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("plan_start", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("plan_site", text(length=64), nullable=True))
        batch_op.add_column(sa.Column("plan_note", text(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in ("plan_note", "plan_site", "plan_start", "deadline"):
            batch_op.drop_column(column)

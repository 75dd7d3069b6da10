"""notifications: the webhook outbox, and a job's own webhook URL (--notify)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("notify", text(length=2048), nullable=True))
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", text(length=96), nullable=False),
        sa.Column("target", text(length=8), nullable=False),
        sa.Column("url", text(length=2048), nullable=True),
        sa.Column("kind", text(length=32), nullable=False),
        sa.Column("job_id", text(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("state", text(length=16), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.Float(), nullable=False),
        sa.Column("last_try_at", sa.Float(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", text(length=512), nullable=True),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "target", name="uq_notifications_event_target"),
    )
    op.create_index("ix_notifications_state_next", "notifications", ["state", "next_try_at"])
    op.create_index("ix_notifications_job_id", "notifications", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_job_id", table_name="notifications")
    op.drop_index("ix_notifications_state_next", table_name="notifications")
    op.drop_table("notifications")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("notify")

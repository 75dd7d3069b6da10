"""frame by frame: a job may follow its --after job frame by frame; tasks know their frame range

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("frame_by_frame", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("frame_low", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("frame_high", sa.Integer(), nullable=True))
    # A task's frames are one run ("4", "1-4") unless its spec holds a ',' or a step 'x'.
    op.execute("UPDATE tasks SET frame_low = first_frame, frame_high = first_frame + frame_count - 1")
    _backfill_sparse()
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("frame_low", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("frame_high", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index("ix_tasks_job_frame_low", ["job_id", "frame_low"], unique=False)


def _backfill_sparse() -> None:
    from renderfarm.frames import parse_frames

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, frames FROM tasks WHERE frames LIKE '%,%' OR frames LIKE '%x%'")).all()
    for task_id, spec in rows:
        frames = parse_frames(spec)
        bind.execute(sa.text("UPDATE tasks SET frame_low = :low, frame_high = :high WHERE id = :id"),
                     {"low": min(frames), "high": max(frames), "id": task_id})


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_job_frame_low")
        batch_op.drop_column("frame_high")
        batch_op.drop_column("frame_low")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("frame_by_frame")

"""dispatch index: a job's next pending tasks by (rank, index) without sorting the job

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_job_state_index")
        batch_op.create_index("ix_tasks_job_state_rank_index", ["job_id", "state", "rank", "index"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_job_state_rank_index")
        batch_op.create_index("ix_tasks_job_state_index", ["job_id", "state", "index"], unique=False)

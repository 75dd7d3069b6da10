"""ids never reused: tasks and attempts get SQLite's AUTOINCREMENT, so a deleted job's ids (its
leases, RQ job ids, late events) never name a new task or attempt (PostgreSQL's sequences never
reuse one already)

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Copied into a new table made with AUTOINCREMENT: its counter starts at the highest id copied.
    # A later migration that makes SQLite copy one of these tables again must pass the same
    # table_kwargs, or the copy is made without it.
    for table in ("tasks", "attempts"):
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in ("attempts", "tasks"):
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass

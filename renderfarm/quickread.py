"""The CLI's fast reads: `farm status JOB` and `farm jobs` in plain SQL through the database
driver alone (sqlite3, or psycopg), because importing SQLAlchemy and SQLModel would cost more
than the whole command may take. The ORM views in renderfarm.status compute the same figures
(a test holds the two to agree)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from renderfarm.errors import NotFoundError, RenderFarmError, SchemaMissing
from renderfarm.jobstatus import JOB_COLUMNS, WORKER_COLUMNS, JobStatus, summarize, summarize_steps

if TYPE_CHECKING:
    from renderfarm.config import Settings

_JOB_SQL = "SELECT " + ", ".join(f'"{c}"' for c in JOB_COLUMNS) + " FROM jobs"
_STATES_SQL = (
    "SELECT state, count(*), coalesce(sum(CASE WHEN kind != 'tile' THEN frame_count ELSE 0 END), 0), "
    "coalesce(sum(weight), 0.0), coalesce(sum(weight * progress), 0.0) FROM tasks WHERE job_id = ? GROUP BY state"
)
# An OpenJD job's tasks by step and state, and its running attempts' openjd_status texts.
_STEPS_SQL = (
    'SELECT step, state, count(*), coalesce(sum(progress), 0.0), min("index") FROM tasks '
    "WHERE job_id = ? AND step IS NOT NULL GROUP BY step, state"
)
_STEP_TEXTS_SQL = (
    "SELECT t.step, a.status_text FROM attempts a JOIN tasks t ON t.id = a.task_id "
    "WHERE a.job_id = ? AND a.state = 'running' AND a.status_text IS NOT NULL ORDER BY a.id DESC"
)
_STATE_SQL = "SELECT state FROM jobs WHERE id = ?"
_WORKERS_SQL = "SELECT " + ", ".join(WORKER_COLUMNS) + " FROM workers WHERE state != 'offline'"
_NOTIFICATIONS_SQL = (
    "SELECT event_id, kind, job_id, target, url, state, tries, last_status, last_error, last_try_at, sent_at "
    "FROM notifications WHERE job_id = ? ORDER BY id"
)
_COSTS_SQL = (
    "SELECT currency, coalesce(sum(cost_pico), 0) FROM attempts "
    "WHERE job_id = ? AND wall_seconds IS NOT NULL GROUP BY currency"
)


class QuickReader:
    """A read-only connection to the farm's database, queried in plain SQL."""

    def __init__(self, conn: Any, paramstyle: str) -> None:
        self.conn = conn
        self.paramstyle = paramstyle

    @classmethod
    def open(cls, settings: Settings) -> QuickReader | None:
        """None when the local SQLite database does not exist yet (no job was ever submitted)."""
        url = settings.database_url
        if url.startswith("sqlite"):
            import sqlite3

            path = url.split("///", 1)[-1]
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            except sqlite3.OperationalError:
                return None
            conn.execute("PRAGMA busy_timeout=30000")
            return cls(conn, "qmark")
        import psycopg

        # libpq reads the same URL, %-escapes in its options included, once the scheme is its own.
        conninfo = urlsplit(url)._replace(scheme="postgresql").geturl()
        try:
            conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise RenderFarmError(f"database: cannot connect ({str(e).splitlines()[0]})") from None
        return cls(conn, "format")

    def close(self) -> None:
        self.conn.close()

    def _rows(self, sql: str, *args: Any) -> list[tuple]:
        if self.paramstyle == "format":
            sql = sql.replace("?", "%s")
        try:
            cur = self.conn.execute(sql, args)
            return list(cur.fetchall())
        except Exception as e:  # a database without our tables, mostly
            if "jobs" in str(e) and ("no such table" in str(e) or "does not exist" in str(e)):
                raise SchemaMissing("the database has no renderfarm tables yet: start the manager (`farm up -d`) first") from None
            raise

    def resolve(self, ref: str) -> dict[str, Any]:
        """The job row whose id is `ref` or starts with it; unique prefixes only."""
        prefix = ref.strip().lower()
        if not prefix or not prefix.isalnum():
            raise NotFoundError(f"job {prefix!r}: not a job id")
        rows = self._rows(_JOB_SQL + " WHERE id = ?", prefix)
        if not rows:
            rows = self._rows(_JOB_SQL + " WHERE id LIKE ? ORDER BY id LIMIT 6", prefix + "%")
        if not rows:
            raise NotFoundError(f"job {prefix!r}: no such job")
        if len(rows) > 1:
            shown = ", ".join(r[0] for r in rows[:5])
            raise NotFoundError(f"job {prefix!r}: ambiguous prefix (matches {shown}{'...' if len(rows) > 5 else ''})")
        return dict(zip(JOB_COLUMNS, rows[0]))

    def status(self, job: dict[str, Any], now: float | None = None, workers: list | None = None) -> JobStatus:
        costs = {c: int(v) for c, v in self._rows(_COSTS_SQL, job["id"])}
        workers = self.live_workers() if workers is None else workers
        after_state = None
        if job["after"]:
            found = self._rows(_STATE_SQL, job["after"])
            after_state = found[0][0] if found else None
        status = summarize(job, self._rows(_STATES_SQL, job["id"]), costs, now, workers, after_state)
        if not job["openjd_steps"]:
            return status
        from dataclasses import replace

        return replace(status, steps=summarize_steps(job["openjd_steps"], self._rows(_STEPS_SQL, job["id"]),
                                                     self._rows(_STEP_TEXTS_SQL, job["id"])))

    def live_workers(self) -> list:
        """The scheduler's view of every worker not offline, as the manager last recorded it."""
        from renderfarm.capabilities import worker_view

        return [worker_view(name, pool, site, caps) for name, pool, site, caps in self._rows(_WORKERS_SQL)]

    def job_status(self, ref: str, now: float | None = None) -> JobStatus:
        from dataclasses import replace

        status = self.status(self.resolve(ref), now)
        return replace(status, notifications=self.notifications(status.id))

    def notifications(self, job_id: str) -> list[dict[str, Any]]:
        """The job's webhook notifications and where each stands (see renderfarm.outbox)."""
        from renderfarm.urls import mask_url

        names = ("event_id", "event", "job", "target", "url", "state", "tries", "last_status", "last_error",
                 "last_try_at", "sent_at")
        docs = [dict(zip(names, row)) for row in self._rows(_NOTIFICATIONS_SQL, job_id)]
        for doc in docs:
            doc["url"] = mask_url(doc["url"])
        return docs

    def list_jobs(self, limit: int = 50, now: float | None = None, *, archived: bool = False) -> list[JobStatus]:
        """The newest jobs first, with their progress; archived ones only if asked."""
        where = "" if archived else " WHERE archived_at IS NULL"
        rows = self._rows(_JOB_SQL + where + " ORDER BY submitted_at DESC LIMIT ?", limit)
        workers = self.live_workers()
        return [self.status(dict(zip(JOB_COLUMNS, r)), now, workers) for r in rows]

"""Database engines (SQLite in WAL mode with BEGIN IMMEDIATE, or PostgreSQL) and Alembic upgrades."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import ConfigError, RenderFarmError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseError(RenderFarmError):
    """The database cannot be reached or is not at the expected schema."""


def make_engine(url: str, *, writer: bool = False) -> Engine:
    """An engine for `url`. The manager's writer engine on SQLite begins every transaction with
    BEGIN IMMEDIATE: busy_timeout does not save a deferred read-then-write transaction (FACTS.md)."""
    from sqlalchemy import create_engine, event

    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record) -> None:
            # Let SQLAlchemy's begin event, not pysqlite, decide how transactions start.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine
    if url.startswith("postgresql"):
        if url.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver we ship
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    raise ConfigError(f"database_url: unsupported database {url.split(':', 1)[0]!r}")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    from sqlmodel import Session

    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision` (the manager does this at start). Alembic's own
    INFO lines (its dialect, each step) are held back: one line says what changed, if anything."""
    import logging

    alembic = logging.getLogger("alembic")
    level = alembic.level
    alembic.setLevel(logging.WARNING)  # before the import too: loading its plugins logs lines
    try:
        from alembic import command

        before = current_revision(engine)
        command.upgrade(_alembic_config(engine), revision)
        after = current_revision(engine)
    finally:
        alembic.setLevel(level)
    if after != before:
        logging.getLogger(__name__).info("database schema upgraded from %s to %s", before or "empty", after)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()

"""Alembic environment: runs migrations on the engine renderfarm.db hands it."""

from __future__ import annotations

from alembic import context

import renderfarm.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from sqlmodel import SQLModel

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

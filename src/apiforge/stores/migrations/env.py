"""Alembic environment: runs the revisions on the engine passed by :func:`upgrade`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from apiforge.errors import ConfigurationError
from apiforge.stores.sql import metadata

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise ConfigurationError("run migrations through apiforge.stores.migrations.upgrade(url)")

with engine.connect() as connection:
    # render_as_batch lets later revisions alter SQLite tables (copy-and-move).
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()

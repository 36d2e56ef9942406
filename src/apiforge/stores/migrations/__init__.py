"""Alembic migrations of the identity record tables, runnable without an ``alembic.ini``.

``upgrade(url)`` brings an SQLite file or a PostgreSQL database to the newest schema; the CLI and
the server call it at start-up, the tests call it on a fresh database. The revisions here are
the schema's source of truth, for SQLite as much as for PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from apiforge.stores.sql import create_sql_engine

__all__ = ["SCRIPT_LOCATION", "alembic_config", "upgrade"]

SCRIPT_LOCATION: Final = str(Path(__file__).parent)


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration bound to ``engine`` (no ``alembic.ini`` needed)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["engine"] = engine
    return config


def upgrade(url: str | Engine, revision: str = "head") -> None:
    """Migrate the database at ``url`` (or behind ``engine``) to ``revision``.

    Args:
        url: ``sqlite:///PATH``, ``postgresql://…`` or an engine from
            :func:`apiforge.stores.sql.create_sql_engine` (e.g. one bound to a schema).
        revision: the target; the newest by default.
    """
    engine = create_sql_engine(url) if isinstance(url, str) else url
    try:
        command.upgrade(alembic_config(engine), revision)
    finally:
        if isinstance(url, str):
            engine.dispose()

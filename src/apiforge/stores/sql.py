"""Record stores on SQLite and PostgreSQL (SQLAlchemy Core, synchronous).

Every statement is built with SQLAlchemy's expression language and runs with bound parameters;
no client text is ever part of SQL. The tables below describe the schema for queries; the
Alembic revisions in :mod:`apiforge.stores.migrations` create it and are the source of truth
(a contract test checks that the two agree).

These stores block. They serve start-up, management commands and background refreshes (run in
a worker thread); the request path reads in-process caches and never reaches SQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from apiforge.errors import ConfigurationError, StoreError
from apiforge.identity.accounts import Account, AccountStatus
from apiforge.identity.api_keys import ApiKeyRecord, Application, KeyStatus
from apiforge.identity.refresh import FamilyEnd, RefreshFamily, Rotation

__all__ = [
    "SqlRecordStore",
    "SqlRefreshStore",
    "accounts_table",
    "api_keys_table",
    "applications_table",
    "create_sql_engine",
    "metadata",
    "refresh_families_table",
    "refresh_tokens_table",
    "totp_steps_table",
]

metadata: Final = MetaData()

applications_table: Final = Table(
    "applications",
    metadata,
    Column("application_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("owner_account_id", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys_table: Final = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("env", Text, nullable=False),
    Column(
        "application_id",
        Text,
        ForeignKey("applications.application_id", name="api_keys_application_fk"),
        nullable=False,
        index=True,
    ),
    Column("digest", LargeBinary, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("replaced_by", Text, nullable=True),
    Column("rotated_at", DateTime(timezone=True), nullable=True),
    Column("overlap_until", DateTime(timezone=True), nullable=True),
    CheckConstraint("status IN ('active', 'revoked')", name="api_keys_status_known"),
)

accounts_table: Final = Table(
    "accounts",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("username", Text, nullable=False, unique=True),
    Column("roles", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("password_hash", Text, nullable=True),
    Column("totp_secret", Text, nullable=True),
    CheckConstraint(
        "status IN ('active', 'suspended', 'locked', 'deleted')", name="accounts_status_known"
    ),
)

refresh_families_table: Final = Table(
    "refresh_families",
    metadata,
    Column("family_id", Text, primary_key=True),
    Column("account_id", Text, nullable=False, index=True),
    Column("account_version", Integer, nullable=False),
    Column("client_id", Text, nullable=True),
    Column("scope", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("idle_expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_reason", Text, nullable=True),
)

refresh_tokens_table: Final = Table(
    "refresh_tokens",
    metadata,
    Column("digest", LargeBinary, primary_key=True),
    Column(
        "family_id",
        Text,
        ForeignKey("refresh_families.family_id", name="refresh_tokens_family_fk"),
        nullable=False,
        index=True,
    ),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("spent_at", DateTime(timezone=True), nullable=True),
)

totp_steps_table: Final = Table(
    "totp_steps",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("last_step", BigInteger, nullable=False),
)

_SCHEMES: Final = ("sqlite", "postgresql", "postgresql+psycopg")


def create_sql_engine(url: str, *, schema: str | None = None) -> Engine:
    """Create an engine for ``sqlite:///PATH`` or ``postgresql://…``.

    ``postgresql://`` is rewritten to ``postgresql+psycopg://`` (psycopg 3). SQLite connections
    turn foreign keys on, which SQLite leaves off by default.

    Args:
        url: the database URL; credentials in it are never echoed in errors.
        schema: PostgreSQL only: a schema put first on the ``search_path`` (isolated tests,
            several deployments in one database).

    Raises:
        ConfigurationError: an unsupported URL, or an SQLite URL without a file path.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError("the record store URL is malformed") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in _SCHEMES:
        raise ConfigurationError(
            f"record store URL scheme {parsed.drivername!r} is not supported here; "
            "use sqlite:///PATH or postgresql://"
        )
    connect_args: dict[str, Any] = {}
    if parsed.drivername == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigurationError(
                "an SQLite record store needs a file: sqlite:///PATH (memory:// for tests)"
            )
    elif schema is not None:
        if not schema.isidentifier():
            raise ConfigurationError("the schema name must be a plain identifier")
        connect_args["options"] = f"-csearch_path={schema}"
    engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    if parsed.drivername == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _utc(value: datetime | None) -> datetime | None:
    # SQLite keeps no offset: every value is written as UTC, so a naive one read back is UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _required_utc(value: datetime) -> datetime:
    return cast(datetime, _utc(value))


def _join(values: frozenset[str]) -> str:
    return " ".join(sorted(values))


def _split(text: str) -> frozenset[str]:
    return frozenset(text.split())


class SqlRecordStore:
    """Applications, key records and accounts in SQL; satisfies all three record protocols.

    Args:
        engine: from :func:`create_sql_engine`; the schema must be migrated
            (:func:`apiforge.stores.migrations.upgrade`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        k = api_keys_table.c
        self._touch = (
            update(api_keys_table)
            .where(
                k.key_id == bindparam("b_key_id"),
                or_(k.last_used_at.is_(None), k.last_used_at < bindparam("b_at")),
            )
            .values(last_used_at=bindparam("b_at"))
        )

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            # The message names the operation only: SQL text and parameters stay in __cause__,
            # for the internal log.
            raise StoreError(f"record store failed: {type(exc).__name__}") from exc

    # -- applications ------------------------------------------------------------------------

    @staticmethod
    def _application(row: Row[Any]) -> Application:
        return Application(
            application_id=row.application_id,
            name=row.name,
            owner_account_id=row.owner_account_id,
            created_at=_required_utc(row.created_at),
        )

    def add_application(self, application: Application) -> None:
        with self._begin() as c:
            c.execute(
                insert(applications_table).values(
                    application_id=application.application_id,
                    name=application.name,
                    owner_account_id=application.owner_account_id,
                    created_at=application.created_at,
                )
            )

    def get_application(self, application_id: str) -> Application | None:
        t = applications_table
        with self._begin() as c:
            row = c.execute(select(t).where(t.c.application_id == application_id)).first()
        return None if row is None else self._application(row)

    def list_applications(self) -> list[Application]:
        t = applications_table
        with self._begin() as c:
            rows = c.execute(select(t).order_by(t.c.created_at, t.c.application_id)).all()
        return [self._application(row) for row in rows]

    def update_application(self, application: Application) -> None:
        t = applications_table
        with self._begin() as c:
            result = c.execute(
                update(t)
                .where(t.c.application_id == application.application_id)
                .values(name=application.name, owner_account_id=application.owner_account_id)
            )
        if result.rowcount == 0:
            raise LookupError("no such application")

    # -- api keys ----------------------------------------------------------------------------

    @staticmethod
    def _key(row: Row[Any]) -> ApiKeyRecord:
        return ApiKeyRecord(
            key_id=row.key_id,
            env=row.env,
            application_id=row.application_id,
            digest=bytes(row.digest),
            scopes=_split(row.scopes),
            status=cast(KeyStatus, row.status),
            created_at=_required_utc(row.created_at),
            expires_at=_utc(row.expires_at),
            last_used_at=_utc(row.last_used_at),
            revoked_at=_utc(row.revoked_at),
            replaced_by=row.replaced_by,
            rotated_at=_utc(row.rotated_at),
            overlap_until=_utc(row.overlap_until),
        )

    def add_key(self, record: ApiKeyRecord) -> None:
        with self._begin() as c:
            c.execute(
                insert(api_keys_table).values(
                    key_id=record.key_id,
                    env=record.env,
                    application_id=record.application_id,
                    digest=record.digest,
                    scopes=_join(record.scopes),
                    status=record.status,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    last_used_at=record.last_used_at,
                    revoked_at=record.revoked_at,
                    replaced_by=record.replaced_by,
                    rotated_at=record.rotated_at,
                    overlap_until=record.overlap_until,
                )
            )

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        t = api_keys_table
        with self._begin() as c:
            row = c.execute(select(t).where(t.c.key_id == key_id)).first()
        return None if row is None else self._key(row)

    def list_keys(self) -> list[ApiKeyRecord]:
        t = api_keys_table
        with self._begin() as c:
            rows = c.execute(select(t).order_by(t.c.created_at, t.c.key_id)).all()
        return [self._key(row) for row in rows]

    def update_key(self, record: ApiKeyRecord) -> None:
        t = api_keys_table
        values = {
            "status": record.status,
            "expires_at": record.expires_at,
            "revoked_at": record.revoked_at,
            "replaced_by": record.replaced_by,
            "rotated_at": record.rotated_at,
            "overlap_until": record.overlap_until,
            "scopes": _join(record.scopes),
        }
        with self._begin() as c:
            result = c.execute(update(t).where(t.c.key_id == record.key_id).values(**values))
        if result.rowcount == 0:
            raise LookupError("no such API key")

    def record_last_used(self, used: Mapping[str, datetime]) -> None:
        if not used:
            return
        with self._begin() as c:
            c.execute(self._touch, [{"b_key_id": k, "b_at": at} for k, at in used.items()])

    def replace_digest(self, key_id: str, old: bytes, new: bytes) -> bool:
        t = api_keys_table
        with self._begin() as c:
            result = c.execute(
                update(t).where(and_(t.c.key_id == key_id, t.c.digest == old)).values(digest=new)
            )
        return bool(result.rowcount)

    # -- accounts ----------------------------------------------------------------------------

    @staticmethod
    def _account(row: Row[Any]) -> Account:
        return Account(
            account_id=row.account_id,
            username=row.username,
            roles=_split(row.roles),
            status=cast(AccountStatus, row.status),
            version=int(row.version),
            password_hash=row.password_hash,
            totp_secret=row.totp_secret,
        )

    def add_account(self, account: Account) -> None:
        with self._begin() as c:
            c.execute(
                insert(accounts_table).values(
                    account_id=account.account_id,
                    username=account.username,
                    roles=_join(account.roles),
                    status=account.status,
                    version=account.version,
                    password_hash=account.password_hash,
                    totp_secret=account.totp_secret,
                )
            )

    def get_account(self, account_id: str) -> Account | None:
        t = accounts_table
        with self._begin() as c:
            row = c.execute(select(t).where(t.c.account_id == account_id)).first()
        return None if row is None else self._account(row)

    def list_accounts(self) -> list[Account]:
        t = accounts_table
        with self._begin() as c:
            rows = c.execute(select(t).order_by(t.c.username)).all()
        return [self._account(row) for row in rows]

    def update_account(self, account: Account) -> None:
        t = accounts_table
        with self._begin() as c:
            result = c.execute(
                update(t)
                .where(t.c.account_id == account.account_id)
                .values(
                    username=account.username,
                    roles=_join(account.roles),
                    status=account.status,
                    version=account.version,
                    password_hash=account.password_hash,
                    totp_secret=account.totp_secret,
                )
            )
        if result.rowcount == 0:
            raise LookupError("no such account")

    def replace_password_hash(self, account_id: str, old: str, new: str) -> bool:
        t = accounts_table
        with self._begin() as c:
            result = c.execute(
                update(t)
                .where(and_(t.c.account_id == account_id, t.c.password_hash == old))
                .values(password_hash=new)
            )
        return bool(result.rowcount)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


class SqlRefreshStore:
    """:class:`~apiforge.stores.protocols.RefreshStore` on SQLite or PostgreSQL.

    Single use rests on one statement, ``UPDATE refresh_tokens SET spent_at = :now WHERE
    digest = :d AND spent_at IS NULL``, run first in the transaction: PostgreSQL makes a second
    updater of the row wait for the first to commit and then re-check ``spent_at IS NULL``
    (zero rows); SQLite takes the write lock with that first write, so a second transaction
    waits (``busy_timeout``) and then finds the token spent. Either way the row count tells
    each caller whether it won, and the successor is inserted in the same transaction.

    Args:
        engine: from :func:`create_sql_engine`, migrated; may be the record store's engine
            (``SqlRefreshStore(records.engine)``) to share its pool.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ConfigurationError(f"refresh store: SQL dialect {dialect!r} is not supported")
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise StoreError(f"refresh store failed: {type(exc).__name__}") from exc

    @staticmethod
    def _family(row: Row[Any]) -> RefreshFamily:
        return RefreshFamily(
            family_id=row.family_id,
            account_id=row.account_id,
            account_version=int(row.account_version),
            client_id=row.client_id,
            scope=_split(row.scope),
            created_at=_required_utc(row.created_at),
            expires_at=_required_utc(row.expires_at),
            idle_expires_at=_required_utc(row.idle_expires_at),
            revoked_at=_utc(row.revoked_at),
            revoked_reason=row.revoked_reason,
        )

    def add_family(self, family: RefreshFamily, digest: bytes) -> None:
        with self._begin() as c:
            c.execute(
                insert(refresh_families_table).values(
                    family_id=family.family_id,
                    account_id=family.account_id,
                    account_version=family.account_version,
                    client_id=family.client_id,
                    scope=_join(family.scope),
                    created_at=family.created_at,
                    expires_at=family.expires_at,
                    idle_expires_at=family.idle_expires_at,
                    revoked_at=family.revoked_at,
                    revoked_reason=family.revoked_reason,
                )
            )
            c.execute(
                insert(refresh_tokens_table).values(
                    digest=digest, family_id=family.family_id, created_at=family.created_at
                )
            )

    @staticmethod
    def _family_of(c: Connection, digest: bytes) -> RefreshFamily | None:
        f, t = refresh_families_table, refresh_tokens_table
        row = c.execute(
            select(f).join(t, t.c.family_id == f.c.family_id).where(t.c.digest == digest)
        ).first()
        return None if row is None else SqlRefreshStore._family(row)

    def get_family(self, digest: bytes) -> RefreshFamily | None:
        with self._begin() as c:
            return self._family_of(c, digest)

    @staticmethod
    def _revoke(
        c: Connection, family: RefreshFamily, now: datetime, reason: FamilyEnd
    ) -> RefreshFamily:
        f = refresh_families_table
        result = c.execute(
            update(f)
            .where(and_(f.c.family_id == family.family_id, f.c.revoked_at.is_(None)))
            .values(revoked_at=now, revoked_reason=reason)
        )
        if result.rowcount and family.revoked_at is None:
            return replace(family, revoked_at=now, revoked_reason=reason)
        return family

    def rotate(
        self, digest: bytes, successor: bytes, *, now: datetime, idle_for: timedelta
    ) -> Rotation:
        t, f = refresh_tokens_table, refresh_families_table
        with self._begin() as c:
            # The spend comes first: it is the statement that serializes concurrent callers.
            spent = c.execute(
                update(t)
                .where(and_(t.c.digest == digest, t.c.spent_at.is_(None)))
                .values(spent_at=now)
            )
            won = spent.rowcount == 1
            family = self._family_of(c, digest)
            if family is None:
                return Rotation("unknown", None)
            if not won:
                return Rotation("reused", self._revoke(c, family, now, "reuse"))
            if family.revoked_at is not None:
                return Rotation("revoked", family)
            if now >= family.expires_at or now >= family.idle_expires_at:
                return Rotation("expired", self._revoke(c, family, now, "expired"))
            idle_until = min(now + idle_for, family.expires_at)
            c.execute(
                update(f)
                .where(f.c.family_id == family.family_id)
                .values(idle_expires_at=idle_until)
            )
            c.execute(
                insert(t).values(digest=successor, family_id=family.family_id, created_at=now)
            )
        return Rotation("rotated", replace(family, idle_expires_at=idle_until))

    def revoke_family(self, family_id: str, *, now: datetime, reason: FamilyEnd) -> bool:
        f = refresh_families_table
        with self._begin() as c:
            result = c.execute(
                update(f)
                .where(and_(f.c.family_id == family_id, f.c.revoked_at.is_(None)))
                .values(revoked_at=now, revoked_reason=reason)
            )
        return bool(result.rowcount)

    def revoke_account(self, account_id: str, *, now: datetime, reason: FamilyEnd) -> int:
        f = refresh_families_table
        with self._begin() as c:
            result = c.execute(
                update(f)
                .where(and_(f.c.account_id == account_id, f.c.revoked_at.is_(None)))
                .values(revoked_at=now, revoked_reason=reason)
            )
        return int(result.rowcount)

    def claim_totp_step(self, account_id: str, step: int) -> bool:
        s = totp_steps_table
        claim = self._insert(s).values(account_id=account_id, last_step=step)
        # One statement: insert the first step, or move the last step forward only if newer.
        # RETURNING gives a row exactly when a row was written.
        statement = claim.on_conflict_do_update(
            index_elements=[s.c.account_id],
            set_={"last_step": claim.excluded.last_step},
            where=s.c.last_step < claim.excluded.last_step,
        ).returning(s.c.account_id)
        with self._begin() as c:
            return c.execute(statement).first() is not None

    def purge(self, *, now: datetime) -> int:
        f, t = refresh_families_table, refresh_tokens_table
        ended = select(f.c.family_id).where(or_(f.c.expires_at <= now,
                                                f.c.idle_expires_at <= now))
        with self._begin() as c:
            c.execute(delete(t).where(t.c.family_id.in_(ended)))
            result = c.execute(delete(f).where(f.c.family_id.in_(ended)))
        return int(result.rowcount)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

"""Engine, sessions and schema upgrades.

SQLite is the embedded default (`<data dir>/resi.db`). Any SQLAlchemy URL works in its place
(`RESI_DATABASE_URL`); PostgreSQL through psycopg 3 is tested.

Write transactions take the lock first. `sessions.begin()` (of `make_session_factory`) and `upgrade`
start SQLite transactions with BEGIN IMMEDIATE, which waits (up to the busy timeout) for the write
lock before anything is read. A transaction that read first and wrote later would fail at once with
"database is locked" whenever another writer committed in between (WAL mode cannot upgrade a stale
read snapshot), and no timeout helps there. Plain `sessions()` are for reading. A wait longer than
the busy timeout (SQLite) or lock timeout (PostgreSQL) raises `storage.errors.Busy`, never a driver error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import Busy

DATABASE_URL_ENV = "RESI_DATABASE_URL"
SQLITE_FILENAME = "resi.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 10_000
# An execution option: transactions of connections that carry it begin by taking the write lock.
WRITE_LOCK_OPTION = "resi_write_lock"
# PostgreSQL's errors for "waited too long for a lock" and "deadlock": both mean try again.
_PG_BUSY_SQLSTATES = frozenset({"55P03", "40P01"})


def default_sqlite_url(data_dir: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / SQLITE_FILENAME}"


def database_url(data_dir: str | os.PathLike[str]) -> str:
    """`RESI_DATABASE_URL` when it is set, else the SQLite file in the data directory."""
    return os.environ.get(DATABASE_URL_ENV) or default_sqlite_url(data_dir)


def _sqlite_on_connect(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself: pysqlite's own implicit transactions
        # start late and break SAVEPOINT (SQLAlchemy docs, "Serializable isolation / Savepoints").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # FULL: a commit that returned survives power loss too, not only a killed process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    return on_connect


def _sqlite_begin(conn: Any) -> None:
    """BEGIN IMMEDIATE (take the write lock now, waiting for it) for write transactions, else BEGIN."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_LOCK_OPTION) else "BEGIN")


def _postgres_on_connect(lock_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
        finally:
            dbapi_connection.autocommit = autocommit

    return on_connect


def is_busy_error(error: BaseException) -> bool:
    """Whether a driver error means "someone else holds the lock too long": SQLite's "database is locked"
    or "database is busy", PostgreSQL's lock timeout or deadlock."""
    orig = getattr(error, "orig", error)
    if getattr(orig, "sqlstate", None) in _PG_BUSY_SQLSTATES:
        return True
    text = str(orig).lower()
    return type(orig).__name__ == "OperationalError" and ("database is locked" in text or "database is busy" in text)


def _busy_to_storage_error(context: ExceptionContext) -> BaseException | None:
    if is_busy_error(context.original_exception):
        return Busy()
    return None


def make_engine(url: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite connections get WAL, foreign keys, a busy timeout and FULL sync,
    PostgreSQL ones a lock timeout of the same length. A longer wait raises `Busy`."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, **kwargs)
        if parsed.get_backend_name() == "postgresql":
            event.listen(engine, "connect", _postgres_on_connect(busy_timeout_ms))
    else:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect(busy_timeout_ms))
        event.listen(engine, "begin", _sqlite_begin)
    event.listen(engine, "handle_error", _busy_to_storage_error, retval=True)
    return engine


def writing(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions take the write lock first (SQLite: BEGIN IMMEDIATE)."""
    return engine.execution_options(**{WRITE_LOCK_OPTION: True})


class Sessions(sessionmaker[Session]):
    """`sessions()` opens a session for reading; `sessions.begin()` a write transaction that commits on
    success and takes the database's write lock before its first statement (see the module doc).
    Objects stay readable after commit (the UI shows them after saving)."""

    def __init__(self, engine: Engine):
        super().__init__(engine, expire_on_commit=False)
        self.writer = writing(engine)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Session]:  # type: ignore[override]
        with self(bind=self.writer) as session, session.begin():
            yield session


def make_session_factory(engine: Engine) -> Sessions:
    """Read sessions `sessions()` and write transactions `sessions.begin()` on `engine`."""
    return Sessions(engine)


def alembic_config(engine: Engine | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to `revision` with the alembic migrations."""
    from alembic import command

    config = alembic_config(engine)
    with writing(engine).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def sqlite_path(engine_or_url: Engine | str) -> Path | None:
    """The file of a file-backed SQLite URL, else None."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def verify_database(engine: Engine) -> None:
    """Connect once; turn 'not a database' and unreachable servers into one clear InvalidInput."""
    from sqlalchemy.exc import DBAPIError

    from storage.errors import InvalidInput

    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except DBAPIError as exc:
        path = sqlite_path(engine)
        if path is not None and "not a database" in str(exc.orig):
            raise InvalidInput(f"{path} is not a SQLite database (or it is encrypted or damaged).") from None
        if path is not None and "malformed" in str(exc.orig):
            raise InvalidInput(damaged_message(path, exc.orig)) from None
        raise InvalidInput(f"Cannot open the database {engine.url.render_as_string()}: {exc.orig}") from None


def damaged_message(path: Path, reason: object) -> str:
    return (f"The database {path} is damaged ({reason}). Restore the latest backup: "
            "`python -m train db restore BACKUP --force`.")


def check_url(url: str) -> str:
    """`url` if SQLAlchemy can parse it and has a driver for it; otherwise one clear InvalidInput."""
    from sqlalchemy.exc import ArgumentError

    from storage.errors import InvalidInput

    try:
        make_url(url).get_dialect().import_dbapi()
    except ArgumentError as exc:  # also NoSuchModuleError: an unknown database kind
        raise InvalidInput(f"{url!r} is not a database URL we can use: {exc}") from None
    except ImportError as exc:
        raise InvalidInput(f"The database driver for {url!r} is not installed: {exc}") from None
    return url

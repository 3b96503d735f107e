"""Fixtures: a migrated database per test, on SQLite and on a real PostgreSQL server.

The PostgreSQL server is started once per session on loopback (storage.testing); each test
uses one migrated database that is emptied after it. Without server binaries, the
postgres-parametrized tests skip with a message.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_engine, make_session_factory, upgrade
from storage.files import FileStore
from storage.testing import local_postgres

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str | None]:
    """Base URL of the session's PostgreSQL server, or None with the reason printed on skip."""
    try:
        with local_postgres() as url:
            yield url
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        pytest.pg_unavailable = f"PostgreSQL unavailable: {exc}"  # type: ignore[attr-defined]
        yield None
    except Exception as exc:  # noqa: BLE001 - a failed start (initdb/pg_ctl) must skip, not error
        pytest.pg_unavailable = f"PostgreSQL could not start: {exc}"  # type: ignore[attr-defined]
        yield None


def _pg_admin(base_url: str) -> Engine:
    return create_engine(f"{base_url}/postgres", isolation_level="AUTOCOMMIT")


def new_pg_database(base_url: str) -> str:
    name = f"resi_test_{next(_db_counter)}"
    admin = _pg_admin(base_url)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return f"{base_url}/{name}"


@pytest.fixture(scope="session")
def pg_template(pg_base_url: str | None) -> str | None:
    if pg_base_url is None:
        return None
    url = new_pg_database(pg_base_url)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url.rsplit("/", 1)[1]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "resi.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


def require_pg(base_url: str | None) -> str:
    if base_url is None:
        pytest.skip(getattr(pytest, "pg_unavailable", "PostgreSQL unavailable"))
    return base_url


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (no schema) of the backend named by the `backend` param."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return new_pg_database(require_pg(request.getfixturevalue("pg_base_url")))


def _truncate_all(url: str) -> None:
    from storage.models import Base

    engine = create_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database without data, on SQLite (a fresh file) or PostgreSQL (one shared
    migrated database, emptied after each test: far cheaper than a database per test)."""
    if request.param == "sqlite":
        target = tmp_path / "resi.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite:///{target}"
        return
    base = require_pg(request.getfixturevalue("pg_base_url"))
    url = f"{base}/{request.getfixturevalue('pg_template')}"
    yield url
    _truncate_all(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "images")

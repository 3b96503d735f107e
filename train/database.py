"""The project database of the `python -m train` commands that read or write a project (finetune, prelabel).

They never create or upgrade it: a missing file or an out-of-date schema is one clear message.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError

from storage import db
from storage.cli import DATA_DIR_ENV, DEFAULT_DATA_DIR
from storage.errors import InvalidInput


def add_database_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--data-dir", type=Path, default=Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)),
                       help="data directory holding resi.db and images/ (default: $RESI_DATA_DIR or ./resi-data)")
    group.add_argument("--database-url", help="SQLAlchemy URL (default: $RESI_DATABASE_URL or DATA_DIR/resi.db)")


def open_database(args: argparse.Namespace) -> Engine:
    """The project database's engine, refusing a missing file or an out-of-date schema (nothing is created)."""

    url = args.database_url or db.database_url(args.data_dir)
    try:
        path = db.sqlite_path(url)
    except ArgumentError as err:
        raise InvalidInput(f"{url!r} is not a database URL: {err}") from None
    if path is not None and not path.is_file():
        raise InvalidInput(f"There is no database at {path}; pass --data-dir or --database-url.")
    engine = db.make_engine(url)
    try:
        db.verify_database(engine)
        if db.current_revision(engine) != db.head_revision():
            raise InvalidInput("The database schema is out of date: run `python -m train db upgrade` first.")
    except InvalidInput:
        engine.dispose()
        raise
    return engine

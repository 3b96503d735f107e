"""`python -m train db <command>`: create, upgrade, back up, restore and check the database; list
projects; import a COCO or COCO panoptic dataset into a project; export a project's accepted
annotations (COCO instances + panoptic, with images).

The database is `RESI_DATABASE_URL` when set, else `<data dir>/resi.db` (SQLite); the data
directory is `--data-dir`, else `RESI_DATA_DIR`, else `./resi-data`.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, select

from formats.panoptic import DEFAULT_POLICY, OVERLAP_POLICIES
from storage.db import (
    current_revision,
    database_url,
    head_revision,
    make_engine,
    make_session_factory,
    sqlite_path,
    upgrade,
    verify_database,
)
from storage.errors import InvalidInput, StorageError

DATA_DIR_ENV = "RESI_DATA_DIR"
DEFAULT_DATA_DIR = "resi-data"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train db",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR),
                        help="data directory holding resi.db and images/ (default: $RESI_DATA_DIR or ./resi-data)")
    parser.add_argument("--url", help="SQLAlchemy database URL (default: $RESI_DATABASE_URL or the SQLite file)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upgrade", help="create the schema or upgrade it to the newest migration")
    backup = sub.add_parser("backup", help="write a consistent copy of a live SQLite database (online backup API)")
    backup.add_argument("dest", type=Path, help="file to write; it must not exist unless --force")
    backup.add_argument("--force", action="store_true", help="overwrite dest")
    restore = sub.add_parser("restore", help="replace the SQLite database with a backup (checked first)")
    restore.add_argument("source", type=Path, help="a file written by `db backup`")
    restore.add_argument("--force", action="store_true", help="replace a database that holds data")
    sub.add_parser("check", help="integrity check, foreign keys, schema revision and image files")
    prune = sub.add_parser("prune-files", help="list (with --delete: remove) image files that no image of any "
                                               "project uses any more, e.g. after images were deleted")
    prune.add_argument("--delete", action="store_true", help="remove them (default: only count them)")
    sub.add_parser("projects", help="list the projects with how many images each has per status")
    export = sub.add_parser("export", help="write a project's accepted annotations as COCO instances and "
                                           "panoptic, with the image files, into a new folder")
    export.add_argument("--project", required=True, help="project name")
    export.add_argument("--out", type=Path, required=True, help="folder to write; it must not exist or be empty")
    export.add_argument("--no-images", action="store_true", help="annotations only, no image files")
    export.add_argument("--overlap", choices=OVERLAP_POLICIES, default=DEFAULT_POLICY,
                        help="which mask keeps a pixel that two masks of one label space share in the panoptic "
                             "sets: the smaller one (default) or the later one saved; every pixel given up is "
                             "listed in panoptic/overlaps.json")
    imp = sub.add_parser("import", help="import a COCO instances or COCO panoptic dataset into a project (new or "
                                        "existing) as accepted annotations of a label space; re-importing "
                                        "changes nothing")
    imp.add_argument("--project", required=True, help="project name (created when it does not exist)")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco", type=Path, metavar="JSON", help="COCO instances file (polygons or RLE)")
    source.add_argument("--panoptic", type=Path, metavar="JSON", help="COCO panoptic file (with --panoptic-dir)")
    imp.add_argument("--panoptic-dir", type=Path, metavar="DIR", help="the panoptic PNG folder")
    imp.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of the image files")
    imp.add_argument("--label-space", help="label space to import into, new or existing (default: the file's name "
                                           "without .json)")
    imp.add_argument("--keep-empty-categories", action="store_true",
                     help="make categories that no annotation uses classes too (default: warn and leave them out)")
    return parser


def import_project(url: str, data_dir: Path, args: argparse.Namespace) -> list[str]:
    """`db import`: one transaction, so a malformed record leaves the database as it was."""
    from storage.files import FileStore
    from storage.importer import import_coco, import_panoptic

    if args.panoptic is not None and args.panoptic_dir is None:
        raise InvalidInput("--panoptic needs --panoptic-dir, the folder of its PNGs.")
    if args.coco is not None and args.panoptic_dir is not None:
        raise InvalidInput("--panoptic-dir goes with --panoptic, not --coco.")
    for flag, folder in (("--images", args.images), ("--panoptic-dir", args.panoptic_dir)):
        if folder is not None and not folder.is_dir():
            raise InvalidInput(f"{flag} {folder} is not a folder.")
    engine = make_engine(url)
    try:
        verify_database(engine)
        if current_revision(engine) is None:  # a new data dir: create the schema, as the app does
            upgrade(engine)
        engine.dispose()
        engine = _engine_at_head(url)
        store = FileStore(data_dir / "images")
        options = {"label_space": args.label_space, "keep_empty": args.keep_empty_categories, "progress": True}
        with make_session_factory(engine).begin() as session:
            if args.coco is not None:
                report = import_coco(session, store, args.project, args.coco, args.images, **options)
            else:
                report = import_panoptic(session, store, args.project, args.panoptic, args.panoptic_dir, args.images,
                                         **options)
    finally:
        engine.dispose()
    return report.lines()


def _engine_at_head(url: str) -> Engine:
    """An engine on a database whose schema is current; otherwise one clear error."""
    engine = make_engine(url)
    try:
        verify_database(engine)
        revision = current_revision(engine)
        if revision != head_revision():
            raise InvalidInput(f"The database {engine.url.render_as_string()} is at schema revision {revision}, not "
                               f"{head_revision()}: run `python -m train db upgrade` first.")
    except BaseException:
        engine.dispose()
        raise
    return engine


def prune_files(url: str, data_dir: Path, remove: bool = False) -> list[Path]:
    """Files of the image store that no image row refers to; removed when `remove`."""
    from storage.files import FileStore
    from storage.models import Image

    store = FileStore(data_dir / "images")
    engine = _engine_at_head(url)
    try:
        with make_session_factory(engine)() as session:
            used = set(session.scalars(select(Image.sha256).distinct()))
    finally:
        engine.dispose()
    unused = sorted(p for p in store.root.glob("??/*") if p.is_file() and not p.name.startswith(".")
                    and p.name not in used)
    if remove:
        for path in unused:
            path.unlink(missing_ok=True)
    return unused


def list_projects(url: str) -> list[str]:
    """One line per project: name, then its image counts per status."""
    engine = _engine_at_head(url)
    try:
        with make_session_factory(engine)() as session:
            from storage import repo

            lines = []
            for project in repo.list_projects(session):
                counts = repo.status_counts(session, project.id)
                lines.append(f"{project.name}: " + ", ".join(f"{n} {s.value}" for s, n in counts.items()))
            return lines
    finally:
        engine.dispose()


def export_project(url: str, data_dir: Path, name: str, out: Path, images: bool = True,
                   policy: str = DEFAULT_POLICY) -> str:
    """Export a project's accepted annotations into `out` (new or empty); returns a summary line."""
    from storage import repo
    from storage.export import export_coco
    from storage.files import FileStore

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out} exists and is not an empty folder; choose a new one.")
    engine = _engine_at_head(url)
    try:
        with make_session_factory(engine)() as session:
            project = repo.get_project_by_name(session, name)
            store = FileStore(data_dir / "images") if images else None
            summary = export_coco(session, project.id, out, store, policy=policy)
    finally:
        engine.dispose()
    line = (f"exported {summary.n_images} accepted image(s), {summary.n_annotations} segment(s) of {name!r} to "
            f"{out}: instances.json, panoptic/ ({', '.join(summary.panoptic) or 'none'})"
            + (", images/" if images else ""))
    for space, (pixels, segments, n_images) in summary.overlaps().items():
        line += (f"\npanoptic {space}: masks overlap in {n_images} image(s); {pixels} pixel(s) of {segments} "
                 f"segment(s) went to the {'smaller' if policy == 'smaller' else 'later'} mask "
                 f"(each listed in {out / 'panoptic' / 'overlaps.json'})")
    if summary.n_not_accepted:
        line += f"\n{summary.n_not_accepted} image(s) not accepted yet are left out"
    return line


def _open_checked_sqlite(path: Path) -> sqlite3.Connection:
    """Open a SQLite file read-only and make sure it is a whole RESI database."""
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist.")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            raise InvalidInput(f"{path} is damaged: {result[:3]}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "alembic_version" not in tables:
            raise InvalidInput(f"{path} is a SQLite file but not a RESI database.")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InvalidInput(f"{path} is not a SQLite database ({exc}).") from None
    except InvalidInput:
        conn.close()
        raise
    return conn


def backup(db_file: Path, dest: Path, force: bool = False) -> None:
    """Copy a live database with SQLite's online backup API into `dest` (atomically replaced)."""
    if dest.exists() and not force:
        raise InvalidInput(f"{dest} exists; pass --force to overwrite it.")
    source = _open_checked_sqlite(db_file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)  # one step: a consistent snapshot even while others write
            target.execute("PRAGMA journal_mode=DELETE")  # a self-contained single file
        finally:
            target.close()
        os.replace(tmp, dest)
    finally:
        source.close()
        Path(tmp).unlink(missing_ok=True)


def restore(source_file: Path, db_file: Path, force: bool = False) -> None:
    """Copy a checked backup into the database file through the backup API (safe while open)."""
    source = _open_checked_sqlite(source_file)
    try:
        if db_file.exists() and db_file.stat().st_size > 0 and not force:
            raise InvalidInput(f"{db_file} exists; pass --force to replace it with {source_file}.")
        db_file.parent.mkdir(parents=True, exist_ok=True)
        target = sqlite3.connect(db_file, timeout=30)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=WAL")
            if target.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
                raise InvalidInput(f"The restored {db_file} failed its integrity check.")
        finally:
            target.close()
    finally:
        source.close()


def check(url: str, data_dir: Path) -> list[str]:
    """Problems found in the database and file store; empty when all is well."""
    from storage.files import FileStore
    from storage.models import Image

    problems: list[str] = []
    engine = make_engine(url)
    try:
        verify_database(engine)
        path = sqlite_path(engine)
        if path is not None:
            with engine.connect() as conn:
                result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
                if result != ["ok"]:
                    problems.append(f"integrity_check: {result[:5]}")
                if fk := conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall():
                    problems.append(f"foreign_key_check: {len(fk)} rows point at missing rows")
        revision, head = current_revision(engine), head_revision()
        if revision != head:
            problems.append(f"schema is at revision {revision}, the code expects {head}: run `db upgrade`")
            return problems
        store = FileStore(data_dir / "images")
        with make_session_factory(engine)() as session:
            missing = [sha for sha in session.scalars(select(Image.sha256).distinct()) if not store.exists(sha)]
        if missing:
            problems.append(f"{len(missing)} image files are missing from {store.root}, e.g. {missing[0]}")
    finally:
        engine.dispose()
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    url = args.url or database_url(data_dir)
    db_file = sqlite_path(url)
    try:
        if args.command == "upgrade":
            engine = make_engine(url)
            try:
                verify_database(engine)
                upgrade(engine)
                print(f"database at revision {current_revision(engine)}: {engine.url.render_as_string()}")
            finally:
                engine.dispose()
        elif args.command in ("backup", "restore"):
            if db_file is None:
                raise InvalidInput(f"`db {args.command}` works on SQLite files; for PostgreSQL use pg_dump/pg_restore.")
            if args.command == "backup":
                backup(db_file, args.dest, force=args.force)
                print(f"backed up {db_file} to {args.dest}")
            else:
                restore(args.source, db_file, force=args.force)
                print(f"restored {db_file} from {args.source}")
        elif args.command == "prune-files":
            unused = prune_files(url, data_dir, remove=args.delete)
            size = sum(p.stat().st_size for p in unused if p.exists()) if not args.delete else 0
            print(f"removed {len(unused)} unused image file(s)" if args.delete else
                  f"{len(unused)} unused image file(s), {size / 2**20:.1f} MB; pass --delete to remove them")
        elif args.command == "projects":
            print("\n".join(list_projects(url)) or "no projects yet")
        elif args.command == "import":
            for line in import_project(url, data_dir, args):
                print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
        elif args.command == "export":
            print(export_project(url, data_dir, args.project, args.out, images=not args.no_images,
                                 policy=args.overlap))
        else:
            problems = check(url, data_dir)
            for problem in problems:
                print(f"problem: {problem}", file=sys.stderr)
            if problems:
                return 1
            print("database OK")
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

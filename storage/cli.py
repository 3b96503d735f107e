"""`python -m train db <command>`: create, upgrade, back up, restore and check the database; list
projects; import a COCO or COCO panoptic dataset into a project; export a project's accepted
annotations (COCO instances + panoptic, with images).

The database is `RESI_DATABASE_URL` when set, else `<data dir>/resi.db` (SQLite); the data
directory is `--data-dir`, else `RESI_DATA_DIR`, else `./resi-data`. Only `upgrade` (and `restore`)
create a database; the other commands refuse a missing one and create no files in the data directory.
A backup never goes onto the live database, its -wal/-shm/-journal files, or into the data directory's
images/, models/, cache/ or exports/ folders, even with --force.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from formats.panoptic import DEFAULT_POLICY, OVERLAP_POLICIES
from storage.db import (
    check_url,
    current_revision,
    damaged_message,
    database_url,
    head_revision,
    make_engine,
    make_session_factory,
    sqlite_path,
    upgrade,
    verify_database,
)
from storage.errors import Busy, InvalidInput, StorageError

DATA_DIR_ENV = "RESI_DATA_DIR"
DEFAULT_DATA_DIR = "resi-data"
# Beside a SQLite database, the files that belong to it while it is open.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
# Folders of the data directory that the app and the jobs manage: no backup goes in there.
LIVE_FOLDERS = ("images", "models", "cache", "exports")


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


def require_database(url: str) -> None:
    """Refuse a SQLite file that is not there: read-only commands never create an empty database."""
    path = sqlite_path(url)
    if path is None or path.is_file():
        return
    if path.is_dir():
        raise InvalidInput(f"{path} is a folder, not a database file.")
    folder = path.parent
    hint = (f"{folder} is a file; --data-dir is the folder that holds {path.name}" if folder.is_file() else
            f"{folder} does not exist" if not folder.is_dir() else f"{folder} holds no {path.name}")
    raise InvalidInput(f"There is no database at {path} ({hint}). Check --data-dir or --url; "
                       "`python -m train db upgrade` creates a new one.")


def _engine_at_head(url: str) -> Engine:
    """An engine on an existing database whose schema is current; otherwise one clear error."""
    require_database(url)
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


def _uri_path(path: Path) -> str:
    """A path as a SQLite URI filename ('?', '#' and '%' escaped)."""
    from urllib.parse import quote

    return quote(str(path.resolve()), safe="/")


def _open_checked_sqlite(path: Path, what: str = "database") -> sqlite3.Connection:
    """Open a SQLite file read-only and make sure it is a whole RESI database."""
    if path.is_dir():
        raise InvalidInput(f"{path} is a folder, not a {what} file.")
    if not path.is_file():
        raise InvalidInput(f"There is no {what} at {path}.")
    conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True, timeout=30)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            raise InvalidInput(damaged_message(path, "; ".join(r[0] for r in result[:3])))
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "alembic_version" not in tables:
            raise InvalidInput(f"{path} is a SQLite file but not a RESI database.")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "malformed" in str(exc):
            raise InvalidInput(damaged_message(path, exc)) from None
        raise InvalidInput(f"{path} is not a SQLite database ({exc}).") from None
    except InvalidInput:
        conn.close()
        raise
    return conn


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def live_files(db_file: Path) -> list[Path]:
    """The database file and the files SQLite keeps beside it while it is open."""
    return [db_file] + [db_file.with_name(db_file.name + suffix) for suffix in SQLITE_COMPANIONS]


def check_backup_destination(dest: Path, db_file: Path, data_dir: Path | None = None) -> None:
    """Refuse (even with --force) a destination that would overwrite the live database or files the app
    manages, or that is a folder."""
    if dest.is_dir():
        raise InvalidInput(f"{dest} is a folder; name the backup file, e.g. {dest / 'resi-backup.db'}.")
    target = dest.resolve()
    for live in live_files(db_file):
        if target == live.resolve() or _same_file(dest, live):
            raise InvalidInput(f"{dest} is {'the live database' if live == db_file else 'a file of the live database'}: "
                               "writing a backup there would destroy it. Write the backup outside the data "
                               f"directory, e.g. {db_file.parent.parent / 'resi-backup.db'}.")
    roots = [(data_dir / folder).resolve() for folder in LIVE_FOLDERS] if data_dir is not None else []
    for root in roots:
        if target.is_relative_to(root):
            raise InvalidInput(f"{dest} is inside {root}, which the app manages: write the backup elsewhere, "
                               f"e.g. {root.parent.parent / 'resi-backup.db'}.")


def backup(db_file: Path, dest: Path, force: bool = False, data_dir: Path | None = None) -> None:
    """Copy a live database with SQLite's online backup API into `dest` (atomically replaced). The copy
    gets the database file's permissions."""
    check_backup_destination(dest, db_file, data_dir)
    if dest.exists() and not force:
        raise InvalidInput(f"{dest} exists; pass --force to overwrite it.")
    in_the_way = next((p for p in dest.parents if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        raise InvalidInput(f"{in_the_way} is a file, so {dest} cannot be written.")
    source = _open_checked_sqlite(db_file)
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        os.close(fd)
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)  # one step: a consistent snapshot even while others write
            target.execute("PRAGMA journal_mode=DELETE")  # a self-contained single file
        finally:
            target.close()
        os.chmod(tmp, stat.S_IMODE(db_file.stat().st_mode))  # mkstemp made it owner-only
        os.replace(tmp, dest)
    finally:
        source.close()
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def restore(source_file: Path, db_file: Path, force: bool = False) -> str:
    """Copy a checked backup into the database file through the backup API (safe while the app has it
    open). A database too damaged for that is moved aside (kept, named in the returned note) and the
    backup put in its place; stop the app first in that case. Returns that note, or ""."""
    if any(_same_file(source_file, live) for live in live_files(db_file)):
        raise InvalidInput(f"{source_file} is the database itself (or one of its files); restore from a backup "
                           "written by `db backup`.")
    if db_file.is_dir():
        raise InvalidInput(f"{db_file} is a folder, not a database file.")
    source = _open_checked_sqlite(source_file, "backup")
    try:
        if db_file.exists() and db_file.stat().st_size > 0 and not force:
            raise InvalidInput(f"{db_file} exists; pass --force to replace it with {source_file}.")
        db_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            _copy_into(source, db_file)
            return ""
        except sqlite3.DatabaseError as exc:
            if not ("malformed" in str(exc) or "not a database" in str(exc)):
                raise
        return _replace_damaged(source, db_file)
    finally:
        source.close()


def _copy_into(source: sqlite3.Connection, db_file: Path) -> None:
    target = sqlite3.connect(db_file, timeout=30)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=WAL")
        if target.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
            raise InvalidInput(f"The restored {db_file} failed its integrity check.")
    finally:
        target.close()


def _replace_damaged(source: sqlite3.Connection, db_file: Path) -> str:
    """The backup API cannot write into a file SQLite cannot read: copy the backup beside it, move the
    damaged database (and its -wal/-shm) aside, and rename the copy into place."""
    fd, tmp = tempfile.mkstemp(dir=db_file.parent, prefix=f".{db_file.name}.")
    os.close(fd)
    try:
        _copy_into(source, Path(tmp))
        os.chmod(tmp, stat.S_IMODE(db_file.stat().st_mode))
        kept = db_file.with_name(f"{db_file.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for live in live_files(db_file):
            if live.exists():
                os.replace(live, kept.with_name(kept.name + live.name[len(db_file.name):]))
        os.replace(tmp, db_file)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return f"the damaged database was moved to {kept}"


def check(url: str, data_dir: Path) -> list[str]:
    """Problems found in the database and file store; empty when all is well."""
    from storage.files import FileStore
    from storage.models import Image

    problems: list[str] = []
    require_database(url)
    engine = make_engine(url)
    try:
        verify_database(engine)
        path = sqlite_path(engine)
        try:
            if path is not None:
                with engine.connect() as conn:
                    result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
                    if result != ["ok"]:
                        problems.append(damaged_message(path, f"integrity_check: {'; '.join(result[:3])}"))
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
        except DBAPIError as exc:  # a damaged file fails reads that integrity_check got past
            problems.append(damaged_message(path, exc.orig) if path is not None else f"cannot read it: {exc.orig}")
    finally:
        engine.dispose()
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    db_file = None
    try:
        url = check_url(args.url or database_url(data_dir))
        db_file = sqlite_path(url)
        return _run(args, data_dir, url, db_file)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.OperationalError as exc:  # the backup API's wait for a lock ran out
        print(f"error: {Busy() if 'locked' in str(exc) or 'busy' in str(exc) else exc}", file=sys.stderr)
        return 1
    except (DBAPIError, sqlite3.Error) as exc:
        reason = getattr(exc, "orig", exc)
        damaged = db_file is not None and ("malformed" in str(reason) or "not a database" in str(reason))
        print(f"error: {damaged_message(db_file, reason) if damaged else f'the database failed: {reason}'}",
              file=sys.stderr)
        return 1
    except OSError as exc:  # a folder that cannot be written, a full disk...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, data_dir: Path, url: str, db_file: Path | None) -> int:
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
            backup(db_file, args.dest, force=args.force, data_dir=data_dir)
            print(f"backed up {db_file} to {args.dest}")
        else:
            note = restore(args.source, db_file, force=args.force)
            print(f"restored {db_file} from {args.source}" + (f"; {note}" if note else ""))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

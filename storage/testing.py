"""A throwaway PostgreSQL server on loopback, for the test suite and the storage benchmark.

It uses the server binaries installed on the machine (`/usr/lib/postgresql/*/bin` or PATH).
initdb refuses to run as root, so under root the server runs as the `postgres` user (or
`nobody`) from a temporary directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def find_pg_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(found)
    for pg_ctl in candidates:
        bin_dir = Path(pg_ctl).parent
        if (bin_dir / "initdb").exists() and (bin_dir / "postgres").exists():
            return bin_dir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("Running as root and there is no unprivileged user to run PostgreSQL as.")


@contextmanager
def local_postgres(fsync: bool = False) -> Iterator[str]:
    """Start a server; yield its base URL `postgresql+psycopg://resi@127.0.0.1:<port>`.

    Database `postgres` exists; create others as needed. `fsync=False` speeds up tests; the
    benchmark passes True so that its commit times are real.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise FileNotFoundError("No PostgreSQL server binaries (initdb, pg_ctl, postgres) were found.")
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="resi-pg-"))
    data = root / "data"
    prefix: list[str] = []
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", user.pw_name, "--"]
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    try:
        subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "resi", "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, env=env, cwd=root)
        options = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=50"
        if not fsync:
            options += " -F -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                        "-o", options, "-w", "-t", "60", "start"], check=True, capture_output=True, env=env, cwd=root)
        try:
            yield f"postgresql+psycopg://resi@127.0.0.1:{port}"
        finally:
            subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, env=env, cwd=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

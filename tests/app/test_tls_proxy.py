"""The nginx configuration in deploy/ starts and serves the app over HTTPS: login, and a save through it.

nginx (Debian's nginx or nginx-light) and openssl must be installed; without them this test skips
(scripts/test.sh installs nginx-light with apt-get where it can; tests install nothing).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.live_app import ROOT, free_port, live_app, seed_project

CONFIG = ROOT / "deploy" / "nginx-resi.conf"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx stopped with exit code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nginx did not listen on {port}")


def _nginx_config(prefix: Path, app_port: int, http_port: int, https_port: int, cert: Path, key: Path) -> Path:
    """deploy/nginx-resi.conf with the EDIT lines filled in, inside a minimal nginx.conf of its own."""
    site = CONFIG.read_text()
    for old, new in (("resi.example.org", "localhost"), ("/etc/ssl/certs/resi-fullchain.pem", str(cert)),
                     ("/etc/ssl/private/resi.key", str(key)), ("127.0.0.1:7860", f"127.0.0.1:{app_port}"),
                     ("listen 80;", f"listen 127.0.0.1:{http_port};"),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")):
        assert old in site, f"{CONFIG} no longer has {old!r}"
        site = site.replace(old, new)
    (prefix / "site.conf").write_text(site)
    temp = prefix / "temp"
    temp.mkdir()
    main = prefix / "nginx.conf"
    main.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'};\n"
        "events { worker_connections 64; }\n"
        "http {\n  access_log off;\n"
        + "".join(f"  {kind}_temp_path {temp / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                        "scgi"))
        + f"  include {prefix / 'site.conf'};\n}}\n"
    )
    return main


@pytest.mark.slow
def test_the_nginx_config_serves_the_app_over_https(tmp_path: Path) -> None:
    import httpx
    from gradio_client import Client

    nginx, openssl = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("openssl")
    if not Path(nginx).is_file() or openssl is None:
        pytest.skip("nginx or openssl is not installed (scripts/test.sh installs nginx-light)")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    cert, key = prefix / "cert.pem", prefix / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    data = tmp_path / "data"
    seed_project(data, 0)
    http_port, https_port = free_port(), free_port()
    with live_app(data, env={"RESI_AUTH": "ann:s3cret"}) as app:
        app_port = int(app.url.rstrip("/").rsplit(":", 1)[1])
        conf = _nginx_config(prefix, app_port, http_port, https_port, cert, key)
        checked = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        server = subprocess.Popen([nginx, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(https_port, server)
            url = f"https://localhost:{https_port}/"
            assert httpx.get(f"http://127.0.0.1:{http_port}/", timeout=30).status_code == 301
            with httpx.Client(verify=str(cert), timeout=60) as browser:
                assert browser.get(url).status_code == 200
                assert browser.post(url + "login", data={"username": "ann", "password": "wrong"}).status_code == 400
                assert browser.post(url + "login", data={"username": "ann", "password": "s3cret"}).status_code == 200
            client = Client(url, auth=("ann", "s3cret"), ssl_verify=False, verbose=False)
            client.predict("over https", api_name="/create_project")  # an event, streamed back through nginx
        finally:
            server.terminate()
            server.wait(timeout=30)
    with sqlite3.connect(data / "resi.db") as db:
        assert ("over https",) in db.execute("SELECT name FROM projects").fetchall()

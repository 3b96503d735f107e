"""launch.py's arguments and its refusal to listen on the network without a login."""

from __future__ import annotations

from pathlib import Path

import pytest

import launch
from app.config import ConfigError, is_loopback


def config(argv: list[str]):
    return launch.config_from_args(launch.build_parser().parse_args(argv))


def test_defaults_are_local_and_offline() -> None:
    cfg = config([])
    assert cfg.host == "127.0.0.1" and cfg.data_dir == Path("resi-data") and cfg.text_encoder == "minilm"
    assert cfg.checkpoint == Path("checkpoints/demo") and cfg.auth == ()
    # Domain-aware OMI is opt-in: it removes cross-space masks (docs/MODEL.md).
    assert cfg.out_of_domain_threshold is None
    assert config(["--domain-aware"]).out_of_domain_threshold == 0.98


def test_remote_host_needs_auth_or_explicit_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESI_AUTH", raising=False)
    with pytest.raises(ConfigError, match="without a login"):
        config(["--host", "0.0.0.0"])
    assert config(["--host", "0.0.0.0", "--allow-unauthenticated-remote"]).host == "0.0.0.0"
    users = tmp_path / "users"
    users.write_text("# team\nann:a\nbob:s3:cret\n")
    assert config(["--host", "10.0.0.5", "--auth-file", str(users)]).auth == (("ann", "a"), ("bob", "s3:cret"))
    monkeypatch.setenv("RESI_AUTH", "carl:pw")
    assert config(["--host", "0.0.0.0"]).auth == (("carl", "pw"),)
    assert len(config(["--auth-file", str(users)]).auth) == 3
    monkeypatch.delenv("RESI_AUTH")
    assert launch.main(["--host", "0.0.0.0"]) == 2


def test_a_password_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`ps` shows a process's arguments to every user: --auth USER:PASSWORD gets one message saying so."""
    with pytest.raises(ConfigError, match="visible to every user"):
        config(["--auth", "ann:secret"])
    assert launch.main(["--auth", "ann:secret"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --auth USER:PASSWORD is no longer accepted") and "--auth-file" in err
    assert "--auth " not in launch.build_parser().format_help()


def test_an_auth_file_others_can_read_gets_a_warning(tmp_path: Path) -> None:
    from app.config import auth_file_warning

    users = tmp_path / "users"
    users.write_text("ann:a\n")
    users.chmod(0o644)
    assert "chmod 600" in (auth_file_warning(users) or "")
    users.chmod(0o600)
    assert auth_file_warning(users) is None


def test_bad_values_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="lists no user:password"):
        config(["--auth-file", str(empty)])
    monkeypatch.setenv("RESI_AUTH", "nopassword")
    with pytest.raises(ConfigError, match="user:password"):
        config([])
    monkeypatch.delenv("RESI_AUTH")
    with pytest.raises(ConfigError, match="Cannot read"):
        config(["--auth-file", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="max-upload-mb"):
        config(["--max-upload-mb", "0"])
    with pytest.raises(ConfigError, match="claim-minutes"):
        config(["--claim-minutes", "0"])
    assert config(["--claim-minutes", "2.5"]).claim_seconds == 150
    with pytest.raises(ConfigError, match="model-threads"):
        config(["--model-threads", "0"])
    assert config(["--model-threads", "3"]).model_threads == 3 and config([]).model_threads is None
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("192.168.1.2")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_serves_the_app_and_its_api(tmp_path: Path) -> None:
    """`python launch.py` as a user runs it: it prints its URL, and a client can create a project."""
    import os
    import subprocess
    import sys
    import time

    from gradio_client import Client

    root = Path(launch.__file__).resolve().parent
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(root / "launch.py"), "--port", str(port), "--data-dir", str(tmp_path / "data"),
               "--checkpoint", str(tmp_path / "no-checkpoint")]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            if "RESI is running at" in line:
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}" in output, output
        assert "missing: Propose will say how to get one" in output
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict("launched", api_name="/create_project")
        import sqlite3

        with sqlite3.connect(tmp_path / "data" / "resi.db") as db:
            assert db.execute("SELECT name FROM projects").fetchall() == [("launched",)]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_model_uses_the_threads_it_is_given(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Proposals use --model-threads of the process's intra-op pool, leaving the rest to other work."""
    import torch

    from app.services import ModelProvider

    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            provider = ModelProvider(tiny_checkpoint, "minilm", "cpu", tmp_path / "cache", threads=threads)
            provider.predictor()
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)

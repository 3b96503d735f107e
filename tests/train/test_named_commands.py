"""Every `python -m train ...` command that a message, the README or the docs tell a user to run exists.

A message once told users to run `python -m train demo`, which never existed. This test collects each
command (and, for `db`, its subcommand) named in the source of the packages, the scripts, README.md and
docs/*.md, and runs it with --help: an unknown command or subcommand exits non-zero."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from train.__main__ import COMMANDS
from train.__main__ import main as train_main

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md", ROOT / "launch.py", *sorted((ROOT / "docs").glob("*.md"))]
for package in ("app", "resi_core", "storage", "train", "scripts", "formats"):
    SOURCES += sorted((ROOT / package).rglob("*.py"))
# `python -m train <command> [<word>]`; the word is tried as a subcommand (`db backup`). For a command
# without subcommands argparse acts on --help before it would object to a stray word of prose.
NAMED = re.compile(r"python -m train +([a-z][a-z0-9_-]*)(?: +([a-z][a-z0-9_-]*))?")


def named_commands() -> dict[tuple[str, ...], str]:
    found: dict[tuple[str, ...], str] = {}
    for path in SOURCES:
        for match in NAMED.finditer(path.read_text(encoding="utf-8")):
            words = tuple(w for w in match.groups() if w)
            found.setdefault(words, str(path.relative_to(ROOT)))
    return found


def exit_code(argv: list[str]) -> int:
    """`python -m train ARGV` in this process: a command may return its code or raise SystemExit."""
    try:
        return int(train_main(argv) or 0)
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 1


def test_the_collector_finds_the_documented_commands() -> None:
    found = {words[0] for words in named_commands()}
    # README's command table names these; if the collector stopped finding them it would check nothing.
    assert {"world", "evaluate", "pretrain", "finetune", "bench", "db"} <= found


@pytest.mark.parametrize(("words", "where"), sorted(named_commands().items()), ids=lambda v: " ".join(v)
                         if isinstance(v, tuple) else v)
def test_named_command_exists(words: tuple[str, ...], where: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert words[0] in COMMANDS, f"{where} names `python -m train {words[0]}`, which is not a command"
    code = exit_code([*words, "--help"])
    out, err = capsys.readouterr()
    assert code == 0, f"{where}: `python -m train {' '.join(words)} --help` exited {code}: {err}"
    assert "usage:" in out


def test_a_wrong_command_or_subcommand_is_caught(capsys: pytest.CaptureFixture[str]) -> None:
    # The check above must be able to fail: an unknown command returns 2, an unknown db subcommand exits 2.
    assert exit_code(["demo", "--help"]) == 2
    assert exit_code(["db", "nonsense", "--help"]) == 2

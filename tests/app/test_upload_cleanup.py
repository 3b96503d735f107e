"""Gradio keeps every uploaded file in its temporary folder; the app deletes each one once it is stored or
refused, so uploads cannot fill the disk (and accepted images are not kept twice)."""

from __future__ import annotations

import io
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.events import remove_uploads
from tests.live_app import live_app, seed_project


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _twenty_files(folder: Path) -> list[Path]:
    """13 images (one sent twice, one inside a zip), junk, a truncated image, an empty file: 20 files."""
    folder.mkdir()
    files = []
    for i in range(11):
        files.append(folder / f"photo{i}.png")
        files[-1].write_bytes(_png(i))
    files.append(folder / "photo0-again.png")
    files[-1].write_bytes(_png(0))
    for name, data in (("notes.png", b"not an image at all"), ("cut.png", _png(50)[:200]), ("empty.jpg", b""),
                       ("readme.txt.png", b"hello"), ("big.png", _png(51)), ("pic.webp", b"RIFF....WEBP"),
                       ("x.gif", b"GIF89a")):
        files.append(folder / name)
        files[-1].write_bytes(data)
    archive = folder / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("z1.png", _png(60))
        zf.writestr("z2.txt", "junk")
    files.append(archive)
    assert len(files) == 20
    return files


def _left_in(folder: Path) -> list[Path]:
    """Files and non-empty folders left (Gradio makes an empty `vibe_edit_history` folder when it starts)."""
    return sorted(p for p in folder.rglob("*") if not p.is_dir() or any(p.iterdir())) if folder.exists() else []


@pytest.mark.slow
def test_twenty_uploads_leave_gradios_temp_folder_empty(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    data, temp = tmp_path / "data", tmp_path / "gradio-temp"
    seed_project(data, 0)
    files = _twenty_files(tmp_path / "to-upload")
    with live_app(data, env={"GRADIO_TEMP_DIR": str(temp)}) as app:
        client = Client(app.url, verbose=False)
        client.predict("live", api_name="/open_project")
        report = client.predict("all", 1, [handle_file(str(p)) for p in files], api_name="/upload")[0]
        left = _left_in(temp)
    assert "Added 13 image(s)" in report and "1 duplicate(s)" in report, report
    with sqlite3.connect(data / "resi.db") as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone() == (13,)
    assert left == [], f"Gradio's temporary folder still holds {left}"
    assert all(p.exists() for p in files)  # the user's own files are never touched


def test_only_files_inside_gradios_folder_are_removed(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "gradio", tmp_path / "mine"
    (root / "abc123").mkdir(parents=True)
    (root / "shared").mkdir()
    elsewhere.mkdir()
    upload, other, keep = root / "abc123" / "a.png", root / "shared" / "b.png", elsewhere / "c.png"
    for path in (upload, other, keep, root / "shared" / "stays.png"):
        path.write_bytes(b"x")
    (root / "link.png").symlink_to(keep)
    remove_uploads([str(upload), str(other), str(keep), str(root / "link.png"), str(root / "abc123" / "gone.png")],
                   root)
    assert not upload.exists() and not (root / "abc123").exists()  # its folder went with it
    assert not other.exists() and (root / "shared" / "stays.png").exists() and (root / "shared").is_dir()
    assert keep.exists() and root.is_dir()
    remove_uploads(None, root)

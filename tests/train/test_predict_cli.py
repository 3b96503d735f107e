"""`python -m train predict`: COCO results that `train evaluate` scores directly, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from formats.coco import load_ground_truth, load_predictions
from resi_core.metrics import evaluate
from resi_core.world import generate, prepare_out_dir, write_world
from train.predict import main

DEMO = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"


@pytest.fixture(scope="module")
def m2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("M2")
    prepare_out_dir(out, overwrite=False)
    write_world(generate("M2", "val", 4, seed=5), "M2", out, split="val", seed=5)
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_results_follow_the_ground_truths_ids_and_evaluate(m2, tmp_path, capsys):
    out = tmp_path / "results.json"
    code, printed, _ = run(capsys, "--checkpoint", DEMO, "--images", m2 / "images", "--spaces", "street,drive",
                           "--gt", m2 / "instances.json", "--out", out, "--no-progress")
    assert code == 0 and "4 images" in printed
    gt = load_ground_truth(m2 / "instances.json")
    raw = json.loads(out.read_text())
    assert raw, "the demo proposes something on M2 images"
    names = {c.id: c.name for c in gt.categories.values()}
    # M2's ground truth fuses person = pedestrian into one category; the request declared it from --gt,
    # so no proposal is named "pedestrian" and every id is the ground truth's category of that name.
    assert all(names[r["category_id"]] == r["category_name"] for r in raw)
    assert "pedestrian" not in {r["category_name"] for r in raw}
    files = {im.id: im.file_name for im in gt.images.values()}
    assert all(files[r["image_id"]] == r["file_name"] for r in raw)
    assert evaluate(gt, load_predictions(out, gt)).piq.piq is not None


def test_without_gt_ids_number_files_and_classes(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "r.json"
    code, printed, _ = run(capsys, "--checkpoint", DEMO, "--images", folder, "--classes", "dog, cat",
                           "--out", out, "--no-progress", "--score-threshold", "0")
    assert code == 0 and "2 images" in printed
    raw = json.loads(out.read_text())
    assert {(r["image_id"], r["file_name"]) for r in raw} <= {(1, "a.jpg"), (2, "b.png")}
    assert {(r["category_id"], r["category_name"]) for r in raw} <= {(1, "dog"), (2, "cat")}
    (folder / "a.jpg").unlink(), (folder / "b.png").unlink()
    code, _, err = run(capsys, "--checkpoint", DEMO, "--images", folder, "--classes", "dog", "--out", tmp_path / "x.json")
    assert code == 2 and "holds no image files" in err and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--images": "missing"}, "is not a folder"),
        ({"--images": "empty"}, "4 images of --gt are not in"),
        ({"--checkpoint": "missing"}, "not a checkpoint folder"),
        ({"--spaces": "street,mall"}, "Unknown label space 'mall'"),
        ({"--spaces": ""}, "Give --spaces"),
        ({"--classes": "dog"}, "are not categories of --gt"),
        ({"--synonyms": "person"}, "pairs like person=pedestrian"),
        ({"--gt": "broken"}, "broken.json"),
        ({"--out": "folder"}, "is a folder"),
        ({"--score-threshold": "1.5"}, "--score-threshold"),
        ({"--images": "corrupt"}, "not an image file"),
    ],
)
def test_bad_input_is_one_error_line(m2, tmp_path, capsys, change, message):
    paths = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty", "broken": tmp_path / "broken.json",
             "folder": tmp_path / "folder", "corrupt": tmp_path / "corrupt"}
    paths["empty"].mkdir()
    paths["folder"].mkdir()
    paths["broken"].write_text("{not json")
    gt = json.loads((m2 / "instances.json").read_text())
    paths["corrupt"].mkdir()
    for image in gt["images"]:
        (paths["corrupt"] / image["file_name"]).write_bytes(b"\x89PNG broken")
    out = tmp_path / "results.json"
    args = {"--checkpoint": DEMO, "--images": m2 / "images", "--spaces": "street,drive", "--gt": m2 / "instances.json",
            "--out": out}
    args.update({k: paths.get(v, v) for k, v in change.items()})
    argv = [str(a) for kv in args.items() for a in kv] + ["--no-progress"]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and not out.exists()

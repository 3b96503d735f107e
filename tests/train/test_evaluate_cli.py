"""`python -m train evaluate`: summary table, JSON output, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resi_core.coco import encode_mask
from train.evaluate import main

ROOT = Path(__file__).resolve().parents[2]


def write_files(tmp_path: Path, predictions: list | str) -> tuple[Path, Path]:
    car = np.zeros((8, 8), dtype=bool)
    car[2:6, 2:6] = True
    gt = {
        "images": [{"id": 1, "height": 8, "width": 8}],
        "categories": [{"id": 1, "name": "car", "isthing": 1}, {"id": 2, "name": "road", "isthing": 0}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(car), "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": encode_mask(~car), "iscrowd": 0},
        ],
    }
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    if isinstance(predictions, str):
        pred_path.write_text(predictions)
    else:
        pred_path.write_text(json.dumps(predictions))
    return gt_path, pred_path


def perfect_predictions(tmp_path: Path) -> tuple[Path, Path]:
    gt_path, pred_path = write_files(tmp_path, [])
    anns = json.loads(gt_path.read_text())["annotations"]
    preds = [
        {"image_id": 1, "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 0.9}
        for a in anns
    ]
    pred_path.write_text(json.dumps(preds))
    return gt_path, pred_path


def test_evaluate_writes_json_and_prints_table(tmp_path, capsys):
    gt_path, pred_path = perfect_predictions(tmp_path)
    out = tmp_path / "result.json"
    assert main(["--gt", str(gt_path), "--pred", str(pred_path), "--out", str(out), "--per-class"]) == 0
    printed = capsys.readouterr().out
    assert "PIQ" in printed and "mIoU" in printed and "PQ default" in printed and "AP50" in printed
    assert "100.00" in printed and "road" in printed
    assert "Overlap recall (0/0 pairs)" in printed  # car and road never overlap: no pair, no figure
    result = json.loads(out.read_text())
    assert result["piq"]["piq"] == 1.0 and result["miou"]["miou"] == 1.0
    assert result["pq"]["pq_mean"] == 1.0 and result["ap"]["ap"] == pytest.approx(1.0)
    assert result["overlap"]["overlap_recall"] is None and result["overlap"]["pairs"] == 0


@pytest.mark.parametrize(
    ("predictions", "message"),
    [
        ([], "holds no predictions"),
        ("[{", "is not valid JSON"),
        (
            [
                {
                    "image_id": 5,
                    "category_id": 1,
                    "segmentation": {"size": [8, 8], "counts": "0`0"},
                    "score": 1,
                }
            ],
            "image_id 5",
        ),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path, capsys, predictions, message):
    gt_path, pred_path = write_files(tmp_path, predictions)
    assert main(["--gt", str(gt_path), "--pred", str(pred_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_gt_file(tmp_path, capsys):
    assert main(["--gt", str(tmp_path / "nope.json"), "--pred", str(tmp_path / "p.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_module_entry_point_help_and_error(tmp_path):
    run = [sys.executable, "-m", "train", "evaluate"]
    help_ = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "PIQ" in help_.stdout and "own" in help_.stdout and "--pred" in help_.stdout
    gt_path, pred_path = write_files(tmp_path, "[]")
    bad = subprocess.run(
        [*run, "--gt", str(gt_path), "--pred", str(pred_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_overlap_recall_per_pair_is_printed(tmp_path, capsys):
    person, face = np.zeros((8, 8), dtype=bool), np.zeros((8, 8), dtype=bool)
    person[1:8, 2:6], face[1:3, 2:6] = True, True
    gt = {
        "images": [{"id": 1, "height": 8, "width": 8}],
        "categories": [{"id": 1, "name": "person", "isthing": 1, "label_spaces": ["street"]},
                       {"id": 2, "name": "face", "isthing": 1, "label_spaces": ["portrait"]}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(person), "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": encode_mask(face), "iscrowd": 0},
        ],
    }
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    # Only the person is proposed: the one person/face pair is not found.
    pred_path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "segmentation": encode_mask(person),
                                      "score": 0.9}]))
    assert main(["--gt", str(gt_path), "--pred", str(pred_path), "--per-class"]) == 0
    printed = capsys.readouterr().out
    assert "Overlap recall (0/1 pairs)" in printed
    assert any(line.split() == ["person", "/", "face", "0", "1", "0.00"] for line in printed.splitlines())

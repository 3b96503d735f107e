"""`python -m train world`: outputs, determinism across --n, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from pycocotools.coco import COCO

from train import world_cli


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = world_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_datasets_and_benchmarks(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("street", "portrait", "drive", "parts", "M1", "M4", "pedestrian", "--overwrite"):
        assert word in out


def test_benchmark_export_and_first_n_images_are_stable(tmp_path, capsys):
    small, big = tmp_path / "small", tmp_path / "big"
    assert run(capsys, "--benchmark", "M1", "--split", "val", "--n", "3", "--size", "64", "--out", str(small), "--quiet")[0] == 0
    assert run(capsys, "--benchmark", "M1", "--split", "val", "--n", "5", "--size", "64", "--out", str(big), "--quiet")[0] == 0
    for name in ("000001.png", "000003.png"):
        assert (small / "images" / name).read_bytes() == (big / "images" / name).read_bytes()
        assert (small / "panoptic_portrait" / name).read_bytes() == (big / "panoptic_portrait" / name).read_bytes()
    coco = COCO(str(big / "instances.json"))
    assert len(coco.imgs) == 5
    assert {c["name"] for c in coco.cats.values()} == {"person", "car", "truck", "road", "sky", "face", "hair"}
    for space in ("street", "portrait"):
        panoptic = json.loads((big / f"panoptic_{space}.json").read_text())
        assert len(panoptic["annotations"]) == 5
        assert len(list((big / f"panoptic_{space}").glob("*.png"))) == 5


def test_dataset_export_and_overwrite(tmp_path, capsys):
    out = tmp_path / "drive"
    argv = ["--dataset", "drive", "--n", "2", "--size", "48", "--out", str(out), "--quiet"]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "wrote 2 images" in stdout
    data = json.loads((out / "instances.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["pedestrian", "vehicle", "road", "vegetation"]
    assert [c["label_spaces"] for c in data["categories"]] == [["drive"]] * 4
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--overwrite" in err
    assert run(capsys, *argv, "--overwrite")[0] == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "mars", "--out", "X"], "invalid choice"),
        (["--benchmark", "M7", "--out", "X"], "invalid choice"),
        (["--dataset", "street", "--benchmark", "M1", "--out", "X"], "not allowed"),
        (["--out", "X"], "required"),
        (["--dataset", "street", "--n", "0", "--out", "X"], "--n must be positive"),
        (["--dataset", "street", "--n", "-3", "--out", "X"], "--n must be positive"),
        (["--dataset", "street", "--n", "ten", "--out", "X"], "invalid int"),
        (["--dataset", "street", "--seed", "-1", "--out", "X"], "--seed"),
        (["--dataset", "street", "--size", "8", "--out", "X"], "--size"),
        (["--dataset", "street"], "--out"),
        (["--dataset", "street", "--domains", "street,mall", "--out", "X"], "mall"),
        (["--benchmark", "M1", "--domains", "street", "--out", "X"], "source dataset"),
    ],
)
def test_bad_options_give_one_error_line(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "o") if a == "X" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_out_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    code, _, err = run(capsys, "--dataset", "parts", "--n", "1", "--out", str(target))
    assert code == 2 and "is a file" in err


def test_domains_draw_other_scene_kinds(tmp_path, capsys):
    out = tmp_path / "street_any"
    code, _, _ = run(capsys, "--dataset", "street", "--domains", "street, portrait", "--n", "4", "--size", "48",
                     "--out", str(out), "--quiet")
    assert code == 0
    data = json.loads((out / "instances.json").read_text())
    assert [im["domain"] for im in data["images"]] == ["street", "portrait", "street", "portrait"]
    assert {c["name"] for c in data["categories"]} == {"person", "car", "truck", "road", "sky"}

"""`db import`: COCO instances and COCO panoptic into a project, as accepted annotations of a label
space; idempotent; every malformed record gets one error naming it, and nothing is written then."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from storage import repo
from storage.cli import main
from storage.errors import InvalidInput
from storage.files import FileStore
from storage.importer import import_coco, import_panoptic
from storage.models import ImageStatus
from tests.storage.helpers import png_bytes, rle_box

H, W = 12, 16


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Two images; a person polygon and a crowd RLE on the first, a car on the second; 'dog' unused."""
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2):
        (images / f"{i}.png").write_bytes(png_bytes(W, H, seed=i))
    coco = {
        "images": [{"id": 1, "file_name": "1.png", "height": H, "width": W},
                   {"id": 2, "file_name": "2.png", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]]},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": rle_box(H, W, 8, 8, 12, 16)},
            {"id": 12, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": rle_box(H, W, 2, 2, 6, 6)},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images


def _import(sessions: sessionmaker[Session], store: FileStore, path: Path, images: Path, **kwargs):
    with sessions.begin() as s:
        return import_coco(s, store, "p", path, images, **kwargs)


def test_import_coco_as_accepted_annotations_and_again_changes_nothing(
        sessions: sessionmaker[Session], store: FileStore, tmp_path: Path) -> None:
    path, images = _dataset(tmp_path)
    report = _import(sessions, store, path, images, label_space="gt")
    assert (report.images, report.new_images, report.changed, report.segments, report.crowd) == (2, 2, 2, 3, 1)
    assert report.classes == ["person", "car"] and report.empty_categories == ["dog"]
    assert "not made classes" in report.lines()[1] and "'dog'" in report.lines()[1]
    with sessions() as s:
        project = repo.get_project_by_name(s, "p")
        [space] = repo.list_label_spaces(s, project.id)
        assert space.name == "gt" and [c["name"] for c in space.classes] == ["person", "car"]
        accepted = repo.accepted_annotations(s, project.id)
        assert repo.status_counts(s, project.id)[ImageStatus.ACCEPTED] == 2
    first = {(seg.class_name, seg.iscrowd): seg for seg in accepted[0].segments}
    assert set(first) == {("person", False), ("person", True)}
    from formats.rle import decode_rle
    polygon = decode_rle(first[("person", False)].rle)
    assert polygon[1:5, 1:7].all() and not polygon[8:, :].any()  # the polygon's inside, nothing below it
    assert decode_rle(first[("person", True)].rle).sum() == 4 * 8

    again = _import(sessions, store, path, images, label_space="gt")
    assert (again.new_images, again.changed, again.unchanged) == (0, 0, 2)
    with sessions() as s:
        project = repo.get_project_by_name(s, "p")
        assert [len(repo.history(s, a.image_id)) for a in repo.accepted_annotations(s, project.id)] == [2, 2]


def test_a_changed_file_replaces_only_its_label_space(sessions: sessionmaker[Session], store: FileStore,
                                                        tmp_path: Path) -> None:
    path, images = _dataset(tmp_path)
    _import(sessions, store, path, images, label_space="gt")
    _import(sessions, store, path, images, label_space="other")
    data = json.loads(path.read_text())
    data["annotations"] = data["annotations"][:1]
    path.write_text(json.dumps(data))
    report = _import(sessions, store, path, images, label_space="gt", keep_empty=True)
    assert (report.changed, report.unchanged) == (2, 0) and report.classes == ["person", "car", "dog"]
    with sessions() as s:
        project = repo.get_project_by_name(s, "p")
        segs = [(seg.label_space, seg.class_name) for a in repo.accepted_annotations(s, project.id)
                for seg in a.segments]
    assert sorted(segs) == sorted([("gt", "person"), ("other", "person"), ("other", "person"), ("other", "car")])


def _broken(tmp_path: Path, change) -> tuple[Path, Path]:
    path, images = _dataset(tmp_path)
    data = json.loads(path.read_text())
    change(data, images)
    path.write_text(json.dumps(data))
    return path, images


@pytest.mark.parametrize("change, message", [
    (lambda d, _: d["annotations"][0].update(category_id=99), r"annotations\[0\]: category_id 99 is not a category"),
    (lambda d, images: (images / "2.png").unlink(), r"image id 2 \(2.png\): the image file .*2.png does not exist"),
    (lambda d, _: d["annotations"][0].update(segmentation=[[0, 0, 5, 5]]), r"annotations\[0\]: polygon .* at least 3"),
    (lambda d, _: d["annotations"][2].update(segmentation=rle_box(H + 1, W, 0, 0, 2, 2)),
     r"annotations\[2\]: mask size 13x16 differs from the image size 12x16"),
    (lambda d, _: (d["images"][1].update(height=H + 2), d["annotations"].pop()),
     r"image id 2 \(2.png\): .*2.png: the file is 16x12 \(upright\), the dataset says 16x14"),
])
def test_each_malformed_record_is_named_and_nothing_is_written(sessions: sessionmaker[Session], store: FileStore,
                                                                tmp_path: Path, change, message: str) -> None:
    path, images = _broken(tmp_path, change)
    with pytest.raises(InvalidInput, match=message), sessions.begin() as s:
        import_coco(s, store, "p", path, images)
    with sessions() as s:
        assert repo.list_projects(s) == []


def _panoptic(tmp_path: Path, segments_info: list[dict], ids: np.ndarray) -> tuple[Path, Path, Path]:
    images, pngs = tmp_path / "images", tmp_path / "pngs"
    images.mkdir(exist_ok=True)
    pngs.mkdir(exist_ok=True)
    (images / "1.png").write_bytes(png_bytes(W, H, seed=1))
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    PILImage.fromarray(rgb).save(pngs / "1.png")
    data = {"images": [{"id": 1, "file_name": "1.png", "height": H, "width": W}],
            "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0}],
            "annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": segments_info}]}
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps(data))
    return path, pngs, images


def test_import_panoptic_keeps_stuff_crowd_and_void(sessions: sessionmaker[Session], store: FileStore,
                                                     tmp_path: Path) -> None:
    ids = np.zeros((H, W), dtype=np.int64)
    ids[:4], ids[6:, :5], ids[6:, 10:] = 300, 5, 70000  # sky; a person; a crowd of people; the rest void
    path, pngs, images = _panoptic(tmp_path, [{"id": 300, "category_id": 2}, {"id": 5, "category_id": 1},
                                              {"id": 70000, "category_id": 1, "iscrowd": 1}], ids)
    with sessions.begin() as s:
        report = import_panoptic(s, store, "p", path, pngs, images, label_space="pan")
    assert (report.images, report.segments, report.crowd) == (1, 3, 1)
    with sessions() as s:
        [image] = repo.accepted_annotations(s, repo.get_project_by_name(s, "p").id)
    from formats.rle import decode_rle
    got = {(seg.class_name, seg.isthing, seg.iscrowd): int(decode_rle(seg.rle).sum()) for seg in image.segments}
    assert got == {("sky", False, False): 4 * W, ("person", True, False): 6 * 5, ("person", True, True): 6 * 6}


@pytest.mark.parametrize("segments_info, message", [
    ([{"id": 300, "category_id": 2}], r"annotations\[0\] \(1.png\): the PNG holds segment id\(s\) \[5\] that "
                                      "segments_info does not list"),
    ([{"id": 300, "category_id": 2}, {"id": 5, "category_id": 9}], r"segments_info\[1\] has category_id 9"),
])
def test_malformed_panoptic_records_are_named(sessions: sessionmaker[Session], store: FileStore, tmp_path: Path,
                                              segments_info: list[dict], message: str) -> None:
    ids = np.zeros((H, W), dtype=np.int64)
    ids[:4], ids[6:, :5] = 300, 5
    path, pngs, images = _panoptic(tmp_path, segments_info, ids)
    with pytest.raises(InvalidInput, match=message), sessions.begin() as s:
        import_panoptic(s, store, "p", path, pngs, images)


def test_cli_import_then_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, images = _dataset(tmp_path)
    data = tmp_path / "data"
    args = ["--data-dir", str(data), "import", "--project", "p", "--coco", str(path), "--images", str(images)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "imported 2 image(s) into project 'p' as label space 'instances'" in out
    assert "warning: 1 category without annotations: 'dog'" in err
    assert main(args) == 0 and "0 written, 2 unchanged" in capsys.readouterr().out
    assert main(["--data-dir", str(data), "import", "--project", "p", "--panoptic", str(path),
                 "--images", str(images)]) == 1
    assert "--panoptic needs --panoptic-dir" in capsys.readouterr().err
    assert main(["--data-dir", str(data), "import", "--project", "p", "--coco", str(path),
                 "--images", str(tmp_path / "nope")]) == 1
    assert "--images" in capsys.readouterr().err
    assert main(["--data-dir", str(data), "export", "--project", "p", "--out", str(tmp_path / "out")]) == 0
    exported = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert sorted(a["iscrowd"] for a in exported["annotations"]) == [0, 0, 1]


def test_kept_empty_categories_are_exported(sessions: sessionmaker[Session], store: FileStore, tmp_path: Path) -> None:
    from storage.export import export_coco

    path, images = _dataset(tmp_path)
    _import(sessions, store, path, images, label_space="gt", keep_empty=True)
    with sessions.begin() as s:
        summary = export_coco(s, repo.get_project_by_name(s, "p").id, tmp_path / "out")
    names = {c["name"]: c["label_spaces"] for c in json.loads(summary.instances_path.read_text())["categories"]}
    assert names == {"person": ["gt"], "car": ["gt"], "dog": ["gt"]}

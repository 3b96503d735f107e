"""Importing a COCO / COCO panoptic dataset from the Projects tab (app/projects/dataset_import.py)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.projects.dataset_import import import_dataset
from app.projects.handlers import create_project
from app.services import Services, UserError
from formats.panoptic import pack_ids
from formats.rle import encode_mask
from storage import repo

H, W = 12, 16


def _files(tmp_path: Path) -> tuple[Path, Path]:
    """Two images zipped, and a COCO instances file with a person on the first and a car on the second."""
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        for i in (1, 2):
            Image.new("RGB", (W, H), (40 * i, 10, 10)).save(tmp_path / f"{i}.png")
            archive.write(tmp_path / f"{i}.png", f"train/{i}.png")
    box = np.zeros((H, W), dtype=bool)
    box[2:6, 3:9] = True
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (1, 2)],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}, {"id": 3, "name": "_background_"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(box), "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 2, "segmentation": encode_mask(~box),
                             "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    return tmp_path / "gt.json", tmp_path / "images.zip"


def test_import_from_the_projects_tab(svc: Services, tmp_path: Path) -> None:
    state = create_project(svc, "imported")
    annotations, images = _files(tmp_path)
    result = import_dataset(svc, state, annotations, [images], label_space="legacy")
    assert "imported 2 image(s) into project 'imported' as label space 'legacy'" in result.message
    assert "Warning: 1 category without annotations: '_background_'" in result.message
    with svc.sessions() as s:
        accepted = repo.accepted_annotations(s, state.project_id)
    assert sorted(seg.class_name for image in accepted for seg in image.segments) == ["car", "person"]
    again = import_dataset(svc, state, annotations, [images], label_space="legacy")
    assert "0 written, 2 unchanged" in again.message


def test_panoptic_import_needs_its_pngs_and_errors_import_nothing(svc: Services, tmp_path: Path) -> None:
    state = create_project(svc, "p")
    annotations, images = _files(tmp_path)
    ids = np.zeros((H, W), dtype=np.uint32)
    ids[:4] = 7
    Image.fromarray(pack_ids(ids)).save(tmp_path / "1_pan.png")
    panoptic = {"images": [{"id": 1, "file_name": "1.png", "height": H, "width": W}],
                "categories": [{"id": 5, "name": "sky", "isthing": 0}],
                "annotations": [{"image_id": 1, "file_name": "1_pan.png",
                                 "segments_info": [{"id": 7, "category_id": 5}]}]}
    (tmp_path / "pan.json").write_text(json.dumps(panoptic))
    with pytest.raises(UserError, match="choose its PNGs"):
        import_dataset(svc, state, tmp_path / "pan.json", [images])
    result = import_dataset(svc, state, tmp_path / "pan.json", [images], [tmp_path / "1_pan.png"])
    assert "as label space 'pan'" in result.message and "1 segment(s)" in result.message

    broken = json.loads(annotations.read_text())
    broken["annotations"][1]["category_id"] = 42
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match=r"Nothing was imported: .*annotations\[1\]: category_id 42"):
        import_dataset(svc, state, tmp_path / "broken.json", [images])
    with svc.sessions() as s:
        assert len(repo.accepted_annotations(s, state.project_id)) == 1  # only the panoptic image

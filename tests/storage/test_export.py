from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from pycocotools.coco import COCO
from sqlalchemy.orm import Session, sessionmaker

from storage import repo
from storage.export import export_coco
from storage.files import FileStore
from tests.storage.helpers import png_bytes, segment

H, W = 48, 64


def test_export_instances_and_panoptic(sessions: sessionmaker[Session], store: FileStore, tmp_path: Path) -> None:
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        class_set = repo.set_class_set(s, project.id, ["street", "portrait"])
        model = repo.register_model_version(s, project.id, "v1", "/c", "0" * 64, [])
        ids = []
        for seed, overlap_in_street in ((0, False), (1, True)):
            image, _ = repo.add_image(s, store, project.id, png_bytes(W, H, seed), f"{seed}.png")
            segs = [segment("a", H, W, (0, 0, 20, 20), "person", "street"),
                    segment("b", H, W, (5, 5, 10, 10), "face", "portrait"),  # overlaps across spaces: fine
                    segment("c", H, W, (30, 30, 40, 40) if not overlap_in_street else (10, 10, 30, 30), "car", "street")]
            repo.save_proposal(s, image.id, model.id, class_set.id, segs, 1.0)
            repo.accept(s, image.id, 1, "ann")
            ids.append(image.id)
        summary = export_coco(s, project.id, tmp_path / "out")
    assert (summary.n_images, summary.n_annotations) == (2, 6)
    coco = COCO(str(summary.instances_path))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["car", "face", "person"]
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[ids[0]], catIds=coco.getCatIds(catNms=["person"])))[0]
    assert coco.annToMask(ann).sum() == 400 and ann["bbox"] == [0.0, 0.0, 20.0, 20.0]
    assert summary.skipped == {"street": [ids[1]]}
    street = json.loads(summary.panoptic["street"].read_text())
    assert [a["image_id"] for a in street["annotations"]] == [ids[0]]
    png = np.asarray(PILImage.open(summary.panoptic["street"].parent / "street" / street["annotations"][0]["file_name"]))
    png = png.astype(np.int64)
    seg_ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    assert {int(v) for v in np.unique(seg_ids)} == {0, 1, 2}
    assert {s["area"] for s in street["annotations"][0]["segments_info"]} == {400, 100}

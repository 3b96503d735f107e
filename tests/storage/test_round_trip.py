"""coco128 in and out: its COCO instances and its COCO panoptic imported as two label spaces over the same
photos, exported, and compared with the original files read by independent tools (pycocotools for
instances, the PNGs unpacked here for panoptic). The exported panoptic sets, scored against
themselves with panopticapi's pq_compute rules, give PQ 1.0."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pycocotools.coco import COCO

from storage import repo
from storage.db import make_engine, make_session_factory, upgrade
from storage.export import export_coco
from storage.files import FileStore
from storage.importer import import_coco, import_panoptic
from tests.resi_core.test_metrics_crosscheck import reference_pq
from tests.shared_data import COCO128

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not COCO128.is_dir(),
                                                    reason=f"coco128 is not at {COCO128}: set RESI_COCO128 to its folder")]
INSTANCES = COCO128 / "annotations_instances" / "instances_train2017.json"
PANOPTIC = COCO128 / "panoptic" / "panoptic_train2017.json"
PANOPTIC_DIR = COCO128 / "panoptic" / "panoptic_train2017"
IMAGES = COCO128 / "images" / "train2017"


def _ids(path: Path) -> np.ndarray:
    rgb = np.asarray(PILImage.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask.astype(bool)).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("round-trip")
    engine = make_engine(f"sqlite:///{root / 'resi.db'}")
    upgrade(engine)
    store = FileStore(root / "images")
    try:
        with make_session_factory(engine).begin() as s:
            import_coco(s, store, "c128", INSTANCES, IMAGES, label_space="instances")
            import_panoptic(s, store, "c128", PANOPTIC, PANOPTIC_DIR, IMAGES, label_space="panoptic")
        with make_session_factory(engine).begin() as s:
            summary = export_coco(s, repo.get_project_by_name(s, "c128").id, root / "out")
    finally:
        engine.dispose()
    assert summary.n_images == 128 and set(summary.panoptic) == {"instances", "panoptic"}
    assert not [g for g in summary.given_up if g.label_space == "panoptic"]  # panoptic never overlaps itself
    return root / "out"


def test_instances_come_back_with_the_same_masks_categories_and_crowds(exported: Path) -> None:
    original, ours = COCO(str(INSTANCES)), COCO(str(exported / "instances.json"))
    names = {c["id"]: c["name"] for c in original.loadCats(original.getCatIds())}
    used = {names[a["category_id"]] for a in original.dataset["annotations"]}
    mine = [c for c in ours.loadCats(ours.getCatIds()) if "instances" in c["label_spaces"]]
    assert {(c["name"], c["isthing"]) for c in mine} == {(n, 1) for n in used}
    ours_by_name = {img["original_name"]: img["id"] for img in ours.dataset["images"]}
    crowds = 0
    for img in original.dataset["images"]:
        want = Counter((names[a["category_id"]], a["iscrowd"], _digest(original.annToMask(a)))
                       for a in original.loadAnns(original.getAnnIds(imgIds=[img["id"]])))
        anns = [a for a in ours.loadAnns(ours.getAnnIds(imgIds=[ours_by_name[img["file_name"]]]))
                if a["label_space"] == "instances"]
        got = Counter((ours.loadCats(a["category_id"])[0]["name"], a["iscrowd"], _digest(ours.annToMask(a)))
                      for a in anns)
        assert got == want, img["file_name"]
        crowds += sum(a["iscrowd"] for a in anns)
    assert crowds == 10  # coco128's crowd RLEs are kept as crowd


def test_panoptic_comes_back_with_the_same_segments_categories_and_crowds(exported: Path) -> None:
    original = json.loads(PANOPTIC.read_text())
    ours = json.loads((exported / "panoptic" / "panoptic.json").read_text())
    names = {c["id"]: c["name"] for c in original["categories"]}
    used = {s["category_id"] for a in original["annotations"] for s in a["segments_info"]}
    assert {(c["name"], c["isthing"]) for c in ours["categories"]} == {
        (c["name"], c["isthing"]) for c in original["categories"] if c["id"] in used}
    our_names = {c["id"]: c["name"] for c in ours["categories"]}
    instances = json.loads((exported / "instances.json").read_text())
    file_of = {img["id"]: img["original_name"] for img in instances["images"]}
    ours_by_file = {file_of[a["image_id"]]: a for a in ours["annotations"]}
    file_names = {img["id"]: img["file_name"] for img in original["images"]}
    assert len(ours_by_file) == len(original["annotations"]) == 100
    for entry in original["annotations"]:
        ids = _ids(PANOPTIC_DIR / entry["file_name"])
        want = Counter((names[s["category_id"]], s.get("iscrowd", 0), _digest(ids == s["id"]))
                       for s in entry["segments_info"])
        mine = ours_by_file[file_names[entry["image_id"]]]
        our_ids = _ids(exported / "panoptic" / "panoptic" / mine["file_name"])
        got = Counter((our_names[s["category_id"]], s["iscrowd"], _digest(our_ids == s["id"]))
                      for s in mine["segments_info"])
        assert got == want, entry["file_name"]
        assert np.array_equal(our_ids == 0, ids == 0)  # void stays void


@pytest.mark.parametrize("space", ["instances", "panoptic"])
def test_each_panoptic_export_scores_pq_1_against_itself(exported: Path, space: str) -> None:
    """panopticapi's pq_compute, restated (tests/resi_core/test_metrics_crosscheck.py), with its format
    checks: every PNG id is in segments_info and back, areas match, categories are known."""
    data = json.loads((exported / "panoptic" / f"{space}.json").read_text())
    categories = {c["id"]: c for c in data["categories"]}
    images = {img["id"] for img in data["images"]}
    totals: dict[int, list[float]] = {}
    for entry in data["annotations"]:
        assert entry["image_id"] in images
        ids = _ids(exported / "panoptic" / space / entry["file_name"])
        segments = {s["id"]: s for s in entry["segments_info"]}
        labels, areas = np.unique(ids, return_counts=True)
        assert set(labels.tolist()) - {0} == set(segments)
        for label, area in zip(labels.tolist(), areas.tolist(), strict=True):
            if label:
                assert segments[label]["area"] == area and segments[label]["category_id"] in categories
        stuff = [s["category_id"] for s in segments.values() if not categories[s["category_id"]]["isthing"]
                 and not s["iscrowd"]]
        assert len(stuff) == len(set(stuff))  # one segment per stuff class per image
        for cat, stats in reference_pq(ids, segments, ids, segments).items():
            totals[cat] = [a + b for a, b in zip(totals.get(cat, [0.0, 0, 0, 0]), stats, strict=True)]
    pq = {c: iou / (tp + fp / 2 + fn / 2) for c, (iou, tp, fp, fn) in totals.items() if tp + fp + fn}
    assert pq and all(v == pytest.approx(1.0, abs=1e-12) for v in pq.values())
    source = json.loads((INSTANCES if space == "instances" else PANOPTIC).read_text())
    labeled = {a["image_id"] for a in source["annotations"] if a.get("segments_info", True)}
    assert len(data["annotations"]) == len(labeled)  # every image with a segment of the space: none dropped

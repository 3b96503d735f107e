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
    # Image 1's person and car (20x20 each) share a 10x10 square in street: no image is left out, the
    # tie in size goes to the later mask (car), and the 100 pixels the person gave up are reported.
    assert [(g.label_space, g.image_id, g.segment_id, g.pixels, g.whole) for g in summary.given_up] == [
        ("street", ids[1], "a", 100, False)]
    assert summary.overlaps() == {"street": (100, 1, 1)}
    report = json.loads((tmp_path / "out" / "panoptic" / "overlaps.json").read_text())
    assert report["policy"] == "smaller" and report["given_up"][0]["class_name"] == "person"
    street = json.loads(summary.panoptic["street"].read_text())
    assert [a["image_id"] for a in street["annotations"]] == ids
    for ann, areas in zip(street["annotations"], ({400, 100}, {300, 400}), strict=True):
        png = np.asarray(PILImage.open(summary.panoptic["street"].parent / "street" / ann["file_name"]))
        png = png.astype(np.int64)
        seg_ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        assert {int(v) for v in np.unique(seg_ids)} == {0} | {i["id"] for i in ann["segments_info"]}
        assert {i["area"] for i in ann["segments_info"]} == areas
        assert all(i["area"] == (seg_ids == i["id"]).sum() for i in ann["segments_info"])


def test_fused_segment_is_in_each_of_its_spaces(sessions: sessionmaker[Session], store: FileStore,
                                                 tmp_path: Path) -> None:
    """ESF fuses "car" of street with a typed "car" into one segment of label space "street+adhoc"."""
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        class_set = repo.set_class_set(s, project.id, ["street"], ["car"])
        model = repo.register_model_version(s, project.id, "v1", "/c", "0" * 64, [])
        image, _ = repo.add_image(s, store, project.id, png_bytes(W, H, 0), "0.png")
        segs = [segment("a", H, W, (0, 0, 20, 20), "car", "street+adhoc"),
                segment("b", H, W, (30, 0, 48, 64), "road", "street", isthing=False)]
        repo.save_proposal(s, image.id, model.id, class_set.id, segs, 1.0)
        repo.accept(s, image.id, 1, "ann")
        assert repo.accepted_label_spaces(s, project.id) == {"adhoc": 1, "street": 1}
        summary = export_coco(s, project.id, tmp_path / "out")
    assert sorted(summary.panoptic) == ["adhoc", "street"]
    instances = json.loads(summary.instances_path.read_text())
    [car] = [c for c in instances["categories"] if c["name"] == "car"]
    assert car["label_spaces"] == ["street", "adhoc"]
    street = json.loads(summary.panoptic["street"].read_text())
    assert {c["name"] for c in street["categories"]} == {"car", "road"}
    assert sorted(i["area"] for i in street["annotations"][0]["segments_info"]) == [400, 18 * 64]
    adhoc = json.loads(summary.panoptic["adhoc"].read_text())
    assert [i["area"] for i in adhoc["annotations"][0]["segments_info"]] == [400]


def test_label_space_names_become_safe_file_names() -> None:
    from formats.names import path_safe

    assert path_safe("street") == "street" and path_safe("my space_2.v1") == "my space_2.v1"
    unsafe = [path_safe(n) for n in ("../up", "a/b", "a\\b", ".hidden")]
    assert all("/" not in p and "\\" not in p and not p.startswith(".") for p in unsafe)
    assert len(set(unsafe)) == 4 and path_safe("a/b") != path_safe("a_b")


def test_export_writes_images_rotated_as_their_masks(sessions: sessionmaker[Session], store: FileStore,
                                                     tmp_path: Path) -> None:
    """A JPEG with EXIF orientation 6 (rotate 90°) is labeled in its rotated frame; the export writes
    that frame (as PNG), so the masks fit the exported picture."""
    data = png_bytes(W, H, 3, exif_orientation=6)  # stored 64 wide x 48 high, shown 48 wide x 64 high
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        class_set = repo.set_class_set(s, project.id, ["street"])
        model = repo.register_model_version(s, project.id, "v1", "/c", "0" * 64, [])
        image, _ = repo.add_image(s, store, project.id, data, "photo.jpg")
        assert (image.width, image.height) == (H, W)
        repo.save_proposal(s, image.id, model.id, class_set.id, [segment("a", W, H, (0, 0, 10, 10))], 1.0)
        repo.accept(s, image.id, 1, "ann")
        plain, _ = repo.add_image(s, store, project.id, png_bytes(W, H, 4), "plain.png")
        repo.save_proposal(s, plain.id, model.id, class_set.id, [segment("b", H, W, (0, 0, 10, 10))], 1.0)
        repo.accept(s, plain.id, 1, "ann")
        summary = export_coco(s, project.id, tmp_path / "out", store)
    coco = COCO(str(summary.instances_path))
    rotated, kept = coco.loadImgs([image.id])[0], coco.loadImgs([plain.id])[0]
    assert rotated["file_name"] == f"{image.id}-photo.png" and kept["file_name"] == f"{plain.id}-plain.png"
    picture = PILImage.open(tmp_path / "out" / "images" / rotated["file_name"])
    assert picture.format == "PNG" and picture.size == (rotated["width"], rotated["height"]) == (H, W)
    assert (tmp_path / "out" / "images" / kept["file_name"]).read_bytes() == store.read(plain.sha256)


def test_image_file_names_keep_their_extension_and_script() -> None:
    from storage.export import image_file_name
    from storage.repo import AcceptedImage

    def name(original: str, orientation: int = 1) -> str:
        return image_file_name(AcceptedImage(7, "0" * 64, original, 4, 3, [], orientation))

    assert name("IMG (1).jpg") == "7-IMG (1).jpg"
    assert name("Straße.JPEG") == "7-Straße.JPEG" and name("照片.png") == "7-照片.png"
    assert name("../../etc/passwd") == "7-passwd" and name("a\\\\b:c.png") == "7-b_c.png"
    assert name(".hidden.png") == "7-hidden.png" and name("photo.jpg", orientation=6) == "7-photo.png"
    assert name("no extension") == "7-no extension" and name("") == "7-image"


def test_panoptic_merges_stuff_per_class_and_keeps_thing_and_stuff_of_one_name_apart(
        sessions: sessionmaker[Session], store: FileStore, tmp_path: Path) -> None:
    """Two road bands are one road segment (a merged prediction then scores 1.0, not 0.0); a typed `sky`
    (a thing) and street's `sky` (stuff) are two categories, each with its own isthing."""
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        class_set = repo.set_class_set(s, project.id, ["street"], ["sky"])
        model = repo.register_model_version(s, project.id, "v1", "/c", "0" * 64, [])
        image, _ = repo.add_image(s, store, project.id, png_bytes(W, H, 0), "0.png")
        segs = [segment("r1", H, W, (30, 0, 36, 64), "road", "street", isthing=False),
                segment("r2", H, W, (40, 0, 46, 64), "road", "street", isthing=False),
                segment("s1", H, W, (0, 0, 10, 64), "sky", "street", isthing=False),
                segment("s2", H, W, (0, 0, 5, 5), "sky", "adhoc", isthing=True)]
        repo.save_proposal(s, image.id, model.id, class_set.id, segs, 1.0)
        repo.accept(s, image.id, 1, "ann")
        summary = export_coco(s, project.id, tmp_path / "out")
    cats = json.loads(summary.instances_path.read_text())["categories"]
    assert sorted((c["name"], c["isthing"], c["label_spaces"]) for c in cats) == [
        ("road", 0, ["street"]), ("sky", 0, ["street"]), ("sky", 1, ["adhoc"])]
    street = json.loads(summary.panoptic["street"].read_text())
    assert {c["name"]: c["isthing"] for c in street["categories"]} == {"road": 0, "sky": 0}
    infos = street["annotations"][0]["segments_info"]
    names = {c["id"]: c["name"] for c in street["categories"]}
    assert sorted((names[i["category_id"]], i["area"]) for i in infos) == [("road", 2 * 6 * 64), ("sky", 10 * 64)]
    adhoc = json.loads(summary.panoptic["adhoc"].read_text())
    assert [(c["name"], c["isthing"]) for c in adhoc["categories"]] == [("sky", 1)]
    assert summary.given_up == []  # the sky thing and the sky stuff are in different spaces

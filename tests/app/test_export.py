"""COCO export from the project page: the zip holds instances.json (read back with pycocotools) and one
panoptic set per label space; an image whose segments overlap within a space is left out of that set."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from app.class_sets.handlers import save_class_set
from app.context import UserState, class_options, file_slug, find_option, load_context
from app.labeling.accept import accept
from app.labeling.edits import add_segment
from app.labeling.images import ImageView, load_image
from app.projects.export import ExportResult, export_coco
from app.projects.handlers import create_project, open_project
from app.projects.upload import upload_images
from app.services import Services, UserError
from tests.app.conftest import write_image


def brush(shape: tuple[int, int], rows: slice, cols: slice) -> dict:
    layer = np.zeros((*shape, 4), dtype=np.uint8)
    layer[rows, cols] = (255, 0, 255, 255)
    return {"background": None, "layers": [layer], "composite": None}


def draw(svc: Services, state: UserState, parts: list[tuple[str, slice, slice]]) -> UserState:
    """Draw one segment per (class label, rows, cols) by hand, then accept the image."""
    state, view = load_image(svc, state)
    options = class_options(svc, load_context(svc, state))
    for label, rows, cols in parts:
        result = add_segment(svc, state, "ann", brush(view.image.shape[:2], rows, cols), find_option(options, label))
        assert result.ok
        state = result.state
    assert accept(svc, state, "ann").ok
    return state


@pytest.fixture
def exported(svc: Services, tmp_path: Path) -> tuple[ExportResult, dict[int, ImageView]]:
    state = create_project(svc, "Städte & Leute")
    report = upload_images(svc, state, [write_image(tmp_path / "a.png"),
                                          write_image(tmp_path / "b.png", color=(10, 200, 10)),
                                          write_image(tmp_path / "c.png", color=(10, 10, 200))])
    save_class_set(svc, state, ["street"], "face", [])
    a, b = report.first_image_id, report.first_image_id + 1
    # a: a face drawn on a person (two label spaces, so both panoptic sets keep it) and a car.
    draw(svc, replace(state, image_id=a), [("person [street]", slice(0, 40), slice(0, 30)),
                                           ("face [adhoc]", slice(2, 12), slice(5, 15)),
                                           ("car [street]", slice(0, 20), slice(40, 60))])
    # b: person and road overlap inside the street space, so b cannot be in the street panoptic set.
    draw(svc, replace(state, image_id=b), [("person [street]", slice(0, 40), slice(0, 30)),
                                           ("road [street]", slice(30, 48), slice(0, 64)),
                                           ("face [adhoc]", slice(2, 12), slice(5, 15))])
    views = {i: load_image(svc, replace(state, image_id=i))[1] for i in (a, b)}
    return export_coco(svc, state), views


def test_export_zip_instances_match_the_saved_masks(svc: Services, exported, tmp_path: Path) -> None:
    result, views = exported
    assert result.path.name == "Stadte-Leute-coco.zip" and result.path.parent.parent == svc.config.export_dir
    assert [p.name for p in result.path.parent.iterdir()] == [result.path.name]  # the unzipped files are gone
    assert (result.n_images, result.n_annotations, result.not_accepted) == (2, 6, 1)
    assert result.skipped == {"street": ["b.png"]}
    assert "Left out of panoptic street" in result.message and "b.png" in result.message
    assert "1 image(s) not accepted yet" in result.message

    with zipfile.ZipFile(result.path) as archive:
        archive.extractall(tmp_path / "out")
    coco = COCO(str(tmp_path / "out" / "instances.json"))
    assert sorted(coco.getImgIds()) == sorted(views)
    names = {c["name"]: c for c in coco.loadCats(coco.getCatIds())}
    assert set(names) == {"person", "face", "car", "road"} and names["road"]["isthing"] == 0
    for image_id, view in views.items():
        img = coco.loadImgs(image_id)[0]
        assert (img["height"], img["width"]) == view.image.shape[:2] and img["original_name"] == view.name
        # The image file is in the zip under its file_name, and decodes to the pixels that were labeled.
        pixels = np.asarray(Image.open(tmp_path / "out" / "images" / img["file_name"]).convert("RGB"))
        assert img["file_name"] == f"{image_id}-{view.name}" and np.array_equal(pixels, view.image)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(view.segments) == 3
        by_key = {(s.class_name, s.label_space): s for s in view.segments}
        for ann in anns:
            seg = by_key.pop((coco.loadCats(ann["category_id"])[0]["name"], ann["label_space"]))
            mask = coco.annToMask(ann).astype(bool)
            assert np.array_equal(mask, seg.mask) and ann["area"] == seg.mask.sum()
        assert not by_key
    face, person = (next(s for s in views[min(views)].segments if s.class_name == n) for n in ("face", "person"))
    assert (face.mask & person.mask).any()  # overlaps across label spaces are kept in instances


def test_export_panoptic_png_ids_decode_to_segments_info(exported, tmp_path: Path) -> None:
    result, views = exported
    a, b = sorted(views)
    archive = zipfile.ZipFile(result.path)
    assert set(result.panoptic_spaces) == {"street", "adhoc"}
    expected_images = {"street": {a}, "adhoc": {a, b}}
    for space in result.panoptic_spaces:
        data = json.loads(archive.read(f"panoptic/{space}.json"))
        assert {i["id"] for i in data["images"]} == expected_images[space]
        categories = {c["id"]: c["name"] for c in data["categories"]}
        for ann in data["annotations"]:
            png = np.asarray(Image.open(io.BytesIO(archive.read(f"panoptic/{space}/{ann['file_name']}"))), np.uint32)
            ids = png[..., 0] + 256 * png[..., 1] + 256 * 256 * png[..., 2]
            infos = ann["segments_info"]
            assert set(np.unique(ids)) - {0} == {i["id"] for i in infos}
            saved = {s.class_name: s.mask for s in views[ann["image_id"]].segments if s.label_space == space}
            assert len(infos) == len(saved)
            for info in infos:
                mask = ids == info["id"]
                assert np.array_equal(mask, saved[categories[info["category_id"]]]) and info["area"] == mask.sum()


def test_export_needs_an_accepted_image_and_never_overwrites(svc: Services, exported) -> None:
    result, views = exported
    state = UserState(project_id=open_project(svc, "Städte & Leute").project_id)
    again = export_coco(svc, state)
    assert again.path != result.path and result.path.exists() and again.path.exists()
    empty = create_project(svc, "empty")
    with pytest.raises(UserError, match="accept at least one image"):
        export_coco(svc, empty)
    assert file_slug("猫", "project-9") == "project-9"

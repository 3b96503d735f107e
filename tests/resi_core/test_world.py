"""The generated world: determinism, annotation policies, cross-space overlaps, colors, COCO export."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from resi_core.labels import LabelError
from resi_core.world import (
    BENCHMARKS,
    DATASETS,
    MIN_SEGMENT_AREA,
    benchmark_mix,
    generate,
    make_sample,
    prepare_out_dir,
    source_spaces,
    write_world,
)
from resi_core.world.export import ExportError

SIZE = 96


@cache
def samples(name: str, n: int = 24, split: str = "val") -> tuple:
    return tuple(generate(name, split, n, seed=3, size=SIZE))


def union(masks, shape=(SIZE, SIZE)) -> np.ndarray:
    out = np.zeros(shape, bool)
    for m in masks:
        out |= m
    return out


def masks_of(sample, space: str, *classes: str) -> list[np.ndarray]:
    return [s.mask for s in sample.segments[space] if s.class_name in classes]


# Label spaces --------------------------------------------------------------------------------
def test_label_spaces_and_mixes():
    spaces = source_spaces()
    assert spaces["street"].class_names == ["person", "car", "truck", "road", "sky"]
    assert [c.isthing for c in spaces["drive"].classes] == [True, True, False, False]
    m2 = benchmark_mix("M2")
    fused = m2.classes[m2.class_of("drive", "pedestrian")]
    assert fused is m2.classes[m2.class_of("street", "person")]
    assert set(fused.label_spaces) == {"street", "drive"}
    # road is one class of both spaces; car and vehicle stay apart (granularity, not synonyms).
    assert m2.class_of("street", "road") == m2.class_of("drive", "road")
    assert m2.class_of("street", "car") != m2.class_of("drive", "vehicle")
    assert len(benchmark_mix("M4").classes) == 2 + 4 + 2
    with pytest.raises(LabelError):
        benchmark_mix("M9")
    # M5: avenue shares street's class names, and none of them is street's class.
    assert spaces["avenue"].class_names == spaces["street"].class_names
    m5 = benchmark_mix("M5")
    assert len(m5.classes) == 10
    for name in spaces["street"].class_names:
        street, avenue = m5.classes[m5.class_of("street", name)], m5.classes[m5.class_of("avenue", name)]
        assert street is not avenue
        assert (street.name, avenue.name) == (f"{name} (street)", f"{name} (avenue)")
        assert (street.label_spaces, avenue.label_spaces) == (("street",), ("avenue",))


def test_every_dataset_and_benchmark_has_its_own_seed_code():
    from resi_core.world.dataset import _NAME_CODES

    assert set(_NAME_CODES) == set(DATASETS) | set(BENCHMARKS)
    assert len(set(_NAME_CODES.values())) == len(_NAME_CODES)


# Determinism ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["street", "M4"])
def test_first_n_images_do_not_depend_on_n(name):
    short = list(generate(name, "train", 3, seed=5, size=64))
    long = list(generate(name, "train", 7, seed=5, size=64))
    for a, b in zip(short, long, strict=False):
        assert a.image_id == b.image_id
        np.testing.assert_array_equal(a.image, b.image)
        for space in a.segments:
            assert [s.class_name for s in a.segments[space]] == [s.class_name for s in b.segments[space]]
            for sa, sb in zip(a.segments[space], b.segments[space], strict=True):
                np.testing.assert_array_equal(sa.mask, sb.mask)
    np.testing.assert_array_equal(make_sample(name, "train", 6, seed=5, size=64).image, long[6].image)


def test_seed_split_and_name_change_the_images():
    base = make_sample("street", "train", 0, seed=0, size=64).image
    for other in (make_sample("street", "train", 0, seed=1, size=64), make_sample("street", "val", 0, seed=0, size=64),
                  make_sample("drive", "train", 0, seed=0, size=64)):
        assert not np.array_equal(base, other.image)


def test_bad_requests_raise_label_errors():
    with pytest.raises(LabelError):
        next(generate("nowhere", "train", 1))
    with pytest.raises(LabelError):
        next(generate("street", "train", 0))
    with pytest.raises(LabelError):
        make_sample("street", "dev", 0)
    with pytest.raises(LabelError, match="scene kinds"):
        generate("street", "train", 1, domains=["street", "mall"])  # raised at once, before any image
    with pytest.raises(LabelError, match="source dataset"):
        generate("M1", "val", 1, domains=["street"])


def test_scene_kinds_cycle_and_keep_the_dataset_policy():
    # Street's label space on portrait close-ups: the person is annotated whole, no face or hair class.
    kinds = ["street", "portrait", "portrait"]
    drawn = list(generate("street", "train", 6, size=64, domains=kinds))
    assert [s.domain for s in drawn] == kinds * 2
    assert set(drawn[1].segments) == {"street"}
    assert {seg.class_name for s in drawn for seg in s.segments["street"]} <= set(source_spaces()["street"].class_names)
    close_up = max(seg.mask.sum() for s in drawn[1:3] for seg in s.segments["street"] if seg.class_name == "person")
    assert close_up > 64 * 64 / 10  # a portrait person covers far more than any street person could
    # Portrait's policy on street scenes: faces only from the tiny street people, hair and face classes only.
    faces = [seg for s in generate("portrait", "train", 4, size=64, domains=["street"]) for seg in s.segments["portrait"]]
    assert {seg.class_name for seg in faces} <= {"face", "hair"}
    # Without domains, a dataset keeps drawing its own scene kind.
    assert {s.domain for s in generate("portrait", "train", 3, size=64)} == {"portrait"}


# Ground truth invariants -------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATASETS + tuple(BENCHMARKS))
def test_no_overlap_within_a_space_and_tiny_segments_dropped(name):
    spaces = source_spaces()
    for sample in samples(name):
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
        for space, segments in sample.segments.items():
            coverage = np.zeros((SIZE, SIZE), np.int32)
            for seg in segments:
                assert seg.mask.dtype == bool and seg.mask.shape == (SIZE, SIZE)
                assert seg.mask.sum() >= MIN_SEGMENT_AREA
                assert seg.class_name in spaces[space].class_names
                coverage += seg.mask
            assert coverage.max() <= 1, f"{name}/{space}: masks overlap"
            if space in sample.void:
                assert not (sample.void[space] & (coverage > 0)).any()
            stuff = [s.class_name for s in segments if not spaces[space].classes[spaces[space].index(s.class_name)].isthing]
            assert len(stuff) == len(set(stuff)), "one segment per stuff class"


def test_every_class_of_a_benchmark_appears():
    for name in BENCHMARKS:
        seen = {(space, s.class_name) for sample in samples(name) for space, segs in sample.segments.items() for s in segs}
        expected = {(space, c) for space in BENCHMARKS[name] for c in source_spaces()[space].class_names}
        assert seen == expected, f"{name} misses {expected - seen}"


def test_faces_and_hair_lie_inside_street_persons():
    faces = 0
    for sample in samples("M1"):
        person = union(masks_of(sample, "street", "person"))
        for face in masks_of(sample, "portrait", "face", "hair"):
            faces += 1
            assert (face & person).sum() >= 0.9 * face.sum()
        assert not (union(masks_of(sample, "portrait", "face")) & union(masks_of(sample, "street", "car"))).any()
    assert faces >= 10
    # The spaces disagree on purpose: a person is more than its face and hair.
    assert any(union(masks_of(s, "street", "person")).sum() > union(masks_of(s, "portrait", "face", "hair")).sum()
               for s in samples("M1"))


def test_wheels_and_windows_lie_inside_vehicles():
    parts = 0
    for sample in samples("M3"):
        vehicles = union(masks_of(sample, "street", "car", "truck"))
        for part in masks_of(sample, "parts", "wheel", "window"):
            parts += 1
            assert (part & ~vehicles).sum() == 0
    assert parts >= 20


def test_drive_relabels_street_with_synonyms_and_coarser_classes():
    for sample in samples("M2"):
        street_people = {m.tobytes() for m in masks_of(sample, "street", "person")}
        pedestrians = {m.tobytes() for m in masks_of(sample, "drive", "pedestrian")}
        assert street_people == pedestrians
        np.testing.assert_array_equal(union(masks_of(sample, "drive", "vehicle")),
                                      union(masks_of(sample, "street", "car", "truck")))
        np.testing.assert_array_equal(union(masks_of(sample, "drive", "road")), union(masks_of(sample, "street", "road")))


def test_vegetation_is_trees_and_grass_and_drive_has_no_sky():
    checked = 0
    for sample in samples("drive"):
        green = union(o.mask for o in sample.scene.objects if o.kind in ("tree", "grass"))
        sky = union(o.mask for o in sample.scene.objects if o.kind == "sky")
        labeled = union(s.mask for s in sample.segments["drive"])
        assert not (labeled & sky).any()
        vegetation = masks_of(sample, "drive", "vegetation")
        if vegetation:
            checked += 1
            np.testing.assert_array_equal(vegetation[0], green)
    assert checked >= 20


def test_portrait_labels_only_faces_and_hair():
    for sample in samples("portrait"):
        people = union(o.mask for o in sample.scene.objects if o.kind == "person")
        assert {s.class_name for s in sample.segments["portrait"]} <= {"face", "hair"}
        assert not (union(s.mask for s in sample.segments["portrait"]) & ~people).any()
    # Close-ups: faces are large, unlike in the wide street scenes.
    def mean_face(name):
        areas = [m.sum() for s in samples(name) for o in s.scene.objects if o.kind == "person"
                 for p in o.parts if p.kind == "face" for m in [p.mask]]
        return np.mean(areas)
    assert mean_face("portrait") > 5 * mean_face("street")


def test_occlusion_hides_parts_of_hidden_objects():
    """Visible part masks lie inside their object's visible mask, which no later object covers."""
    for sample in samples("street") + samples("parts"):
        painted = np.zeros((SIZE, SIZE), np.int32)
        for obj in sample.scene.objects:
            painted += obj.mask
            for part in obj.parts:
                assert (part.mask & ~obj.mask).sum() == 0
        assert painted.max() == 1


def test_lane_marks_are_the_pixels_painted_in_the_dashes_color():
    """Canvas.second_stripes finds exactly the pixels a stripes fill colors with its second color (checked
    on the rendered colors without noise), so painting them again as a part leaves the image unchanged."""
    from resi_core.world.render import Canvas, Fill

    cv = Canvas(16, 64)
    road = cv.add_object("road")
    dashes = Fill((10.0, 10.0, 10.0), (250.0, 250.0, 250.0), "stripes", 0.0, 7.3, (8.0, 2.6))
    band = cv.rect(7.4, 8.6, 0, 64)
    cv.paint(road, band, dashes)
    before = cv.colors(np.zeros((16, 64), np.float32), np.ones((16, 64), np.float32), (1.0, 1.0, 1.0))
    cv.paint(road, cv.second_stripes(band, dashes), dashes, cv.add_part(road, "lane mark"))
    after = cv.colors(np.zeros((16, 64), np.float32), np.ones((16, 64), np.float32), (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(before, after)
    mark = cv.finish("street", np.zeros((16, 64, 3), np.uint8)).objects[0].parts[0]
    assert mark.kind == "lane mark"
    np.testing.assert_array_equal(mark.mask, before[0] > 128)
    (y0, y1, _, _), _ = band
    assert 0.3 < mark.mask.sum() / ((y1 - y0) * 64) < 0.7  # dashes and gaps of about equal length


def test_avenue_is_street_scenes_with_other_extents():
    """M5: both spaces label one street scene; avenue's person, car, truck and road are street's minus hair and
    hat, wheels and windows, lane marks; its sky is street's. Every M5 and avenue image is a street scene."""
    shrunk = {"person": 0, "car": 0, "truck": 0, "road": 0}
    for sample in samples("M5") + samples("avenue"):
        assert sample.domain == "street"
    for sample in samples("M5"):
        for kind, cut in (("person", ("hair", "hat")), ("car", ("wheel", "window")), ("truck", ("wheel", "window")),
                          ("road", ("lane mark",))):
            for obj in (o for o in sample.scene.objects if o.kind == kind):
                body = obj.mask & ~union(p.mask for p in obj.parts if p.kind in cut)
                street = [m for m in masks_of(sample, "street", kind) if (m & obj.mask).any()]
                avenue = [m for m in masks_of(sample, "avenue", kind) if (m & obj.mask).any()]
                if kind == "road":
                    np.testing.assert_array_equal(street[0] & obj.mask, obj.mask)
                    np.testing.assert_array_equal(avenue[0] & obj.mask, body)
                elif street:  # not dropped as tiny
                    np.testing.assert_array_equal(street[0], obj.mask)
                    if body.sum() >= MIN_SEGMENT_AREA:
                        np.testing.assert_array_equal(avenue[0], body)
                shrunk[kind] += int(body.sum() < obj.mask.sum())
        np.testing.assert_array_equal(union(masks_of(sample, "avenue", "sky")), union(masks_of(sample, "street", "sky")))
    assert min(shrunk.values()) >= 5, shrunk


# Colors do not give classes away ---------------------------------------------------------------
def test_thing_colors_vary_and_overlap_across_classes():
    pixels: dict[str, list[np.ndarray]] = {"person": [], "car": [], "truck": []}
    means: dict[str, list[np.ndarray]] = {k: [] for k in pixels}
    for sample in samples("street", 60, "train"):
        for seg in sample.segments["street"]:
            if seg.class_name in pixels:
                colors = sample.image[seg.mask].astype(np.float32)
                pixels[seg.class_name].append(colors)
                means[seg.class_name].append(colors.mean(0))
    for name, m in means.items():
        # Palettes span (almost) all hues and brightness: a class's mean color spreads widely.
        assert np.std(np.array(m), axis=0).mean() > 25, name
    # A per-pixel color classifier (histogram Bayes, fit on half the instances) stays near chance.
    bins = 8
    fit, test = {}, {}
    for name, chunks in pixels.items():
        q = [(c // (256 // bins)).astype(np.int64) @ np.array([bins * bins, bins, 1]) for c in chunks]
        fit[name] = np.bincount(np.concatenate(q[::2]), minlength=bins**3) + 1.0
        fit[name] /= fit[name].sum()
        test[name] = np.concatenate(q[1::2])
    names = list(pixels)
    recalls = []
    for k, name in enumerate(names):
        scores = np.stack([fit[other][test[name]] for other in names])
        recalls.append(np.mean(scores.argmax(0) == k))
    assert np.mean(recalls) < 0.6, f"colors separate the classes: balanced accuracy {np.mean(recalls):.2f}"


# Export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["street", "M2", "M4", "M5"])
def test_export_loads_in_pycocotools_and_matches_samples(tmp_path, name):
    data = list(generate(name, "val", 6, seed=1, size=64))
    prepare_out_dir(tmp_path, overwrite=False)
    write_world(data, name, tmp_path, split="val", seed=1)
    coco = COCO(str(tmp_path / "instances.json"))
    raw = json.loads((tmp_path / "instances.json").read_text())
    assert [s["name"] for s in raw["info"]["label_spaces"]] == list(data[0].segments)
    names = {c["id"]: c["name"] for c in raw["categories"]}
    if name == "M2":
        fused = [c for c in raw["categories"] if c["name"] == "person"]
        assert len(fused) == 1 and fused[0]["synonyms"] == ["pedestrian"]
        assert fused[0]["label_spaces"] == ["street", "drive"]
        assert "pedestrian" not in names.values()
    if name == "M5":  # same names, other classes: one category each, of its own label space
        assert raw["info"]["distinct"] == ["avenue"]
        cars = {c["name"]: c["label_spaces"] for c in raw["categories"] if c["name"].startswith("car")}
        assert cars == {"car (street)": ["street"], "car (avenue)": ["avenue"]}
    for sample in data:
        info = coco.imgs[sample.image_id]
        assert (info["height"], info["width"]) == (64, 64)
        png = np.asarray(Image.open(tmp_path / "images" / info["file_name"]))
        np.testing.assert_array_equal(png, sample.image)
        anns = coco.imgToAnns[sample.image_id]
        decoded = {(names[a["category_id"]], coco.annToMask(a).astype(bool).tobytes()) for a in anns}
        expected = set()
        for space, segments in sample.segments.items():
            for seg in segments:
                mixed = benchmark_mix(name).classes[benchmark_mix(name).class_of(space, seg.class_name)].name \
                    if name in BENCHMARKS else seg.class_name
                expected.add((mixed, seg.mask.tobytes()))
        assert decoded == expected
        assert len(anns) == len(expected), "an object labeled identically twice must appear once"
        for a in anns:
            assert a["area"] == coco.annToMask(a).sum() and len(a["bbox"]) == 4
            assert isinstance(a["segmentation"]["counts"], str)
        for space, void in sample.void.items():
            from pycocotools import mask as mask_util
            np.testing.assert_array_equal(mask_util.decode(info["void"][space]).astype(bool), void)
    for space in data[0].segments:
        _check_panoptic(tmp_path, space, data)


def _check_panoptic(root, space, data):
    pan = json.loads((root / f"panoptic_{space}.json").read_text())
    categories = {c["id"]: c for c in pan["categories"]}
    assert all(space in c["label_spaces"] for c in categories.values())
    for ann, sample in zip(pan["annotations"], data, strict=True):
        rgb = np.asarray(Image.open(root / f"panoptic_{space}" / ann["file_name"])).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        assert set(np.unique(ids)) - {0} == {s["id"] for s in ann["segments_info"]}
        for seg_info, seg in zip(ann["segments_info"], sample.segments[space], strict=True):
            assert (ids == seg_info["id"]).sum() == seg_info["area"]
            np.testing.assert_array_equal(ids == seg_info["id"], seg.mask)
            assert seg_info["category_id"] in categories


def test_out_dir_must_be_empty_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError):
        prepare_out_dir(tmp_path, overwrite=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "old.png").write_bytes(b"x")
    prepare_out_dir(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").exists() and not (tmp_path / "images").exists()

"""COCO training data: label space from the file, masks, augmentation and mixed batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from resi_core.data import CocoDataset, DatasetError, MixedSampler, TrainSample, augment, collate, erase

# name -> [(class name, isthing)]
TINY_SPACES = {
    "street": [("person", True), ("car", True), ("road", False)],
    "portrait": [("face", True), ("hair", True)],
}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def write_tiny_coco(folder: Path, space: str, n_images: int = 3, size: tuple[int, int] = (48, 64), seed: int = 0):
    """A COCO dataset of label space `space`: one colored rectangle per class, one empty image."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    classes = TINY_SPACES[space]
    categories = [
        {"id": 10 + i, "name": n, "isthing": int(t), "label_spaces": [space]} for i, (n, t) in enumerate(classes)
    ]
    images, annotations = [], []
    height, width = size
    for i in range(n_images):
        image = np.full((height, width, 3), 30, dtype=np.uint8)
        if i < n_images - 1:  # the last image has no annotation at all
            for c, cat in enumerate(categories):
                top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
                mask = np.zeros((height, width), dtype=bool)
                mask[top : top + height // 3, left + c * 3 : left + c * 3 + width // 4] = True
                for prior in annotations:  # masks within a label space never overlap
                    if prior["image_id"] == i + 1:
                        mask &= ~mask_utils.decode(prior["segmentation"]).astype(bool)
                image[mask] = (60 * (c + 1)) % 256
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": cat["id"],
                        "segmentation": _rle(mask),
                        "area": int(mask.sum()),
                        "bbox": [0, 0, 1, 1],
                        "iscrowd": 0,
                    }
                )
        name = f"{i:04d}.png"
        Image.fromarray(image).save(folder / "images" / name)
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
    info = {"label_spaces": [{"name": space, "classes": [{"name": n, "isthing": t} for n, t in classes]}]}
    data = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(data))
    return folder


def test_dataset_reads_space_masks_and_empty_images(tmp_path):
    folder = write_tiny_coco(tmp_path / "street", "street", n_images=3)
    ds = CocoDataset("street", folder / "images", folder / "instances.json")
    assert ds.label_space.class_names == ["person", "car", "road"]
    assert len(ds) == 3
    sample = ds[0]
    assert sample.image.shape == (48, 64, 3) and sample.image.dtype == np.uint8
    assert sample.masks.shape == (3, 48, 64) and sample.masks.dtype == bool
    assert sorted(sample.labels.tolist()) == [0, 1, 2]
    assert (sample.masks.sum(0) <= 1).all()
    empty = ds[2]
    assert empty.masks.shape == (0, 48, 64) and empty.labels.shape == (0,)


def test_missing_instances_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no instances file"):
        CocoDataset("street", tmp_path, tmp_path / "missing.json")


def test_augment_and_collate_shapes(tmp_path):
    folder = write_tiny_coco(tmp_path / "street", "street")
    ds = CocoDataset("street", folder / "images", folder / "instances.json")
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = augment(ds[0], 32, rng)
        assert out.image.shape[0] <= 32 and out.image.shape[1] <= 32
        assert out.masks.shape[1:] == out.image.shape[:2] and len(out.masks) == len(out.labels)
        assert all(m.any() for m in out.masks)  # masks cropped away are dropped
    batch = collate([augment(ds[i], 32, rng) for i in range(3)], 32)
    assert batch.pixel_values.shape == (3, 3, 32, 32)
    assert [t.masks.shape[1:] for t in batch.targets] == [(32, 32)] * 3


def test_mixed_sampler_mixes_label_spaces(tmp_path):
    datasets = [
        CocoDataset(name, tmp_path / name / "images", tmp_path / name / "instances.json")
        for name in ("street", "portrait")
        if write_tiny_coco(tmp_path / name, name)
    ]
    sampler = MixedSampler(datasets, size=32, seed=0)
    spaces = [s for _ in range(6) for s in sampler.batch(4).spaces]
    assert set(spaces) == {"street", "portrait"}
    assert [s.name for s in sampler.label_spaces] == ["street", "portrait"]


def test_erase_is_an_occluder_that_leaves_every_mask():
    rng = np.random.default_rng(3)
    image = np.full((40, 60, 3), 7, dtype=np.uint8)
    masks = np.zeros((2, 40, 60), dtype=bool)
    masks[0] = True  # a stuff region covering everything
    masks[1, 10:20, 10:20] = True
    for _ in range(20):
        out_image, out_masks = erase(image, masks, rng)
        changed = (out_image != image).any(-1)
        # Where the occluder sits no class remains; elsewhere masks and pixels are untouched.
        box = np.argwhere(changed)
        (y0, x0), (y1, x1) = box.min(0), box.max(0) + 1
        area = (y1 - y0) * (x1 - x0)
        assert 0.03 * 40 * 60 <= area <= 0.5 * 40 * 60 + 60
        assert not out_masks[:, y0:y1, x0:x1].any()
        outside = np.ones((40, 60), dtype=bool)
        outside[y0:y1, x0:x1] = False
        assert (out_masks[:, outside] == masks[:, outside]).all()
    assert masks[0].all() and image.max() == 7  # the inputs are not modified


def test_augment_drops_masks_that_erasing_covers_whole():
    rng = np.random.default_rng(0)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    masks = np.zeros((1, 32, 32), dtype=bool)
    masks[0, 15:17, 15:17] = True  # tiny: often fully covered
    sample = TrainSample(image=image, masks=masks, labels=np.array([0]), space="s")
    kept = [len(augment(sample, 32, rng, scale_range=(1, 1), flip=False, erase_prob=1.0).labels) for _ in range(200)]
    assert 0 < kept.count(0) < 200  # sometimes covered (and dropped with its label), sometimes not


def test_a_category_without_annotations_is_no_class_unless_kept(tmp_path: Path):
    """Car-Parts ships a `_background_` category that no annotation uses: it must not become a class."""
    folder = write_tiny_coco(tmp_path / "street", "street")
    data = json.loads((folder / "instances.json").read_text())
    del data["info"]  # a plain COCO file: the classes come from its categories
    data["categories"].append({"id": 99, "name": "_background_", "isthing": 1, "label_spaces": ["street"]})
    (folder / "instances.json").write_text(json.dumps(data))
    ds = CocoDataset("street", folder / "images", folder / "instances.json")
    assert "_background_" not in ds.label_space.class_names and ds.empty_categories == ["_background_"]
    assert len(ds.label_space.class_names) == len(TINY_SPACES["street"])
    kept = CocoDataset("street", folder / "images", folder / "instances.json", keep_empty=True)
    assert kept.label_space.class_names[-1] == "_background_"

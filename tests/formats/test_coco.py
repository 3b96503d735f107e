"""RLE helpers, panoptic conversion, and one clear FormatError for each way a file can be wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from formats.coco import FormatError, load_ground_truth, load_predictions, read_json, write_json
from formats.panoptic import panoptic_to_instances
from formats.rle import decode_rle, encode_mask, rle_area, rle_bbox

MASK = np.zeros((4, 6), dtype=bool)
MASK[1:3, 2:5] = True  # 2x3 box at x=2, y=1


def gt_dict() -> dict:
    return {
        "images": [{"id": 1, "height": 4, "width": 6, "void": {"default": encode_mask(~MASK)}}],
        "categories": [{"id": 7, "name": "car"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "segmentation": [[2, 1, 5, 1, 5, 3, 2, 3]],
                "iscrowd": 0,
            }
        ],
    }


def pred(**changes) -> dict:
    return {"image_id": 1, "category_id": 7, "segmentation": encode_mask(MASK), "score": 0.5} | changes


def test_rle_roundtrip_area_bbox():
    rle = encode_mask(MASK)
    assert isinstance(rle["counts"], str) and rle["size"] == [4, 6]
    assert np.array_equal(decode_rle(rle), MASK)
    assert rle_area(rle) == 6
    assert rle_bbox(rle) == [2.0, 1.0, 3.0, 2.0]
    json.dumps(rle)  # JSON-ready


def test_load_ground_truth_defaults_and_polygons():
    gt = load_ground_truth(gt_dict())
    cat = gt.categories[7]
    assert cat.isthing and cat.label_spaces == ("default",)
    assert gt.label_spaces == ["default"]
    assert rle_area(gt.annotations[0].rle) > 0
    assert np.array_equal(decode_rle(gt.images[1].void["default"]), ~MASK)


def test_write_and_read_json(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"a": [1, 2]})
    assert read_json(path) == {"a": [1, 2]}
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_panoptic_to_instances(tmp_path):
    ids = np.zeros((4, 6), dtype=np.int64)
    ids[MASK] = 5 + 256 * 3  # R=5, G=3
    ids[0, :] = 9
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    panoptic = {
        "images": [{"id": 3, "height": 4, "width": 6, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "car", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0}],
        "annotations": [
            {
                "image_id": 3,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 5 + 256 * 3, "category_id": 1, "iscrowd": 0},
                    {"id": 9, "category_id": 2, "iscrowd": 1},
                ],
            }
        ],
    }
    gt = load_ground_truth(panoptic_to_instances(panoptic, tmp_path, "coco"))
    assert [rle_area(a.rle) for a in gt.annotations] == [6, 6]
    assert [a.iscrowd for a in gt.annotations] == [False, True]
    assert rle_area(gt.images[3].void["coco"]) == 24 - 12
    assert not gt.categories[2].isthing and gt.categories[2].label_spaces == ("coco",)


def test_valid_predictions_load():
    gt = load_ground_truth(gt_dict())
    preds = load_predictions([pred(), pred(score=1, label_space="default")], gt)
    assert [p.score for p in preds] == [0.5, 1.0]
    assert preds[1].label_space == "default" and preds[0].label_space is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (pred(image_id=99), "image_id 99 is not an image"),
        (pred(category_id=3), "category_id 3 is not a category"),
        (
            pred(segmentation=encode_mask(np.zeros((5, 6), bool))),
            "mask size 5x6 differs from the image size 4x6",
        ),
        (pred(score=float("nan")), "score must be a finite number"),
        (pred(score=float("inf")), "score must be a finite number"),
        (pred(score="high"), "score must be a finite number"),
        ({"image_id": 1, "category_id": 7, "score": 0.5}, "missing key(s) 'segmentation'"),
        (pred(segmentation={"size": [4, 6], "counts": "0"}), "RLE counts cover"),
        (pred(segmentation={"size": [4, 6], "counts": 5}), "counts must be a string"),
        (pred(label_space="drive"), "label_space 'drive' is not one of"),
        ("not an object", "must be a JSON object"),
    ],
)
def test_bad_prediction(entry, message):
    gt = load_ground_truth(gt_dict())
    # The message names the entry: the second one.
    with pytest.raises(FormatError, match=r"^predictions: \[1\]") as err:
        load_predictions([pred(), entry], gt)
    assert message in str(err.value)


def test_empty_predictions():
    gt = load_ground_truth(gt_dict())
    with pytest.raises(FormatError, match="no predictions"):
        load_predictions([], gt)
    assert load_predictions([], gt, allow_empty=True) == []
    with pytest.raises(FormatError, match="must be a JSON list"):
        load_predictions({"annotations": []}, gt)


def test_malformed_json_file(tmp_path):
    path = tmp_path / "pred.json"
    path.write_text('[{"image_id": 1,')
    with pytest.raises(FormatError, match="pred.json is not valid JSON: .* line 1 column"):
        load_predictions(path, load_ground_truth(gt_dict()))
    with pytest.raises(FormatError, match="cannot read"):
        read_json(tmp_path / "missing.json")


def _broken(change) -> dict:
    data = gt_dict()
    change(data)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_broken(lambda d: d.pop("categories")), "missing key(s) 'categories'"),
        (_broken(lambda d: d["images"][0].pop("height")), "images[0] is missing key(s) 'height'"),
        (_broken(lambda d: d["images"].append(dict(d["images"][0]))), "image id 1 appears twice"),
        (_broken(lambda d: d["categories"].append({"id": 7, "name": "x"})), "category id 7 appears twice"),
        (_broken(lambda d: d["annotations"][0].update(image_id=2)), "image_id 2 is not an image"),
        (_broken(lambda d: d["annotations"][0].update(category_id=1)), "category_id 1 is not a category"),
        (_broken(lambda d: d["annotations"][0].update(segmentation=[[1, 2]])), "polygon segmentation"),
        (
            _broken(lambda d: d["images"][0].update(void={"default": encode_mask(np.ones((2, 2), bool))})),
            "void['default']: mask size 2x2 differs",
        ),
    ],
)
def test_bad_ground_truth(data, message):
    with pytest.raises(FormatError) as err:
        load_ground_truth(data)
    assert message in str(err.value)


def test_encode_mask_of_a_column_major_mask_equals_the_row_major_one():
    mask = np.random.default_rng(3).random((37, 53)) > 0.6
    assert encode_mask(np.asfortranarray(mask)) == encode_mask(mask) == encode_mask(mask.astype(np.uint8))
    assert np.array_equal(decode_rle(encode_mask(np.asfortranarray(mask))), mask)

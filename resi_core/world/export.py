"""Write generated samples as COCO files (docs/FORMATS.md).

Layout of an output folder:
    images/<image_id:06d>.png                  RGB images
    instances.json                             COCO instances, every involved label space
    panoptic_<space>.json, panoptic_<space>/   standard COCO panoptic, one per label space
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from formats.panoptic import pack_ids
from formats.rle import encode_mask, rle_bbox
from resi_core.world.dataset import WorldSample
from resi_core.world.spaces import (
    BENCHMARK_DISTINCT,
    BENCHMARK_SYNONYMS,
    BENCHMARKS,
    benchmark_mix,
    involved_spaces,
    source_spaces,
)


class ExportError(ValueError):
    """An output folder the user can fix (not empty, or a file)."""


@dataclass(frozen=True)
class Categories:
    """COCO categories of a dataset or benchmark and the id of each (label space, class name)."""

    coco: list[dict]
    ids: dict[tuple[str, str], int]

    def for_space(self, space: str) -> list[dict]:
        return [c for c in self.coco if space in c["label_spaces"]]


def categories(name: str) -> Categories:
    """One category per class: a source dataset's own classes, or a benchmark's mixed classes (in M5,
    "car (street)" and "car (avenue)" are two categories, each of its own label space)."""
    coco, ids = [], {}
    if name in BENCHMARKS:
        for i, c in enumerate(benchmark_mix(name).classes, start=1):
            coco.append(_category(i, c.name, c.isthing, list(c.label_spaces), list(c.synonyms)))
            ids.update({source: i for source in c.sources})
    else:
        for i, c in enumerate(source_spaces()[name].classes, start=1):
            coco.append(_category(i, c.name, c.isthing, [name], list(c.synonyms)))
            ids[(name, c.name)] = i
    return Categories(coco, ids)


def _category(cid: int, name: str, isthing: bool, spaces: list[str], synonyms: list[str]) -> dict:
    return {"id": cid, "name": name, "supercategory": "thing" if isthing else "stuff", "isthing": int(isthing),
            "label_spaces": spaces, "synonyms": synonyms}


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create `out_dir`; refuse a non-empty one unless `overwrite`, then remove only our own outputs."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"Output path {out_dir} is a file, not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"Output folder {out_dir} is not empty; pass --overwrite to replace its world files.")
        for path in [out_dir / "images", out_dir / "instances.json", *out_dir.glob("panoptic_*")]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def write_world(samples: Iterable[WorldSample], name: str, out_dir: Path, *, split: str, seed: int) -> dict:
    """Write `samples` of dataset or benchmark `name` under `out_dir` (which must exist).

    Returns a small summary: {"images": n, "annotations": n, "files": [paths written]}.
    """
    spaces = involved_spaces(name)
    cats = categories(name)
    (out_dir / "images").mkdir(exist_ok=True)
    for space in spaces:
        (out_dir / f"panoptic_{space}").mkdir(exist_ok=True)
    images, instances = [], []
    panoptic: dict[str, list[dict]] = {space: [] for space in spaces}
    for sample in samples:
        file_name = f"{sample.image_id:06d}.png"
        Image.fromarray(sample.image).save(out_dir / "images" / file_name, compress_level=1)
        height, width = sample.image.shape[:2]
        entry = {"id": sample.image_id, "file_name": file_name, "height": height, "width": width,
                 "domain": sample.domain}
        if sample.void:
            entry["void"] = {space: encode_mask(mask) for space, mask in sample.void.items()}
        images.append(entry)
        instances += _instances(sample, cats, first_id=len(instances) + 1)
        for space in spaces:
            panoptic[space].append(_write_panoptic_png(sample, space, cats, out_dir / f"panoptic_{space}" / file_name))
    info = _info(name, split, seed, len(images))
    _dump(out_dir / "instances.json",
          {"info": info, "images": images, "annotations": instances, "categories": cats.coco})
    plain_images = [{k: v for k, v in im.items() if k != "void"} for im in images]
    for space in spaces:
        _dump(out_dir / f"panoptic_{space}.json",
              {"info": info, "images": plain_images, "annotations": panoptic[space],
               "categories": cats.for_space(space)})
    return {"images": len(images), "annotations": len(instances)}


def _instances(sample: WorldSample, cats: Categories, first_id: int) -> list[dict]:
    """Instance annotations of every label space; an object two fused classes label identically appears once."""
    out, seen = [], set()
    for space, segments in sample.segments.items():
        for seg in segments:
            cid = cats.ids[(space, seg.class_name)]
            key = (cid, np.packbits(seg.mask).tobytes())
            if key in seen:
                continue
            seen.add(key)
            rle = encode_mask(seg.mask)
            out.append({"id": first_id + len(out), "image_id": sample.image_id, "category_id": cid,
                        "segmentation": rle, "area": int(np.count_nonzero(seg.mask)), "bbox": rle_bbox(rle),
                        "iscrowd": int(seg.iscrowd)})
    return out


def _write_panoptic_png(sample: WorldSample, space: str, cats: Categories, path: Path) -> dict:
    """Write the space's segment-id PNG (id = R + 256 G + 256^2 B, 0 = void) and return its annotation."""
    ids = np.zeros(sample.image.shape[:2], np.uint32)
    infos = []
    for k, seg in enumerate(sample.segments[space], start=1):
        ids[seg.mask] = k
        rle = encode_mask(seg.mask)
        infos.append({"id": k, "category_id": cats.ids[(space, seg.class_name)],
                      "area": int(np.count_nonzero(seg.mask)), "bbox": rle_bbox(rle), "iscrowd": int(seg.iscrowd)})
    Image.fromarray(pack_ids(ids)).save(path, compress_level=1)
    return {"image_id": sample.image_id, "file_name": path.name, "segments_info": infos}


def _info(name: str, split: str, seed: int, n: int) -> dict:
    spaces = source_spaces()
    info = {
        "description": f"RESI generated world: {name} ({split})",
        "version": "1",
        "date_created": date.today().isoformat(),
        "label_spaces": [spaces[s].to_json() for s in involved_spaces(name)],
        "world": {"name": name, "kind": "benchmark" if name in BENCHMARKS else "dataset", "split": split,
                  "seed": seed, "n": n},
    }
    if name in BENCHMARK_SYNONYMS:
        info["synonyms"] = [list(pair) for pair in BENCHMARK_SYNONYMS[name]]
    if name in BENCHMARK_DISTINCT:
        info["distinct"] = list(BENCHMARK_DISTINCT[name])
    return info


def _dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")))


def overlay(image: np.ndarray, segments: Iterable, alpha: float = 0.5) -> np.ndarray:
    """HxWx3 uint8 preview: each (class, bool HxW mask, iscrowd) segment tinted in its own color, edges white."""
    out = image.astype(np.float32)
    palette = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]], np.float32)
    for k, (_, mask, _) in enumerate(segments):
        out[mask] = (1 - alpha) * out[mask] + alpha * palette[k % len(palette)]
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        out[edge] = 255
    return out.astype(np.uint8)

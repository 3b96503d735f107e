"""Torch-free file formats shared by storage, resi_core, train and app: one rule, one place.

- `formats.images`: the one image decoder (alpha on white, EXIF orientation applied).
- `formats.rle`: the COCO RLE codec (on pycocotools) and segmentation validation.
- `formats.names`: class-name and label-space-name rules.
- `formats.coco`: COCO instances ground truth and predictions, read and written.
- `formats.panoptic`: COCO panoptic id packing, PNGs, reading and writing (overlap policy).

It imports numpy, Pillow and pycocotools only; an import-linter contract keeps torch and the
project's other packages out (docs/FORMATS.md).
"""

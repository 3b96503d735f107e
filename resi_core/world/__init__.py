"""The inconsistent-semantics world (SPEC §6): generated source datasets and mixed benchmarks.

Entry points:
- `source_spaces()`, `benchmark_mix(name)`, `involved_spaces(name)`: label spaces;
- `generate(name, split, n, seed, size)` / `make_sample(...)`: deterministic `WorldSample`s;
- `prepare_out_dir(...)`, `write_world(...)`: COCO instances + panoptic files (docs/FORMATS.md).
"""

from resi_core.world.annotate import MIN_SEGMENT_AREA, GTSegment, annotate
from resi_core.world.dataset import WorldSample, generate, make_sample
from resi_core.world.export import ExportError, categories, prepare_out_dir, write_world
from resi_core.world.spaces import (
    BENCHMARK_DISTINCT,
    BENCHMARK_SYNONYMS,
    BENCHMARKS,
    DATASETS,
    SCENES,
    SPLITS,
    benchmark_mix,
    involved_spaces,
    source_spaces,
)

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_DISTINCT",
    "BENCHMARK_SYNONYMS",
    "DATASETS",
    "MIN_SEGMENT_AREA",
    "SCENES",
    "SPLITS",
    "ExportError",
    "GTSegment",
    "WorldSample",
    "annotate",
    "benchmark_mix",
    "categories",
    "generate",
    "involved_spaces",
    "make_sample",
    "prepare_out_dir",
    "source_spaces",
    "write_world",
]

"""Label spaces of the generated world's source datasets and its mixed benchmarks (SPEC §6)."""

from __future__ import annotations

from resi_core.labels import ClassDef, LabelError, LabelSpace, MixedLabelSpace, mix

STREET = LabelSpace(
    "street",
    (
        ClassDef("person"),
        ClassDef("car"),
        ClassDef("truck"),
        ClassDef("road", isthing=False),
        ClassDef("sky", isthing=False),
    ),
)
PORTRAIT = LabelSpace("portrait", (ClassDef("face"), ClassDef("hair")))
DRIVE = LabelSpace(
    "drive",
    (
        ClassDef("pedestrian"),
        ClassDef("vehicle"),
        ClassDef("road", isthing=False),
        ClassDef("vegetation", isthing=False),
    ),
)
PARTS = LabelSpace("parts", (ClassDef("wheel"), ClassDef("window")))
# street's scenes and class names under another annotation guide (docs/WORLD.md): a person without
# hair and hat, a car or truck without wheels and windows, a road without lane marks.
AVENUE = LabelSpace("avenue", STREET.classes)

DATASETS: tuple[str, ...] = ("street", "portrait", "drive", "parts", "avenue")
# The scene distribution each dataset's images are drawn from (resi_core/world/scenes.py): its own,
# except avenue, whose images are street's kind, so the image alone cannot tell which guide applies.
SCENES: dict[str, str] = {"street": "street", "portrait": "portrait", "drive": "drive", "parts": "parts",
                          "avenue": "street"}
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "M1": ("street", "portrait"),
    "M2": ("street", "drive"),
    "M3": ("street", "parts"),
    "M4": ("portrait", "drive", "parts"),
    "M5": ("street", "avenue"),
}
# Synonyms a user declares for a benchmark; everything else stays a separate class.
BENCHMARK_SYNONYMS: dict[str, tuple[tuple[str, str], ...]] = {"M2": (("person", "pedestrian"),)}
# Label spaces whose same-named classes are NOT one class in a benchmark (labels.mix `distinct`): in M5,
# avenue's car, person, truck, road and sky are its own classes, not street's.
BENCHMARK_DISTINCT: dict[str, tuple[str, ...]] = {"M5": ("avenue",)}
SPLITS: tuple[str, ...] = ("train", "val", "test")


def source_spaces() -> dict[str, LabelSpace]:
    """Label space of each source dataset, by dataset name (the dataset and its space share the name)."""
    return {s.name: s for s in (STREET, PORTRAIT, DRIVE, PARTS, AVENUE)}


def involved_spaces(name: str) -> tuple[str, ...]:
    """Label spaces a dataset (one) or benchmark (several) carries ground truth for."""
    if name in DATASETS:
        return (name,)
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    raise LabelError(f"Unknown dataset or benchmark {name!r}; choose from {', '.join(DATASETS + tuple(BENCHMARKS))}.")


def benchmark_mix(name: str) -> MixedLabelSpace:
    """The mixed label space of benchmark `name` (M1-M5), with its declared synonyms fused and its
    distinct label spaces' classes kept apart."""
    if name not in BENCHMARKS:
        raise LabelError(f"Unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}.")
    spaces = source_spaces()
    return mix([spaces[s] for s in BENCHMARKS[name]], synonyms=BENCHMARK_SYNONYMS.get(name, ()),
               distinct=BENCHMARK_DISTINCT.get(name, ()))

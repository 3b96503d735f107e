"""Label spaces, mixed label spaces and ad-hoc class sets (SPEC §1).

A label space is a named, ordered list of classes. A mixed label space is the ordered
union of several label spaces in which classes with the same normalized name, or a
synonym the user declared, are one class that remembers every label space it came from.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from formats import names as name_rules
from formats.errors import InvalidName
from formats.names import normalize_name

MAX_CLASS_NAME_LEN = name_rules.MAX_NAME_LEN
ADHOC_SPACE = "adhoc"


class LabelError(ValueError):
    """A class name or label-space definition a user can get wrong."""


def check_class_names(names: Sequence[str]) -> list[str]:
    """The names cleaned by formats.names' rules; LabelError on empty, too long or duplicated ones."""
    try:
        return name_rules.check_class_names(names)
    except InvalidName as exc:
        raise LabelError(str(exc)) from None


@dataclass(frozen=True)
class ClassDef:
    name: str
    isthing: bool = True
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSpace:
    name: str
    classes: tuple[ClassDef, ...]

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise LabelError("A label space needs a name.")
        check_class_names([c.name for c in self.classes])

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def index(self, name: str) -> int:
        key = normalize_name(name)
        for i, c in enumerate(self.classes):
            if normalize_name(c.name) == key:
                return i
        raise LabelError(f"Class {name!r} is not in label space {self.name!r}.")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "classes": [
                {"name": c.name, "isthing": c.isthing, "synonyms": list(c.synonyms)} for c in self.classes
            ],
        }

    @staticmethod
    def from_json(data: dict) -> LabelSpace:
        return LabelSpace(
            name=data["name"],
            classes=tuple(
                ClassDef(c["name"], bool(c.get("isthing", True)), tuple(c.get("synonyms", ())))
                for c in data["classes"]
            ),
        )


def adhoc_space(names: Sequence[str], isthing: bool = True) -> LabelSpace:
    """An ad-hoc class set typed by a user: a label space that no model was trained on."""
    return LabelSpace(ADHOC_SPACE, tuple(ClassDef(n, isthing) for n in check_class_names(names)))


@dataclass(frozen=True)
class MixedClass:
    name: str
    isthing: bool
    # (label space, class name in that space) for every source class fused into this one.
    sources: tuple[tuple[str, str], ...]
    synonyms: tuple[str, ...] = field(default=())

    @property
    def label_spaces(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for s, _ in self.sources))


@dataclass(frozen=True)
class MixedLabelSpace:
    spaces: tuple[LabelSpace, ...]
    classes: tuple[MixedClass, ...]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def class_of(self, space: str, name: str) -> int:
        """Index of the mixed class that (space, name) was fused into."""
        key = (space, normalize_name(name))
        for i, c in enumerate(self.classes):
            if any((s, normalize_name(n)) == key for s, n in c.sources):
                return i
        raise LabelError(f"Class {name!r} of label space {space!r} is not in this mix.")


def mix(spaces: Sequence[LabelSpace], synonyms: Iterable[tuple[str, str]] = ()) -> MixedLabelSpace:
    """Ordered union of label spaces; same normalized names and declared synonyms fuse.

    `synonyms` are pairs of class names (from any of the spaces) the user declared equal.
    Text similarity never fuses classes on its own (SPEC §4).
    """
    if not spaces:
        raise LabelError("Pick at least one label space.")
    names = [s.name for s in spaces]
    if len(set(names)) != len(names):
        raise LabelError(f"A label space is listed twice: {names}.")
    # Union-find over normalized names, so synonym chains (a≡b, b≡c) fuse transitively.
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k

    for space in spaces:
        for c in space.classes:
            for syn in c.synonyms:
                parent[find(normalize_name(syn))] = find(normalize_name(c.name))
    known = {normalize_name(c.name) for s in spaces for c in s.classes}
    for a, b in synonyms:
        ka, kb = normalize_name(a), normalize_name(b)
        for k, raw in ((ka, a), (kb, b)):
            if k not in known:
                raise LabelError(f"Synonym {raw!r} is not a class of the chosen label spaces.")
        parent[find(kb)] = find(ka)

    order: list[str] = []
    groups: dict[str, list[tuple[str, ClassDef]]] = {}
    for space in spaces:
        for c in space.classes:
            root = find(normalize_name(c.name))
            if root not in groups:
                order.append(root)
                groups[root] = []
            groups[root].append((space.name, c))
    classes = []
    for root in order:
        members = groups[root]
        first = members[0][1]
        others = tuple(dict.fromkeys(c.name for _, c in members[1:] if c.name != first.name))
        classes.append(
            MixedClass(
                name=first.name,
                isthing=first.isthing,
                sources=tuple((s, c.name) for s, c in members),
                synonyms=others,
            )
        )
    return MixedLabelSpace(spaces=tuple(spaces), classes=tuple(classes))


def space_domain(space: str, domain_spaces: Collection[str], inherited: Mapping[str, str]) -> str | None:
    """The domain of label space `space` for domain-aware OMI: itself when the domain head knows it
    (`domain_spaces`), else the domain it inherited when it was fine-tuned (`inherited`, the model's
    `space_domains`), else None (never held back)."""
    return space if space in domain_spaces else inherited.get(space)

"""Label spaces, mixed label spaces and ad-hoc class sets (SPEC §1).

A label space is a named, ordered list of classes. A mixed label space is the ordered
union of several label spaces in which classes with the same normalized name, or a
synonym the user declared, are one class that remembers every label space it came from.

One exception, declared per request: a label space listed as *distinct* keeps its class
names to itself. Two datasets may use one name for different extents (street's "car" with
its wheels, avenue's without), so their same-named classes are different classes that
share a name; they fuse only through a declared synonym. Where two classes of a mix end
up with one name, each is shown with its label space: "car (street)", "car (avenue)".
"""

from __future__ import annotations

import re
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
    # Unique within the mix: the first source's class name, qualified as "name (space)" where
    # another class of the mix has the same name (a distinct label space's class).
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
    # Label spaces whose class names fuse with no other space's by name (see `mix`).
    distinct: tuple[str, ...] = ()

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


def qualified_name(name: str, space: str) -> str:
    """How a class is shown where another class of the mix has its name: "car (avenue)"."""
    return f"{name} ({space})"


_QUALIFIED = re.compile(r"^(?P<name>.+?)\s*\((?P<space>[^()]+)\)$")


def mix(
    spaces: Sequence[LabelSpace], synonyms: Iterable[tuple[str, str]] = (), distinct: Collection[str] = ()
) -> MixedLabelSpace:
    """Ordered union of label spaces; same normalized names and declared synonyms fuse.

    `synonyms` are pairs of class names (from any of the spaces) the user declared equal.
    Text similarity never fuses classes on its own (SPEC §4).

    `distinct` names label spaces whose class names are their own (SPEC §6, M5): a class of
    such a space fuses with no other space's class by name, only through a declared synonym
    (its own `ClassDef.synonyms` stay within its space). Classes that then share a name are
    shown qualified, "car (street)" and "car (avenue)". In `synonyms`, a qualified name means
    that space's class; a bare name means the class of the spaces that are not distinct, or
    the one distinct class of that name (several: an error asking for the qualified name).
    """
    if not spaces:
        raise LabelError("Pick at least one label space.")
    names = [s.name for s in spaces]
    if len(set(names)) != len(names):
        raise LabelError(f"A label space is listed twice: {names}.")
    distinct = tuple(dict.fromkeys(distinct))
    unknown = [d for d in distinct if d not in names]
    if unknown:
        raise LabelError(f"Distinct label space(s) {unknown} are not among the chosen ones: {names}.")
    # A class's key: ("", name) in the shared namespace, (space, name) in a distinct space's own.
    # Union-find over keys, so synonym chains (a≡b, b≡c) fuse transitively.
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(k: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k

    def key(space: str, name: str) -> tuple[str, str]:
        return (space if space in distinct else "", normalize_name(name))

    for space in spaces:
        for c in space.classes:
            for syn in c.synonyms:
                parent[find(key(space.name, syn))] = find(key(space.name, c.name))
    keys = {key(s.name, c.name): (s.name, c.name) for s in spaces for c in s.classes}
    for a, b in synonyms:
        ka, kb = _synonym_key(a, spaces, keys), _synonym_key(b, spaces, keys)
        parent[find(kb)] = find(ka)

    order: list[tuple[str, str]] = []
    groups: dict[tuple[str, str], list[tuple[str, ClassDef]]] = {}
    for space in spaces:
        for c in space.classes:
            root = find(key(space.name, c.name))
            if root not in groups:
                order.append(root)
                groups[root] = []
            groups[root].append((space.name, c))
    shown = [groups[root][0] for root in order]  # (space, class) that names each mixed class
    count: dict[str, int] = {}
    for _, c in shown:
        count[normalize_name(c.name)] = count.get(normalize_name(c.name), 0) + 1
    classes = []
    for root, (first_space, first) in zip(order, shown, strict=True):
        members = groups[root]
        others = tuple(dict.fromkeys(c.name for _, c in members[1:] if c.name != first.name))
        name = first.name if count[normalize_name(first.name)] == 1 else qualified_name(first.name, first_space)
        classes.append(
            MixedClass(
                name=name,
                isthing=first.isthing,
                sources=tuple((s, c.name) for s, c in members),
                synonyms=others,
            )
        )
    taken = [normalize_name(c.name) for c in classes]
    clash = sorted({n for n in taken if taken.count(n) > 1})
    if clash:
        raise LabelError(f"Class names {clash} would be two classes of this mix; rename one of them.")
    return MixedLabelSpace(spaces=tuple(spaces), classes=tuple(classes), distinct=distinct)


def _synonym_key(
    raw: str, spaces: Sequence[LabelSpace], keys: dict[tuple[str, str], tuple[str, str]]
) -> tuple[str, str]:
    """The class key a declared synonym name means (see `mix`)."""
    match = _QUALIFIED.match(" ".join(raw.split()))
    if match:
        space, name = match["space"].strip(), normalize_name(match["name"])
        for k, (s, n) in keys.items():
            if s == space and normalize_name(n) == name:
                return k
    shared = ("", normalize_name(raw))
    if shared in keys:
        return shared
    own = [k for k in keys if k[1] == normalize_name(raw)]
    if len(own) == 1:
        return own[0]
    if own:
        options = " or ".join(repr(qualified_name(keys[k][1], keys[k][0])) for k in own)
        raise LabelError(f"Synonym {raw!r} is a class of several distinct label spaces; write {options}.")
    raise LabelError(f"Synonym {raw!r} is not a class of the chosen label spaces.")


def space_domain(space: str, domain_spaces: Collection[str], inherited: Mapping[str, str]) -> str | None:
    """The domain of label space `space` for domain-aware OMI: itself when the domain head knows it
    (`domain_spaces`), else the domain it inherited when it was fine-tuned (`inherited`, the model's
    `space_domains`), else None (never held back)."""
    return space if space in domain_spaces else inherited.get(space)

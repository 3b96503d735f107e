"""Mixed label spaces (SPEC §1): same names fuse, declared synonyms fuse, distinct spaces keep their names."""

from __future__ import annotations

import pytest

from resi_core.labels import ClassDef, LabelError, LabelSpace, mix

STREET = LabelSpace("street", (ClassDef("person"), ClassDef("car"), ClassDef("road", isthing=False)))
AVENUE = LabelSpace("avenue", (ClassDef("Person"), ClassDef("car"), ClassDef("road", isthing=False)))
DRIVE = LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("road", isthing=False)))


def test_same_normalized_names_are_one_class_by_default():
    mixed = mix([STREET, AVENUE])
    assert mixed.class_names == ["person", "car", "road"]
    assert mixed.class_of("avenue", "person") == mixed.class_of("street", "person") == 0
    assert mixed.classes[0].sources == (("street", "person"), ("avenue", "Person"))
    assert mixed.distinct == ()


def test_a_distinct_space_keeps_its_names_and_both_classes_are_shown_with_their_space():
    mixed = mix([STREET, AVENUE], distinct=["avenue"])
    assert mixed.class_names == ["person (street)", "car (street)", "road (street)",
                                 "Person (avenue)", "car (avenue)", "road (avenue)"]
    assert [c.label_spaces for c in mixed.classes] == [("street",)] * 3 + [("avenue",)] * 3
    assert mixed.class_of("avenue", "car") == 4 and mixed.class_of("street", "car") == 1
    assert mixed.distinct == ("avenue",)
    # A class whose name no other class has keeps its plain name.
    with_drive = mix([STREET, AVENUE, DRIVE], distinct=["avenue"])
    assert "pedestrian" in with_drive.class_names
    # Other spaces still fuse by name with the spaces that are not distinct.
    road = with_drive.classes[with_drive.class_of("drive", "road")]
    assert road.name == "road (street)" and road.label_spaces == ("street", "drive")


def test_synonyms_may_name_a_distinct_class_by_its_qualified_name():
    mixed = mix([STREET, AVENUE, DRIVE], [("road (avenue)", "road"), ("pedestrian", "person")], distinct=["avenue"])
    road = mixed.classes[mixed.class_of("avenue", "road")]
    assert road.name == "road" and road.label_spaces == ("street", "avenue", "drive")
    # A bare name means the class of the spaces that are not distinct.
    person = mixed.classes[mixed.class_of("drive", "pedestrian")]
    assert person.label_spaces == ("street", "drive")
    assert mixed.class_of("avenue", "person") != mixed.class_of("street", "person")


def test_bad_distinct_and_ambiguous_synonyms_are_label_errors():
    with pytest.raises(LabelError, match="not among the chosen"):
        mix([STREET, DRIVE], distinct=["avenue"])
    with pytest.raises(LabelError, match="'car \\(street\\)' or 'car \\(avenue\\)'"):
        mix([STREET, AVENUE], [("car", "road")], distinct=["street", "avenue"])
    with pytest.raises(LabelError, match="not a class"):
        mix([STREET, AVENUE], [("bus", "car")], distinct=["avenue"])
    # A qualified name that another space already uses as a plain class name would make two classes one name.
    odd = LabelSpace("odd", (ClassDef("car (avenue)"),))
    with pytest.raises(LabelError, match="two classes"):
        mix([STREET, AVENUE, odd], distinct=["avenue"])

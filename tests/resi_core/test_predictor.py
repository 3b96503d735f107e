"""Predictor with a fake model (counts calls, masks derived from the image) and a tiny real model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resi_core.labels import ClassDef, LabelSpace
from resi_core.predictor import AdHocRequest, Predictor, RequestError, SpacesRequest
from tests.shared_data import coco128_photos

DIM = 4  # hidden size = text dim; class embeddings are one-hot
NUM_QUERIES = 3
SPACES = {
    "street": LabelSpace("street", (ClassDef("person"), ClassDef("road", isthing=False))),
    "portrait": LabelSpace("portrait", (ClassDef("face"), ClassDef("hair"))),
    "drive": LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("road", isthing=False))),
}


@dataclass
class FakeFeatures:
    red: torch.Tensor  # [1, h, w] normalized red channel, average-pooled by 4


@dataclass
class FakeOutput:
    hidden_states: torch.Tensor  # [L+1, k, Q, D]
    masks_queries_logits: torch.Tensor  # [L+1, k, Q, h, w]


class FakeModel(nn.Module):
    """Query 0 of every set finds class 0 where the image is red; other queries predict ∅."""

    def __init__(self, max_size: int = 64):
        super().__init__()
        self.config = SimpleNamespace(max_size=max_size, text_encoder="fake")
        self.label_spaces = dict(SPACES)
        self.encode_calls = 0
        self.decode_calls: list[list[str]] = []
        self.anchor = nn.Parameter(torch.zeros(1))

    def encode(self, pixel_values: torch.Tensor) -> FakeFeatures:
        assert pixel_values.ndim == 4 and pixel_values.shape[:2] == (1, 3)
        assert pixel_values.shape[2] % 32 == 0 and pixel_values.shape[3] % 32 == 0
        self.encode_calls += 1
        return FakeFeatures(F.avg_pool2d(pixel_values[:, :1], 4)[0])

    def decode(self, features: FakeFeatures, query_sets) -> FakeOutput:
        self.decode_calls.append(list(query_sets))
        k, (h, w) = len(query_sets), features.red.shape[-2:]
        masks = torch.full((2, k, NUM_QUERIES, h, w), -10.0)
        masks[:, :, 0] = 10.0 * (features.red - 1.0)  # red ≈ +2.2 normalized, others ≈ −2.1, padding 0
        hidden = torch.zeros(2, k, NUM_QUERIES, DIM)
        hidden[:, :, 0, 0] = 1.0
        return FakeOutput(hidden, masks)

    def class_logits(self, hidden: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        logits = 20.0 * hidden @ class_embeddings.T  # [..., Q, K]
        return torch.cat([logits, torch.zeros(*logits.shape[:-1], 1)], -1)  # [..., Q, K + 1]

    def space_logits(self, hidden: torch.Tensor, space: str) -> torch.Tensor:
        return self.class_logits(hidden, torch.eye(DIM)[: len(self.label_spaces[space].classes)])


class FakeEncoder:
    id = "fake"

    def encode(self, names):
        return torch.eye(DIM)[: len(names)]


def red_left_image(h: int, w: int) -> np.ndarray:
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, : w // 2, 0] = 255
    return image


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def test_cache_hit_skips_encode_and_passes_share_one_decode(model):
    predictor = Predictor(model, FakeEncoder())
    image = red_left_image(64, 64)
    first = predictor.predict(image, SpacesRequest(("street", "portrait")))
    assert model.encode_calls == 1 and not first.cache_hit
    assert model.decode_calls == [["street", "portrait"]]
    second = predictor.predict(image.copy(), SpacesRequest(("drive",)))
    assert model.encode_calls == 1 and second.cache_hit and second.image_hash == first.image_hash
    predictor.predict(red_left_image(64, 32), SpacesRequest(("drive",)))
    assert model.encode_calls == 2
    assert set(first.timings) >= {"encode", "decode", "postprocess", "total"}


def test_cache_is_bounded_lru(model):
    predictor = Predictor(model, FakeEncoder(), cache_size=1)
    a, b = red_left_image(32, 32), red_left_image(32, 64)
    for image in (a, b, a):
        predictor.predict(image, SpacesRequest(("street",)))
    assert model.encode_calls == 3


def test_segments_per_space_overlap_and_carry_their_sources(model):
    prediction = Predictor(model, FakeEncoder()).predict(
        red_left_image(64, 64), SpacesRequest(("street", "portrait"))
    )
    assert sorted(s.class_name for s in prediction.segments) == ["face", "person"]
    person, face = sorted(prediction.segments, key=lambda s: s.class_name, reverse=True)
    assert np.array_equal(person.mask, face.mask)  # different classes overlap freely
    assert person.label_spaces == ("street",) and person.sources[0].query_index == 0
    assert person.isthing and person.score > 0.99
    assert len({s.id for s in prediction.segments}) == 2
    # Top-k (query, class) pairs of thing classes per pass: street's road is stuff, portrait's hair is not.
    assert [s.class_name for s in prediction.instances] == ["person", "face", "hair"]
    assert prediction.instances[2].score < 1e-6


def test_same_class_in_two_spaces_is_fused_and_ids_are_stable(model):
    predictor = Predictor(model, FakeEncoder())
    image = red_left_image(64, 64)
    request = SpacesRequest(("street", "drive"), synonyms=(("person", "pedestrian"),))
    prediction = predictor.predict(image, request)
    (fused,) = prediction.segments
    assert fused.class_name == "person" and set(fused.label_spaces) == {"street", "drive"}
    assert len(fused.sources) == 2
    assert [s.id for s in predictor.predict(image, request).segments] == [fused.id]
    unfused = predictor.predict(image, SpacesRequest(("street", "drive")))
    assert sorted(s.class_name for s in unfused.segments) == ["pedestrian", "person"]


def test_masks_are_full_resolution_for_a_large_non_square_image(model):
    image = red_left_image(200, 520)  # model runs at 25x64, padded to 32x64
    prediction = Predictor(model, FakeEncoder()).predict(image, SpacesRequest(("street",)))
    (person,) = prediction.segments
    assert person.mask.shape == (200, 520) and person.mask.dtype == np.bool_
    truth = np.zeros((200, 520), dtype=bool)
    truth[:, :260] = True
    assert (person.mask == truth).mean() > 0.98
    assert person.mask[-1, :200].all()  # bottom rows map to the image, not the padding
    assert prediction.instances[0].mask.shape == (200, 520)
    without = Predictor(model, FakeEncoder()).predict(image, SpacesRequest(("street",)), with_instances=False)
    assert without.instances == [] and len(without.segments) == 1


def test_grayscale_rgba_and_16bit_images_are_accepted(model):
    predictor = Predictor(model, FakeEncoder())
    gray = np.zeros((40, 30), dtype=np.uint8)
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)
    deep = np.zeros((40, 30, 3), dtype=np.uint16)
    for image in (gray, rgba, deep):
        prediction = predictor.predict(image, SpacesRequest(("street",)))
        assert all(s.mask.shape == (40, 30) for s in prediction.segments + prediction.instances)


def test_adhoc_classes_run_every_query_set_and_fuse_duplicates(model):
    predictor = Predictor(model, FakeEncoder())
    prediction = predictor.predict(red_left_image(64, 64), AdHocRequest(("dog", "cat")))
    assert model.decode_calls[-1] == ["street", "portrait", "drive"]
    (dog,) = prediction.segments
    assert dog.class_name == "dog" and dog.label_spaces == ("adhoc",)
    assert set(dog.query_sets) == {"street", "portrait", "drive"}
    confident = [s for s in prediction.instances if s.score > 0.5]
    assert len(confident) == 3  # the instance list is per pass, not fused
    predictor.predict(red_left_image(64, 64), AdHocRequest(("dog",), query_sets=("drive",)))
    assert model.decode_calls[-1] == ["drive"]


@pytest.mark.parametrize(
    "request_, message",
    [
        (SpacesRequest(("street", "nope")), "Unknown label space 'nope'.*street, portrait, drive"),
        (SpacesRequest(()), "at least one label space"),
        (SpacesRequest(("street", "street")), "twice"),
        (SpacesRequest(("street",), synonyms=(("person", "unicorn"),)), "unicorn"),
        (AdHocRequest(()), "empty"),
        (AdHocRequest(("dog", "Dog")), "twice"),
        (AdHocRequest(("dog", " ")), "empty"),
        (AdHocRequest(("dog",), query_sets=("moon",)), "Unknown query set 'moon'"),
    ],
)
def test_bad_requests_raise_request_error(model, request_, message):
    with pytest.raises(RequestError, match=message):
        Predictor(model, FakeEncoder()).predict(red_left_image(32, 32), request_)
    assert model.encode_calls == 0  # checked before any work


def test_bad_image_raises_image_error(model):
    from formats.images import ImageError

    with pytest.raises(ImageError):
        Predictor(model, FakeEncoder()).predict(
            np.zeros((0, 4, 3), dtype=np.uint8), SpacesRequest(("street",))
        )


class HashEncoder:
    """Deterministic stand-in for a text encoder: a normalized random vector per name."""

    id = "hash-test"
    dim = 8

    def encode(self, names):
        rows = [
            torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, n)))) for n in names
        ]
        return F.normalize(torch.stack(rows), dim=-1)  # [K, Dt]


def test_round_trip_with_a_tiny_real_model_on_a_coco_photo():

    from PIL import Image

    from resi_core.model import RESIConfig, build_model

    photos = coco128_photos(1)
    image = np.asarray(Image.open(photos[0]).convert("RGB"))
    torch.manual_seed(0)
    config = RESIConfig(text_encoder=HashEncoder.id, text_dim=HashEncoder.dim, max_size=64, num_queries=8)
    spaces = [SPACES["street"], SPACES["portrait"]]
    model = build_model(config, spaces, HashEncoder())
    predictor = Predictor(model, HashEncoder(), score_threshold=0.0, overlap_threshold=0.0, topk=10)
    for request in (SpacesRequest(("street", "portrait")), AdHocRequest(("dog", "kite"))):
        prediction = predictor.predict(image, request)
        for s in prediction.segments + prediction.instances:
            assert s.mask.shape == image.shape[:2] and s.mask.dtype == np.bool_
            assert 0.0 <= s.score <= 1.0 and isinstance(s.score, float)
        assert len(prediction.instances) <= 10 * 2
        assert np.isfinite(list(prediction.timings.values())).all()
    assert prediction.cache_hit  # the second request reused the features
    with pytest.raises(ValueError, match="trained with text encoder"):
        Predictor(model, SimpleNamespace(id="minilm"))


def test_trained_and_typed_classes_in_one_request_fuse_a_shared_name(model):
    """Query 0 of every set finds class 0 on the red half: street's "person", and the typed "person"
    (class 0 of the typed list) from every query set. One mixed class, IoU 1: ESF keeps one segment with
    every source; the typed "cat" is never class 0, so nothing else is found."""
    from resi_core.predictor import MixedRequest

    predictor = Predictor(model, FakeEncoder())
    prediction = predictor.predict(red_left_image(64, 64), MixedRequest(("street",), ("person", "cat")))
    assert model.decode_calls[-1] == ["street", "street", "portrait", "drive"]  # one batched pass
    (person,) = prediction.segments
    assert person.class_name == "person" and set(person.label_spaces) == {"street", "adhoc"}
    assert {(s.label_space, s.query_set) for s in person.sources} == {
        ("street", "street"), ("adhoc", "street"), ("adhoc", "portrait"), ("adhoc", "drive")}
    with pytest.raises(RequestError, match="Unknown label space 'moon'"):
        predictor.predict(red_left_image(64, 64), MixedRequest(("moon",), ("cat",)))
    with pytest.raises(RequestError, match="twice"):
        predictor.predict(red_left_image(64, 64), MixedRequest(("street",), ("cat", "Cat")))


class DomainModel(FakeModel):
    """FakeModel with a domain head that knows street and portrait and finds `likeliest` likeliest."""

    def __init__(self, likeliest: str, space_domains: dict[str, str] | None = None):
        super().__init__()
        self.domain_spaces = ["street", "portrait"]
        self.domain_head = nn.Identity()  # present; domain_probs below stands in for it
        self.space_domains = dict(space_domains or {})  # inherited domains of spaces the head does not know
        self.likeliest = likeliest

    def domain_probs(self, features, extent_fraction=(1.0, 1.0)) -> torch.Tensor:
        assert 0 < extent_fraction[0] <= 1 and 0 < extent_fraction[1] <= 1
        return torch.tensor([[0.9, 0.1]] if self.likeliest == "street" else [[0.2, 0.8]])

    def image_domain_probs(self, features, extent_fraction=(1.0, 1.0)) -> dict[str, float]:
        return dict(zip(self.domain_spaces, self.domain_probs(features, extent_fraction)[0].tolist(), strict=True))


@pytest.mark.parametrize("likeliest,kept,held", [("street", ["person"], ("portrait",)),
                                                 ("portrait", ["face"], ("street",))])
def test_domain_aware_omi_holds_the_other_domains_query_sets(likeliest, kept, held):
    model = DomainModel(likeliest)
    image = red_left_image(64, 64)
    # Every query here scores ~1.0, so an out-of-domain threshold of 1.0 removes all of a held set.
    strict = Predictor(model, FakeEncoder(), out_of_domain_threshold=1.0)
    prediction = strict.predict(image, SpacesRequest(("street", "portrait")))
    assert sorted(s.class_name for s in prediction.segments) == kept
    assert prediction.out_of_domain == held
    assert prediction.domain_probs[likeliest] > 0.5
    # The AP instance list is not thresholded, so it still holds both sets' proposals.
    assert {s.class_name for s in prediction.instances} >= {"person", "face"}
    # The default threshold (0.98) keeps near-certain proposals of a held set.
    assert len(Predictor(model, FakeEncoder()).predict(image, SpacesRequest(("street", "portrait"))).segments) == 2
    # Off, a single asked set, or a set the head does not know: nothing is held.
    off = Predictor(model, FakeEncoder(), out_of_domain_threshold=None).predict(image, SpacesRequest(("street", "portrait")))
    assert len(off.segments) == 2 and off.out_of_domain == () and off.domain_probs == {}
    alone = strict.predict(image, SpacesRequest(("street",) if likeliest == "portrait" else ("portrait",)))
    assert len(alone.segments) == 1 and alone.out_of_domain == ()
    unknown = strict.predict(image, SpacesRequest((likeliest, "drive")))
    assert len(unknown.segments) == 2 and unknown.out_of_domain == ()


def test_typed_names_do_not_make_a_chosen_space_held():
    """One chosen space + typed names: the typed names run through every query set, but the chosen
    space is alone in its group, so it keeps the normal threshold; the typed names' passes through
    the other domain's set are held."""
    from resi_core.predictor import MixedRequest

    model = DomainModel("portrait")  # the image looks like portrait data
    strict = Predictor(model, FakeEncoder(), out_of_domain_threshold=1.0)
    prediction = strict.predict(red_left_image(64, 64), MixedRequest(("street",), ("cat",), query_sets=("street", "portrait")))
    sources = {(s.class_name, src.query_set) for s in prediction.segments for src in s.sources}
    assert ("person", "street") in sources  # the chosen space's own pass is not held
    assert ("cat", "portrait") in sources and ("cat", "street") not in sources  # typed: likeliest set only
    assert prediction.out_of_domain == ()


def test_a_finetuned_space_is_held_on_other_domains_images_by_its_inherited_domain():
    """drive, which the head does not know, inherited street's domain (as `train finetune` records it):
    on a portrait-like image it is held like street; on a street-like image it is one domain with street,
    so both are kept and only portrait is held. Unmapped, it is never held."""
    from resi_core.predictor import MixedRequest

    image = red_left_image(64, 64)
    on_portrait = Predictor(DomainModel("portrait", {"drive": "street"}), FakeEncoder(), out_of_domain_threshold=1.0)
    prediction = on_portrait.predict(image, SpacesRequest(("portrait", "drive")))
    assert sorted(s.class_name for s in prediction.segments) == ["face"]
    assert prediction.out_of_domain == ("drive",) and prediction.domain_probs["portrait"] > 0.5
    # Typed names through drive's query set are held alike (and do not make the chosen space held).
    mixed = on_portrait.predict(image, MixedRequest(("drive",), ("cat",), query_sets=("portrait", "drive")))
    sources = {(s.class_name, src.query_set) for s in mixed.segments for src in s.sources}
    assert ("pedestrian", "drive") in sources and ("cat", "portrait") in sources and ("cat", "drive") not in sources
    assert mixed.out_of_domain == ()

    on_street = Predictor(DomainModel("street", {"drive": "street"}), FakeEncoder(), out_of_domain_threshold=1.0)
    prediction = on_street.predict(image, SpacesRequest(("street", "drive", "portrait")))
    assert sorted(s.class_name for s in prediction.segments) == ["pedestrian", "person"]
    assert prediction.out_of_domain == ("portrait",)
    same_domain = on_street.predict(image, SpacesRequest(("street", "drive")))  # one domain: nothing contested
    assert len(same_domain.segments) == 2 and same_domain.out_of_domain == () and same_domain.domain_probs == {}

    unmapped = Predictor(DomainModel("portrait"), FakeEncoder(), out_of_domain_threshold=1.0)
    prediction = unmapped.predict(image, SpacesRequest(("portrait", "drive")))
    assert len(prediction.segments) == 2 and prediction.out_of_domain == ()


@torch.no_grad()
def test_a_real_model_holds_a_space_by_the_domain_it_inherited():
    """The same on a tiny RESIModel with a hand-set head whose bias makes one domain certain."""
    from tests.resi_core.test_model import TableEncoder, tiny_model

    model = tiny_model()  # street and portrait
    model.add_label_space(LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("vehicle"))), TableEncoder())
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for certain, asked, held in [("portrait", ("portrait", "drive"), ("drive",)),
                                 ("street", ("street", "drive", "portrait"), ("portrait",)),
                                 ("street", ("street", "drive"), ())]:
        bias = torch.tensor([20.0, 0.0] if certain == "street" else [0.0, 20.0])
        model.set_domain_head(["street", "portrait"], torch.zeros(2, model.pooled_dim()), bias)
        model.set_space_domain("drive", "street")
        prediction = Predictor(model, TableEncoder()).predict(image, SpacesRequest(asked), with_instances=False)
        assert prediction.out_of_domain == held, (certain, asked)
    model.set_space_domain("drive", None)
    prediction = Predictor(model, TableEncoder()).predict(image, SpacesRequest(("portrait", "drive")))
    assert prediction.out_of_domain == ()


def test_semantic_maps_per_pass_are_unioned_per_class_and_follow_domain_aware_omi(model):
    image = red_left_image(48, 64)
    predictor = Predictor(model, FakeEncoder())
    assert predictor.predict(image, SpacesRequest(("street", "portrait"))).semantic == []  # opt-in
    two = predictor.predict(image, SpacesRequest(("street", "portrait")), with_semantic=True)
    # Query 0 of each pass is class 0 on the red half; the other queries are unsure and mask nothing,
    # so the rest of the image stays unlabeled. Different classes overlap across passes.
    assert sorted(s.class_name for s in two.semantic) == ["face", "person"]
    for s in two.semantic:
        assert s.mask.shape == (48, 64) and s.mask[:, :30].all() and not s.mask[:, 34:].any()  # bilinear edge
    assert len({s.id for s in two.semantic}) == 2 and not {s.id for s in two.semantic} & {s.id for s in two.segments}
    # Declared synonyms are one class: the two passes' maps become one segment from both spaces.
    fused = predictor.predict(image, SpacesRequest(("street", "drive"), (("person", "pedestrian"),)), with_semantic=True)
    (person,) = fused.semantic
    assert set(person.label_spaces) == {"street", "drive"} and person.mask[:, :30].all()
    # A pass held back by domain-aware OMI adds only queries above its threshold (here: none).
    strict = Predictor(DomainModel("street"), FakeEncoder(), out_of_domain_threshold=1.0)
    held = strict.predict(image, SpacesRequest(("street", "portrait")), with_semantic=True)
    assert [s.class_name for s in held.semantic] == ["person"] and held.out_of_domain == ("portrait",)


def _near_boundary(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` (Chebyshev distance) of a pixel whose 3x3 neighbourhood is not all alike."""
    m = torch.from_numpy(np.array(mask, dtype=np.float32))[None, None]
    edge = (F.max_pool2d(m, 3, 1, 1) != -F.max_pool2d(-m, 3, 1, 1)).float()
    return F.max_pool2d(edge, 2 * radius + 1, 1, radius)[0, 0].numpy() > 0


def _compare_working_size(predictor_full, predictor_work, image, request, scale):
    """Post-processing at a working size gives the same segments; a mask pixel may differ only within
    `scale` output pixels of the full-resolution mask's boundary (nearest sampling moves a boundary
    by at most half a working pixel; one more pixel for the discrete boundary)."""
    full = predictor_full.predict(image, request, with_instances=False)
    work = predictor_work.predict(image, request, with_instances=False)
    assert [(s.id, s.class_name) for s in full.segments] == [(s.id, s.class_name) for s in work.segments]
    for a, b in zip(full.segments, work.segments, strict=True):
        assert b.mask.shape == a.mask.shape == image.shape[:2] and b.mask.dtype == np.bool_
        differ = a.mask ^ b.mask
        assert not (differ & ~_near_boundary(a.mask, int(np.ceil(scale)))).any()
    return full, work


def test_large_photos_are_post_processed_at_a_working_size_and_upsampled_once(model):
    image = red_left_image(600, 1500)  # red left of column 750
    full, work = _compare_working_size(Predictor(model, FakeEncoder(), postprocess_max_side=None),
                                       Predictor(model, FakeEncoder(), postprocess_max_side=150), image,
                                       SpacesRequest(("street", "drive")), 1500 / 150)
    assert "upsample" in work.timings and len(work.segments) == 2  # street's person, drive's pedestrian
    truth = np.zeros((600, 1500), dtype=bool)
    truth[:, :750] = True
    assert (work.segments[0].mask == truth).mean() > 0.98
    small = red_left_image(200, 520)  # within the working size: exactly what full resolution gives
    a = Predictor(model, FakeEncoder(), postprocess_max_side=None).predict(small, SpacesRequest(("street",)))
    b = Predictor(model, FakeEncoder(), postprocess_max_side=520).predict(small, SpacesRequest(("street",)))
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.segments + a.instances, b.segments + b.instances,
                                                              strict=True))


@pytest.mark.slow
def test_demo_model_on_an_enlarged_photo_gives_the_same_segments_at_a_working_size():
    """The demo checkpoint on a coco128 photo enlarged to 1600x1200, post-processed at full size and at a long
    side of 400 (a scale of 4, larger than the default's 3.9 on a 24 MP photo)."""
    from PIL import Image

    from resi_core.model import load_checkpoint, read_meta
    from resi_core.text import get_text_encoder

    photos = coco128_photos(10)
    demo = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"
    encoder = get_text_encoder(read_meta(demo)["text_encoder"])
    demo_model = load_checkpoint(demo, encoder.id)
    # A low score threshold: the comparison needs segments to compare, not good ones.
    full = Predictor(demo_model, encoder, postprocess_max_side=None, score_threshold=0.2)
    work = Predictor(demo_model, encoder, postprocess_max_side=400, score_threshold=0.2)
    image = np.asarray(Image.open(photos[9]).convert("RGB").resize((1600, 1200), Image.Resampling.BILINEAR))
    found = 0
    for request in (SpacesRequest(tuple(demo_model.label_spaces)), AdHocRequest(("person", "dog", "car"))):
        segments = _compare_working_size(full, work, image, request, 1600 / 400)[0].segments
        assert segments  # the photo has something to segment for each request
        found += len(segments)
    assert found >= 3


def test_class_set_request_puts_spaces_and_typed_names_in_one_request():
    from resi_core.predictor import MixedRequest, class_set_request

    trained = {"street": LabelSpace("street", (ClassDef("person"), ClassDef("car"))),
               "portrait": LabelSpace("portrait", (ClassDef("face"),))}
    synonyms = [("person", "pedestrian"), ("car", "auto")]  # "pedestrian" is in no chosen space: dropped
    assert class_set_request(trained, ["street"], ["auto"], synonyms) == MixedRequest(
        ("street",), ("auto",), (("car", "auto"),))
    assert class_set_request(trained, ["street", "portrait"], [], synonyms) == SpacesRequest(("street", "portrait"))
    assert class_set_request(trained, [], ["dog"], synonyms) == AdHocRequest(("dog",))
    with pytest.raises(RequestError, match="The model has no label space 'drive'; it has street, portrait"):
        class_set_request(trained, ["street", "drive"], [])
    with pytest.raises(RequestError, match="The class set is empty"):
        class_set_request(trained, [], [])


class SharedModel(FakeModel):
    """A shared-query baseline: one query set, a linear head over the union of class names
    (person, road, face, hair, pedestrian), and avenue, which reuses street's names. Query 0 (hidden[0] = 1)
    puts logit 20 on "person"; the other queries' logits are all 0."""

    def __init__(self, likeliest: str | None = None):
        super().__init__()
        self.config = SimpleNamespace(max_size=64, text_encoder="fake", query_mode="shared")
        self.label_spaces = {**SPACES, "avenue": LabelSpace("avenue", SPACES["street"].classes)}
        self.union_names = ["person", "road", "face", "hair", "pedestrian"]
        self.space_columns = {"street": [0, 1], "portrait": [2, 3], "drive": [4, 1], "avenue": [0, 1]}
        if likeliest is not None:  # a domain head over street and portrait; avenue is street's domain
            self.domain_spaces, self.domain_head = ["street", "portrait"], nn.Identity()
            self.space_domains = {"avenue": "street"}
            self.likeliest = likeliest

    def union_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*hidden.shape[:-1], len(self.union_names) + 1)  # [..., Q, U + 1]
        logits[..., 0] = 20.0 * hidden[..., 0]
        return logits

    def image_domain_probs(self, features, extent_fraction=(1.0, 1.0)) -> dict[str, float]:
        return {"street": 0.9, "portrait": 0.1} if self.likeliest == "street" else {"street": 0.2, "portrait": 0.8}


def test_a_union_decode_is_one_pass_over_the_union_columns_for_the_baselines_rules():
    model = SharedModel()
    predictor = Predictor(model, None)
    image = red_left_image(64, 64)
    decoded = predictor.decode(image, SpacesRequest(("street", "drive")), union=True)
    assert model.decode_calls == [["street"]] and len(decoded.passes) == 1
    assert decoded.passes[0].union_columns == (0, 1, 4)  # person, road, pedestrian: road is one column
    (probs,) = decoded.probs
    assert probs.shape == (NUM_QUERIES, 4) and probs[0, 0] > 0.99  # a softmax over the asked columns and ∅
    joint = decoded.joint()
    assert [[decoded.mixed.classes[c].name for c in t] for t in joint.classes] == [["person"], ["road"], ["pedestrian"]]
    assert joint.isthing == (True, False, True) and joint.in_domain is None
    # Declared synonyms are two columns of one class: their probabilities add up.
    synonyms = predictor.decode(image, SpacesRequest(("street", "drive"), (("person", "pedestrian"),)), union=True)
    joint = synonyms.joint()
    assert len(joint.classes) == 2
    torch.testing.assert_close(joint.probs[:, 0], synonyms.probs[0][:, 0] + synonyms.probs[0][:, 2])
    torch.testing.assert_close(joint.probs.sum(-1), torch.ones(NUM_QUERIES))


def test_a_union_column_answers_for_both_same_named_classes_of_a_distinct_space():
    """street + avenue with avenue distinct: four classes of the mix, two union columns; each column stands
    for both spaces' class, while one pass per label space keeps them apart."""
    predictor = Predictor(SharedModel(), None)
    request = SpacesRequest(("street", "avenue"), distinct=("avenue",))
    union = predictor.decode(red_left_image(64, 64), request, union=True)
    names = union.mixed.class_names
    assert names == ["person (street)", "road (street)", "person (avenue)", "road (avenue)"]
    assert [[names[c] for c in t] for t in union.joint().classes] == [
        ["person (street)", "person (avenue)"], ["road (street)", "road (avenue)"]]
    per_space = predictor.decode(red_left_image(64, 64), request)
    joint = per_space.joint()
    assert [[names[c] for c in t] for t in joint.classes] == [[n] for n in names]
    assert joint.pass_rows == (slice(0, NUM_QUERIES), slice(NUM_QUERIES, 2 * NUM_QUERIES))
    torch.testing.assert_close(joint.probs[NUM_QUERIES:, [2, 3, 4]], per_space.probs[1])  # avenue's own columns
    assert joint.probs[NUM_QUERIES:, :2].sum() == 0
    # ESF-OMI keeps both spaces' "person" (same mask, IoU 1): they are two classes.
    segments = predictor.predict(red_left_image(64, 64), request).segments
    assert sorted(s.class_name for s in segments) == ["person (avenue)", "person (street)"]
    with pytest.raises(ValueError, match="union decode"):
        predictor.postprocess(union)


def test_union_decode_domain_decision_and_its_errors():
    """The union pass is never held itself; the likeliest domain is decided over the asked spaces, and a rule
    class is in that domain when one of its label spaces is (avenue inherits street's domain)."""
    on_portrait = Predictor(SharedModel("portrait"), None).decode(
        red_left_image(64, 64), SpacesRequest(("street", "portrait", "avenue"), distinct=("avenue",)), union=True)
    assert on_portrait.domain.likeliest == "portrait" and on_portrait.domain.held == ()
    assert on_portrait.domain.thresholds == (0.5,)
    joint = on_portrait.joint()
    names = on_portrait.mixed.class_names
    in_domain = {names[t[0]]: inside for t, inside in zip(joint.classes, joint.in_domain, strict=True)}
    assert in_domain == {"person (street)": False, "road (street)": False, "face": True, "hair": True}
    # One domain asked (street and avenue): nothing contested.
    same = Predictor(SharedModel("portrait"), None).decode(
        red_left_image(64, 64), SpacesRequest(("street", "avenue"), distinct=("avenue",)), union=True)
    assert same.domain.likeliest is None and same.joint().in_domain is None
    with pytest.raises(RequestError, match="shared query set"):
        Predictor(FakeModel(), None).decode(red_left_image(64, 64), SpacesRequest(("street",)), union=True)
    with pytest.raises(RequestError, match="SpacesRequest"):
        Predictor(SharedModel(), FakeEncoder()).decode(red_left_image(64, 64), AdHocRequest(("cat",)), union=True)

"""Domain head: the logistic regression, fitting on hand-made datasets, the CLI and its errors."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from resi_core.data import CocoDataset
from resi_core.model import load_checkpoint, save_checkpoint
from tests.resi_core.test_model import tiny_model
from tests.resi_core.test_model_data import write_tiny_coco
from train.domain import fit_domain_head, fit_linear, main


def test_fit_linear_separates_separable_data_on_raw_features():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0, 50.0], [3.0, 0.0, 50.0], [0.0, 3.0, 50.0]])  # large shared offset
    labels = torch.arange(3).repeat_interleave(40)
    x = centers[labels] + 0.3 * torch.randn(120, 3, generator=generator)
    weight, bias = fit_linear(x, labels, 3)
    assert weight.shape == (3, 3) and bias.shape == (3,)
    assert ((x @ weight.T + bias).argmax(-1) == labels).float().mean() == 1.0


def _datasets(root, n=5):
    datasets = []
    for name, tint in (("street", (0, 0, 120)), ("portrait", (120, 0, 0))):  # a look of its own per dataset
        folder = write_tiny_coco(root / name, name, n_images=n)
        for path in (folder / "images").iterdir():
            pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int16) + np.array(tint, dtype=np.int16)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        datasets.append(CocoDataset(name, folder / "images", folder / "instances.json"))
    return datasets


def test_fit_domain_head_installs_a_head_and_reports_held_out_accuracy(tmp_path):
    model = tiny_model()
    accuracy = fit_domain_head(model, _datasets(tmp_path, n=10), images_per_space=10, progress=False)
    # The two hand-made datasets are tinted differently, so their held-out images are told apart.
    assert set(accuracy) == {"street", "portrait"} and all(a == 1.0 for a in accuracy.values())
    assert model.domain_spaces == ["street", "portrait"] and not model.training
    features = model.encode(torch.randn(1, 3, 64, 64))
    assert model.domain_probs(features).shape == (1, 2)


def test_cli_writes_the_head_into_the_checkpoint_and_keeps_training_info(tmp_path, capsys):
    datasets = _datasets(tmp_path / "data")
    folder = save_checkpoint(tmp_path / "ckpt", tiny_model(), {"step": 9})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data_root": str(tmp_path / "data"), "datasets": [
        {"name": d.name, "images": f"{d.name}/images", "instances": f"{d.name}/instances.json"} for d in datasets]}))
    assert main(["--checkpoint", str(folder), "--config", str(config), "--images-per-space", "4", "--no-progress"]) == 0
    assert "held-out accuracy: street" in capsys.readouterr().out
    loaded = load_checkpoint(folder)
    assert loaded.domain_spaces == ["street", "portrait"]
    from resi_core.model import read_meta

    training = read_meta(folder)["training"]
    assert training["step"] == 9 and training["domain_head"]["images_per_space"] == 4


def test_cli_errors_are_one_clear_message(tmp_path, capsys):
    folder = save_checkpoint(tmp_path / "ckpt", tiny_model())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"datasets": [{"name": "drive", "images": "x", "instances": "x.json"}]}))
    assert main(["--checkpoint", str(folder), "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith("error: Dataset 'drive': no instances file")
    assert main(["--checkpoint", str(tmp_path / "nowhere"), "--config", str(config), "--images-per-space", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    write_tiny_coco(tmp_path / "drive", "street", n_images=3)  # a dataset read as label space "drive"
    config.write_text(json.dumps({"data_root": str(tmp_path), "datasets": [
        {"name": "drive", "images": "drive/images", "instances": "drive/instances.json"}]}))
    assert main(["--checkpoint", str(folder), "--config", str(config)]) == 2
    assert "not label spaces of this model" in capsys.readouterr().err


def test_datasets_the_head_cannot_tell_apart_are_one_domain(tmp_path):
    """avenue's images are street's (here: the very same pictures): one domain, named street, which avenue
    inherits; portrait, tinted apart, keeps its own. So neither street's nor avenue's query set is ever
    held on the other's images."""
    from resi_core.labels import LabelSpace
    from tests.resi_core.test_model import PORTRAIT, STREET

    street, portrait = _datasets(tmp_path, n=25)  # 5 held out each: enough to decide (MIN_HELD_TO_MERGE)
    avenue = CocoDataset("avenue", street.images_dir, tmp_path / "street" / "instances.json")
    model = tiny_model(spaces=(STREET, PORTRAIT, LabelSpace("avenue", STREET.classes)))
    accuracy = fit_domain_head(model, [street, portrait, avenue], images_per_space=25, progress=False)
    assert model.domain_spaces == ["street", "portrait"] and model.space_domains == {"avenue": "street"}
    assert accuracy == {"street": 1.0, "portrait": 1.0}
    # Only look-alikes left: no head, since no query set could be held on anything.
    alike = tiny_model(spaces=(STREET, LabelSpace("avenue", STREET.classes)))
    assert fit_domain_head(alike, [street, avenue], images_per_space=25, progress=False) == {}
    assert alike.domain_head is None and alike.space_domains == {}


def test_same_domains_merges_pairs_below_the_accuracy_and_chains():
    from train.domain import same_domains

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).repeat_interleave(3)  # 6 held-out images each
    # 0 and 1 are told apart; 2 is confused with 1 (its images score 1 above 2); 3 with 2.
    logits = torch.tensor([[5.0, 0, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0], [0, 5, 0, 0],
                           [0, 5, 1, 0], [0, 5, 1, 0], [0, 0, 5, 1], [0, 0, 5, 1]]).repeat_interleave(3, dim=0)
    assert same_domains(logits, labels, ["a", "b", "c", "d"]) == [0, 1, 1, 1]
    # With 2 held-out images each, nothing is merged: too few to tell chance from look-alikes.
    assert same_domains(logits[::3], labels[::3], ["a", "b", "c", "d"]) == [0, 1, 2, 3]

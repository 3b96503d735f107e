"""`python -m train bench --smoke`: the whole comparison in miniature, and proof that RESI learns.

The floor is not a number copied from a run: it is what the same architecture scores on M1 with
random weights (computed here), plus a margin of LEARNED_MARGIN PIQ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from resi_core.model import build_model, load_checkpoint
from resi_core.text import get_text_encoder
from train import bench

ROOT = Path(__file__).resolve().parents[2]
LEARNED_MARGIN = 0.03  # PIQ (0..1): 3 points above a random model


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = bench.BenchConfig.from_json(json.loads((ROOT / "configs" / "bench_smoke.json").read_text()))
    report = bench.run(config, out, methods=None, retrain=False, progress=False, jobs=2)
    return config, out, report


@pytest.mark.slow
def test_smoke_bench_writes_every_row_and_resi_learns(smoke):
    config, out, report = smoke
    results = report["results"]
    assert list(results) == [row for row, _, _ in bench.ROWS]
    for row, per_bench in results.items():
        assert set(per_bench) == set(config.benchmarks), row
        for scores in per_bench.values():
            for metric in bench.METRICS:
                value = scores[metric]
                assert math.isnan(value) or 0.0 <= value <= 1.0, (row, metric, value)
    assert "| RESI |" in report["markdown"] and set(report["resi_margin_points"]) == set(bench.METRICS)
    # Margins under SPEC §6's two headings, per benchmark and for the means (M1-M4 apart from M5).
    assert list(report["margins"]["prior_method"]) == ["Merged-M2F"]
    assert list(report["margins"]["ablations"]) == ["Text-M2F", "RESI w/o ESF-OMI", "RESI (linear head)", "RESI w/o LSQE"]
    assert set(report["margins"]["ablations"]["Text-M2F"]) == {*config.benchmarks, "mean M1–M4", "mean"}
    assert "RESI minus the prior-method baseline" in report["markdown"] and "RESI minus its ablations" in report["markdown"]
    # Per-class PIQ of every row and benchmark; in M5 the two spaces' cars are two classes.
    for row, per_bench in results.items():
        m5 = per_bench["M5"]["piq_per_class"]
        assert {"car (street)", "car (avenue)", "sky (street)", "sky (avenue)"} <= set(m5), row
        assert set(per_bench["M5"]["pq_per_space"]) == {"street", "avenue"}
        assert all(set(c) >= {"piq", "tp", "fp", "fn"} for c in m5.values())

    # Each method trained its own architecture (a shared-query baseline is not a RESI model).
    trained = {m: load_checkpoint(bench.latest_checkpoint(out / "runs" / m)).config for m in
               ("merged_m2f", "text_m2f", "resi", "resi_linear")}
    assert (trained["merged_m2f"].classifier, trained["merged_m2f"].query_mode) == ("linear", "shared")
    assert (trained["text_m2f"].classifier, trained["text_m2f"].query_mode) == ("text", "shared")
    assert (trained["resi"].classifier, trained["resi"].query_mode) == ("text", "per_space")
    assert (trained["resi_linear"].classifier, trained["resi_linear"].query_mode) == ("linear", "per_space")
    # Every method got a domain head after training, and the baselines' rules include its variants.
    for method in trained:
        heads = load_checkpoint(bench.latest_checkpoint(out / "runs" / method)).domain_spaces
        assert heads == ["street", "portrait", "drive", "parts"], method
        # avenue's images are street's kind: one domain, so neither set is held on the other's images.
        assert load_checkpoint(bench.latest_checkpoint(out / "runs" / method)).space_domains == {"avenue": "street"}
    rules = {r for per in results["Merged-M2F"].values() for r in per["rule"].values()}
    candidates = ("panoptic_union", "overlapping", "semantic_union")
    assert rules and rules <= {f"{v}{r}" for v in ("", "domain_aware_") for r in candidates}

    # The floor: the same RESI architecture with random weights, evaluated the same way on M1.
    resi = load_checkpoint(bench.latest_checkpoint(out / "runs" / "resi"))
    torch.manual_seed(1)
    random_model = build_model(resi.config, list(resi.label_spaces.values()), get_text_encoder("minilm")).eval()
    data = out / "data" / "M1" / "val"
    floor = bench.evaluate_benchmark(random_model, "esf_omi", "M1", data, config.score_threshold).piq
    learned = results["RESI"]["M1"]["piq"]
    assert learned >= floor + LEARNED_MARGIN, f"RESI M1 PIQ {learned:.3f} vs random {floor:.3f}"


def test_a_second_run_reuses_finished_training(smoke, capsys):
    config, out, _ = smoke
    report = bench.run(config, out, methods=["resi"], retrain=False, progress=False, jobs=1)
    assert list(report["results"]) == ["RESI w/o ESF-OMI", "RESI"]
    assert "== training" not in capsys.readouterr().out
    # The same runs on another seed's validation images: new images, nothing trained again.
    other = bench.run(config, out, methods=["resi"], retrain=False, progress=False, jobs=1, val_seed=7)
    assert "== training" not in capsys.readouterr().out and other["val_seed"] == 7 and report["val_seed"] == 0
    info = json.loads((out / "data" / "M1" / "val-seed7" / "instances.json").read_text())["info"]
    assert bench._info_seed(info) == 7
    assert other["results"]["RESI"] != report["results"]["RESI"]


def test_a_finished_run_without_a_domain_head_gets_one_without_retraining(smoke, capsys):
    from resi_core.model import read_meta, save_checkpoint

    config, out, _ = smoke
    final = bench.latest_checkpoint(out / "runs" / "resi")
    model, meta = load_checkpoint(final), read_meta(final)
    weights = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("domain_head.")}
    model.domain_head, model.domain_spaces = None, []  # as a run finished before heads existed
    model.space_domains.clear()
    training = {k: v for k, v in meta["training"].items() if k != "domain_head"}
    save_checkpoint(final, model, training, git_commit=meta["git_commit"])
    bench.run(config, out, methods=["resi"], retrain=False, progress=False, jobs=1)
    assert "domain head (resi): held-out accuracy" in capsys.readouterr().out
    refitted = load_checkpoint(bench.latest_checkpoint(out / "runs" / "resi"))
    assert refitted.domain_spaces == ["street", "portrait", "drive", "parts"]
    assert refitted.space_domains == {"avenue": "street"}
    assert bench.checkpoint_step(final) == config.iterations  # not trained again: same weights
    assert all(torch.equal(v, refitted.state_dict()[k]) for k, v in weights.items())


def test_table_and_margins_from_known_scores():
    def scores(value: float) -> bench.Scores:
        return bench.Scores(miou=value, pq=value, ap=value, piq=value, overlap=value,
                            rule=dict.fromkeys(bench.METRICS, "x"))

    results = {
        "Merged-M2F": {"M1": scores(0.10), "M2": scores(0.30)},
        "Text-M2F": {"M1": scores(0.20), "M2": scores(0.20)},
        "RESI": {"M1": scores(0.40), "M2": scores(0.30)},
    }
    # Means: Merged 0.20, Text 0.20, RESI 0.35 -> margin 15 points on every metric.
    assert bench.margins(results, ["M1", "M2"]) == pytest.approx(dict.fromkeys(bench.METRICS, 15.0))
    table = bench.markdown_table(results, ["M1", "M2"]).splitlines()
    assert table[0].startswith("| method | M1 mIoU |") and len(table) == 2 + len(results)
    assert table[-1] == "| RESI | " + " | ".join(["40.0"] * 5 + ["30.0"] * 5 + ["35.0"] * 5) + " |"
    # The better inference rule is taken per metric.
    a = bench.Scores(miou=0.5, pq=0.1, ap=float("nan"), piq=0.2, overlap=0.1, rule=dict.fromkeys(bench.METRICS, "a"),
                     piq_per_class={"car": {"piq": 0.2}}, pq_per_space={"street": 0.1})
    b = bench.Scores(miou=0.4, pq=0.3, ap=0.2, piq=0.2, overlap=0.3, rule=dict.fromkeys(bench.METRICS, "b"),
                     piq_per_class={"car": {"piq": 0.2}, "sky": {"piq": 0.2}}, pq_per_space={"street": 0.3})
    best = bench._best(a, b)
    assert (best.miou, best.pq, best.ap, best.piq, best.overlap) == (0.5, 0.3, 0.2, 0.2, 0.3)
    assert best.rule == {"miou": "a", "pq": "b", "ap": "b", "piq": "a", "overlap": "b"}
    # The per-class PIQ and per-space PQ come from the rule that gave PIQ and PQ.
    assert best.piq_per_class == a.piq_per_class and best.pq_per_space == b.pq_per_space
    # Margins against each compared row, per benchmark and mean, under the two headings.
    against = bench.margins_against(results, ["M1", "M2"], ("Merged-M2F", "Nobody"))
    assert list(against) == ["Merged-M2F"] and against["Merged-M2F"]["M1"]["pq"] == pytest.approx(30.0)
    assert against["Merged-M2F"]["mean"]["piq"] == pytest.approx(15.0)
    assert bench.margins_markdown(against).splitlines()[-1].startswith("| Merged-M2F | +30.0 |")


def test_bad_config_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": {}, "benchmarks": ["M9"]}))
    assert bench.main(["--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "Unknown benchmarks ['M9']" in capsys.readouterr().err
    assert bench.main(["--config", str(tmp_path / "missing.json")]) == 2
    capsys.readouterr()
    assert bench.main(["--smoke", "--out", str(tmp_path / "out"), "--val-seed", "0"]) == 2
    assert "--val-seed 0 is the training seed" in capsys.readouterr().err


def test_a_run_with_another_budget_is_trained_again_not_reused(smoke, capsys):
    config, out, _ = smoke
    import dataclasses

    shorter = dataclasses.replace(config, iterations=3, benchmarks=("M1",))
    bench.run(shorter, out, methods=["resi"], retrain=False, progress=False, jobs=1)
    assert "== training resi for 3 iterations" in capsys.readouterr().out
    assert bench.checkpoint_step(bench.latest_checkpoint(out / "runs" / "resi")) == 3
    assert [p.name for p in sorted((out / "runs" / "resi").glob("step_*"))] == ["step_0000003"]

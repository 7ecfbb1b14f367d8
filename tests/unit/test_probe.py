"""The attack probe: report fields, judging, determinism, defaults and spec validation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from models import ModelConfig
from models.attacks import ATTACK_SPEC, default_eps, list_attacks
from models.probe import ProbeReport, SuiteSpec, parse_items, probe, probe_items, resolve_items
from tests.unit._attack_models import one_thread, synthetic, trained_model

SPECS: list[dict[str, Any]] = [
    {"name": "fgsm", "eps": 0.12},
    {"name": "pgd", "eps": 0.12, "steps": 4, "eot": 4},
    {"name": "apgd", "eps": 0.12, "steps": 4, "loss": "dlr"},
    {"name": "square", "eps": 0.12, "queries": 30, "samples": 4},
    {"name": "min_eps", "eps": 0.2, "steps": 3, "eot": 2, "iters": 2, "samples": 8},
]
CLEAN_FIELDS = {
    "index",
    "true_label",
    "label",
    "correct",
    "flip_prob",
    "flip_ci",
    "mean_probs",
    "predictive_entropy",
    "mutual_information",
    "flagged",
}
INPUT_FIELDS = {
    "index",
    "true_label",
    "clean_label",
    "adv_label",
    "success",
    "flip_prob",
    "flip_ci",
    "mean_probs",
    "predictive_entropy",
    "mutual_information",
    "flagged",
    "linf",
    "l2",
    "l0",
    "fools_after_rounding",
    "grad_evals",
    "queries",
    "info",
}
ATTACK_FIELDS = {
    "name",
    "kind",
    "eps",
    "settings",
    "seed",
    "grad_evals",
    "draws",
    "queries",
    "wall_time_s",
    "success_rate",
    "success_ci",
    "inputs",
    "info",
}


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic(10, torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def report(data: tuple[torch.Tensor, torch.Tensor]) -> ProbeReport:
    x, y = data
    return probe(trained_model("mfdv"), x, y, SPECS, judge_samples=32, seed=5, mi_threshold=0.01)


def test_report_has_every_field_and_is_json(report: ProbeReport, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d) == {"seed", "judge_samples", "mi_threshold", "flag", "clean", "attacks", "summary"}
    assert d["flag"]["signal"] == "mutual_information" and d["flag"]["threshold"] == 0.01
    assert d["seed"] == 5 and d["judge_samples"] == 32
    assert len(d["clean"]) == 10 and all(set(c) == CLEAN_FIELDS for c in d["clean"])
    assert [a["name"] for a in d["attacks"]] == [s["name"] for s in SPECS]
    for a in d["attacks"]:
        assert set(a) == ATTACK_FIELDS
        assert len(a["inputs"]) == 10
        for r in a["inputs"]:
            assert set(r) == INPUT_FIELDS
            assert len(r["mean_probs"]) == 4 and abs(sum(r["mean_probs"]) - 1) < 1e-4
            assert isinstance(r["flagged"], bool)
    summary = d["summary"]
    assert set(summary) == {"clean_accuracy", "attacks"}
    assert [s["name"] for s in summary["attacks"]] == [s["name"] for s in SPECS]
    assert set(summary["attacks"][0]) == {
        "name",
        "eps",
        "success_rate",
        "success_ci",
        "fools_after_rounding_rate",
        "flagged_rate",
        "wall_time_s",
    }


def test_judgements_are_consistent(report: ProbeReport, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    for c in report.clean:
        lo, hi = c.flip_ci
        assert lo <= c.flip_prob <= hi and c.correct == (c.label == c.true_label)
    for a in report.attacks:
        assert a.success_ci[0] <= a.success_rate <= a.success_ci[1]
        assert a.success_rate == pytest.approx(sum(r.success for r in a.inputs) / len(a.inputs))
        for r in a.inputs:
            lo, hi = r.flip_ci
            assert 0.0 <= lo <= r.flip_prob <= hi <= 1.0
            assert r.success == (r.adv_label != r.true_label)
            assert r.true_label == int(y[r.index])
            assert r.clean_label == report.clean[r.index].label
            assert r.flagged == (r.mutual_information > 0.01)
            assert 0 <= r.l0 <= x[0].numel() and r.linf <= r.l2 + 1e-6
            radius = a.settings["hi"] if a.name == "min_eps" else a.eps
            assert r.linf <= radius + 1e-6


def test_costs_and_settings_are_reported(report: ProbeReport) -> None:
    by_name = {a.name: a for a in report.attacks}
    fgsm, pgd, apgd, square, min_eps = (by_name[n] for n in ("fgsm", "pgd", "apgd", "square", "min_eps"))
    assert fgsm.settings == {"eot": 16, "noise_free": False}  # the spec's defaults, merged
    assert pgd.settings["eot"] == 4 and pgd.settings["alpha"] == pytest.approx(0.03) and pgd.settings["steps"] == 4
    assert apgd.settings == {"steps": 4, "eot": 20, "noise_free": False, "loss": "dlr", "rho": 0.75}
    assert pgd.grad_evals == 4 and pgd.draws == 16 and pgd.queries == 0
    assert all(r.grad_evals == 4 and r.queries == 0 for r in pgd.inputs)
    assert square.kind == "score" and square.grad_evals == 0
    assert square.queries == sum(r.queries for r in square.inputs) > 0
    assert all(1 <= r.queries <= 30 for r in square.inputs)
    assert {"lo", "hi", "found", "lo_tested"} <= set(min_eps.inputs[0].info)
    assert all(a.wall_time_s >= 0 for a in report.attacks)
    assert len({a.seed for a in report.attacks}) == len(report.attacks)


def test_probe_is_deterministic_for_a_seed(data: tuple[torch.Tensor, torch.Tensor], report: ProbeReport) -> None:
    x, y = data

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        for a in d["attacks"]:
            a.pop("wall_time_s")
        for s in d["summary"]["attacks"]:
            s.pop("wall_time_s")
        return d

    again = probe(trained_model("mfdv"), x, y, SPECS, judge_samples=32, seed=5, mi_threshold=0.01)
    assert strip(again.to_dict()) == strip(report.to_dict())


def test_a_vanilla_model_flips_all_or_nothing(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    rep = probe(trained_model("vanilla"), x, y, [{"name": "pgd", "eps": 0.3, "steps": 5}], judge_samples=8, seed=0)
    (a,) = rep.attacks
    assert a.success_rate > 0.5
    for r in a.inputs:
        assert r.flip_prob in (0.0, 1.0) and r.success == (r.flip_prob == 1.0)
        assert r.flagged is None and r.mutual_information == pytest.approx(0.0, abs=1e-6)
    assert rep.summary.attacks[0].flagged_rate is None


def test_default_eps_by_input_size() -> None:
    assert default_eps((1, 28, 28)) == 0.1
    assert default_eps((1, 8, 8)) == 0.1
    assert default_eps((3, 32, 32)) == 8 / 255
    req = ATTACK_SPEC.validate_python({"name": "pgd"}).resolve(ModelConfig().input_shape)
    assert req.eps == 0.1 and req.eot == 16 and req.steps == 20
    assert req.alpha == pytest.approx(0.025)
    assert SuiteSpec(suite="standard").resolve((3, 32, 32)).eps == pytest.approx(8 / 255)


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ([{"name": "nope", "eps": 0.1}], "'nope'.*" + list_attacks()[0]),
        ([{"name": "pgd", "eps": 0.1, "stepz": 3}], r"stepz"),
        ([{"name": "pgd", "eps": 0.1, "steps": 0}], "steps"),
        ([{"name": "pgd", "eps": 0.1, "steps": 2.5}], "integer"),
        ([{"name": "pgd", "eps": 0.1, "random_start": 1}], "bool"),
        ([{"name": "apgd", "eps": 0.1, "loss": "hinge"}], "loss"),
        ([{"name": "pgd", "eps": 2.0}], "eps"),
        ([{"name": "pgd", "eps": "big"}], "eps"),
        ([{"eps": 0.1}], "name"),
        ([], "non-empty"),
        ("nope", "unknown suite 'nope'"),
    ],
)
def test_invalid_specs_raise(
    specs: list[dict[str, Any]] | str, match: str, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    with pytest.raises(ValueError, match=match):
        probe(trained_model("vanilla"), x, y, specs)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "apgd", "rho": 1.5}, "rho.*less than 1"),
        ({"name": "apgd", "rho": 0}, "rho.*greater than 0"),
        ({"name": "square", "p_init": 0}, "p_init.*greater than 0"),
        ({"name": "square", "p_init": 2.0}, "p_init.*less than or equal to 1"),
        ({"name": "square", "samples": 0}, "samples"),
        ({"name": "evade_mi", "eot": 1, "threshold": 0.1}, "eot"),
        ({"name": "evade_mi"}, "threshold"),
        ({"name": "min_eps", "lo": 0.2, "hi": 0.1}, "lo < hi"),
        ({"name": "min_eps", "lo": 0.1, "hi": 0.1}, "lo < hi"),
        ({"name": "min_eps", "lo": 0.4}, "lo < hi"),
        ({"name": "min_eps", "hi": None}, "hi"),
    ],
)
def test_attack_specific_ranges_are_checked_before_running(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=f"(?s){match}"):
        parse_items([{"eps": 0.1, **spec}])


def test_attack_specific_ranges_accept_their_edges() -> None:
    specs = [
        {"name": "apgd", "rho": 0.5},
        {"name": "square", "p_init": 1.0},
        {"name": "min_eps", "lo": 0.05, "hi": 0.1},
        {"name": "pgd", "alpha": None},
    ]
    assert len(parse_items(specs)) == 4


def test_invalid_inputs_raise(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    model = trained_model("vanilla")
    spec = [{"name": "fgsm", "eps": 0.1}]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        probe(model, x * 2, y, spec)
    with pytest.raises(ValueError, match="x must"):
        probe(model, x[:, :, :4], y, spec)
    with pytest.raises(ValueError, match="labels"):
        probe(model, x, y + 10, spec)
    with pytest.raises(ValueError, match="judge_samples"):
        probe(model, x, y, spec, judge_samples=0)


def test_specs_are_resolved_once_and_probe_items_runs_them_as_given(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``resolve_items`` fills the defaults for the model's size; ``probe_items`` (what the service calls,
    after checking its caps on these very specs) runs them as they are, and refuses unresolved ones."""
    x, y = data
    model = trained_model("vanilla")
    items = resolve_items([{"name": "fgsm"}], model.cfg.input_shape)
    assert items[0].eps == default_eps(model.cfg.input_shape)
    assert resolve_items(items, model.cfg.input_shape) == items
    assert resolve_items("standard", model.cfg.input_shape)[0].eps == items[0].eps
    report = probe_items(model, x[:2], y[:2], items, judge_samples=4)
    assert report.attacks[0].eps == items[0].eps and report.attacks[0].settings == items[0].settings()
    with pytest.raises(ValueError, match="not resolved"):
        probe_items(model, x[:2], y[:2], parse_items([{"name": "fgsm"}]), judge_samples=4)


def test_after_attack_sees_each_report_and_can_stop_the_rest(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    specs = [{"name": "fgsm", "eps": 0.1}, {"name": "pgd", "eps": 0.1, "steps": 2}, {"name": "fgsm", "eps": 0.2}]
    seen: list[tuple[str, tuple[int, ...]]] = []

    def after(report: Any, x_adv: torch.Tensor) -> bool:
        seen.append((report.name, tuple(x_adv.shape)))
        assert (x_adv - x).abs().max() <= report.eps + 1e-6
        return report.name == "pgd"

    rep = probe(trained_model("vanilla"), x, y, specs, judge_samples=4, seed=0, after_attack=after)
    assert seen == [("fgsm", tuple(x.shape)), ("pgd", tuple(x.shape))]
    assert [a.name for a in rep.attacks] == ["fgsm", "pgd"]
    assert [s.name for s in rep.summary.attacks] == ["fgsm", "pgd"]
    full = probe(trained_model("vanilla"), x, y, specs[:2], judge_samples=4, seed=0)
    assert [a.success_rate for a in full.attacks] == [a.success_rate for a in rep.attacks]


def test_without_labels_the_clean_prediction_is_the_label(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    model = trained_model("mfdv")
    rep = probe(model, x, None, [{"name": "fgsm", "eps": 0.05}], judge_samples=16, seed=3)
    assert all(c.correct and c.true_label == c.label for c in rep.clean)
    # the same labels as judging clean inputs against the given labels, with the same seed
    given = probe(model, x, y, [{"name": "fgsm", "eps": 0.05}], judge_samples=16, seed=3)
    assert [c.label for c in rep.clean] == [c.label for c in given.clean]
    assert all(r.true_label == c.label for r, c in zip(rep.attacks[0].inputs, rep.clean, strict=True))

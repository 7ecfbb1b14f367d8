"""The adaptive protocol: the flag rule, its calibration, the flag-aware attacks and the union figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import summarize
from models.attacks import SUITES, make_attack, predict_draws, run_suite
from models.attacks.adaptive import flag_term, log_mean_softmax
from models.attacks.flag import FlagRule, calibrate_flag, default_signal, signal_score, threshold_for_rate
from models.attacks.suite import derive_seed, judge_inputs, merge_results
from models.probe import SuiteSpec, parse_item, probe
from tests.unit._attack_models import module_fixtures, synthetic, trained_model
from training.evaluate import evaluate, main

SMALL = SUITES["adaptive"].reduced(steps=6, eot=4, queries=0, judge_samples=32)


_single_thread, data = module_fixtures(24, 31)


@pytest.fixture(scope="module")
def mfdv_flag() -> FlagRule:
    x, y = synthetic(300, torch.Generator().manual_seed(5))
    return calibrate_flag(trained_model("mfdv"), x, y, rate=0.05, generator=torch.Generator().manual_seed(0)).rule


# ---- the flag rule and its calibration --------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.1, 0.37, 0.5, 0.99])
def test_threshold_for_rate_flags_at_most_the_rate(rate: float) -> None:
    g = torch.Generator().manual_seed(1)
    for scores in (torch.rand(200, generator=g), torch.randint(0, 5, (97,), generator=g).double(), torch.zeros(40)):
        t = threshold_for_rate(scores, rate)
        flagged = int((scores > t).sum())
        assert flagged <= rate * scores.numel() + 1e-9
        # and it is the smallest such threshold: any lower score value would flag more than the rate
        lower = scores[scores < t]
        if lower.numel():
            assert int((scores > lower.max()).sum()) > rate * scores.numel()
    distinct = torch.randperm(100, generator=g).double()
    assert int((distinct > threshold_for_rate(distinct, rate)).sum()) == int(np.floor(rate * 100 + 1e-9))


def test_threshold_for_rate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="rate"):
        threshold_for_rate(torch.rand(5), 1.0)
    with pytest.raises(ValueError, match="no scores"):
        threshold_for_rate(torch.zeros(0), 0.05)


@pytest.mark.parametrize("method", ["mfdv", "vanilla"])
def test_calibration_keeps_at_most_the_rate_of_correct_inputs_flagged(method: str) -> None:
    model = trained_model(method)
    x, y = synthetic(300, torch.Generator().manual_seed(5))
    cal = calibrate_flag(model, x, y, rate=0.05, samples=32, generator=torch.Generator().manual_seed(0))
    assert cal.rule.signal == default_signal(model) == ("mutual_information" if method == "mfdv" else "max_prob")
    assert 0 < cal.n_correct <= cal.n == 300
    assert cal.flagged_correct <= 0.05
    # recompute with the same draws: the same share of the correctly classified inputs is flagged
    logits = predict_draws(model, x, 32, torch.Generator().manual_seed(0))
    ok = summarize(logits).label == y
    share = float(cal.rule.flagged(logits)[ok].double().mean())
    assert share == pytest.approx(cal.flagged_correct) and share <= 0.05
    assert cal.describe()["calibration"]["rate"] == 0.05


def test_the_mi_flag_is_the_services_flagged() -> None:
    """``flagged`` in the service is ``summarize(logits).mutual_information > mi_threshold``."""
    logits = torch.randn(16, 30, 4, generator=torch.Generator().manual_seed(2))
    mi = summarize(logits).mutual_information
    t = float(mi.median())
    assert torch.equal(FlagRule("mutual_information", t).flagged(logits), mi > t)
    maxp = summarize(logits).mean_probs.amax(-1)
    assert torch.equal(FlagRule("max_prob", 0.4).flagged(logits), maxp < 0.6)
    torch.testing.assert_close(signal_score("mutual_information", logits), mi, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="signal"):
        FlagRule("entropy", 0.1)  # type: ignore[arg-type]


def test_a_deterministic_model_never_raises_the_mi_flag(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = data
    logits = predict_draws(trained_model("vanilla"), x, 16, torch.Generator().manual_seed(0))
    assert not FlagRule("mutual_information", 0.0).flagged(logits).any()
    assert FlagRule("max_prob", -1.0).flagged(logits).all()


# ---- the flag-aware attacks -----------------------------------------------------------------------------


def test_the_flag_term_rewards_only_wrong_answers_and_is_bounded() -> None:
    logits = torch.randn(8, 10, 4, generator=torch.Generator().manual_seed(3)) * 3
    label = log_mean_softmax(logits).argmax(-1)
    wrong_y = (label + 1) % 4
    rule = FlagRule("mutual_information", 0.01)
    assert torch.equal(flag_term(rule, logits, label, 0.8, 10.0), torch.zeros(10))  # right: no term
    term = flag_term(rule, logits, wrong_y, 0.8, 10.0)
    assert ((term > 0) & (term <= 10.0)).all()
    below = rule.score(logits) <= 0.8 * rule.threshold
    assert torch.allclose(term[below], torch.full_like(term[below], 10.0))
    assert (term[~below] < 10.0).all()


@pytest.mark.parametrize("name", ["flag_margin", "flag_targeted", "flag_apgd"])
def test_flag_attacks_fool_and_evade_a_loose_flag(name: str, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """With a budget that breaks the tiny model, a flag-aware attack finds unflagged errors."""
    model = trained_model("mfdv")
    x, y = data
    loose = 0.02  # nats
    spec = make_attack(name, eps=0.3, threshold=loose, steps=30, eot=8).resolve(model.cfg.input_shape)
    res = spec.run(model, x, y, generator=torch.Generator().manual_seed(0))
    assert (res.x_adv - x).abs().max() <= 0.3 + 1e-6
    ok, flagged = judge_inputs(model, res.x_adv, y, "strict", 32, torch.Generator().manual_seed(1), spec.rule)
    assert int((~ok & ~flagged).sum()) >= len(y) // 2
    if name == "flag_targeted":
        assert all(t != int(label) for t, label in zip(res.info["target"], y, strict=True))


def test_flag_specs_validate_their_settings() -> None:
    with pytest.raises(ValueError, match="threshold"):
        make_attack("flag_margin")
    with pytest.raises(ValueError, match="eot >= 2"):
        make_attack("flag_margin", threshold=0.1, eot=1)
    assert make_attack("flag_margin", threshold=0.1, eot=1, signal="max_prob").eot == 1
    a = make_attack("flag_margin", threshold=0.1, weight=1, eps=0.1)
    b = make_attack("flag_margin", threshold=0.1, weight=100, eps=0.1)
    assert a.key() != b.key() and a.key() == "flag_margin200_eot20_w1_eps0.1"


# ---- the adaptive suite ------------------------------------------------------------------------------


def test_the_adaptive_suite_lists_standard_then_the_flag_aware_attacks() -> None:
    s = SUITES["adaptive"]
    names = [a.name for a in s.attacks(0.1, 10, FlagRule("mutual_information", 0.05))]
    assert names[:5] == ["apgd", "apgd", "pgd", "surrogate", "square"]
    assert names[5:] == ["flag_margin"] * 3 + ["flag_targeted", "flag_apgd"]
    flagged = s.attacks(0.1, 10, FlagRule("max_prob", 0.3))[5:]
    assert {a.settings()["steps"] for a in flagged} == {200} and {a.settings()["eot"] for a in flagged} == {20}
    assert [a.settings()["weight"] for a in flagged[:3]] == [1.0, 10.0, 100.0]
    assert {a.settings()["signal"] for a in flagged} == {"max_prob"}
    assert s.cost(0.1, 1).gradient > SUITES["standard"].cost(0.1, 1).gradient
    assert SMALL.flag_steps == 12 and SMALL.flag_eot == 4 and SMALL.name.startswith("adaptive-reduced")


def test_the_adaptive_suite_needs_a_flag(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    with pytest.raises(ValueError, match="flag"):
        run_suite(trained_model("mfdv"), x, y, SMALL, eps=0.1)


def test_a_flag_that_fires_on_everything_leaves_no_unflagged_error(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    res = run_suite(trained_model("mfdv"), x, y, SMALL, eps=0.3, seed=1, flag=FlagRule("mutual_information", -1.0))
    s = res.summary()
    assert s["robust_accuracy"] < s["clean_accuracy"]  # the attacks do break inputs ...
    assert s["unflagged_errors"] == 0 and s["unflagged_error_under_attack"] == 0.0  # ... all of them flagged
    assert s["robust_or_flagged_accuracy"] == s["clean_accuracy"]
    assert s["clean_flagged_rate"] == 1.0
    # every clean-correct input stays under attack: a flagged error is no reason to stop
    assert all(a["evaluated"] == int(res.clean_correct.sum()) for a in s["per_attack"])


def test_a_flag_that_never_fires_turns_every_error_into_an_unflagged_one(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = data
    res = run_suite(trained_model("mfdv"), x, y, SMALL, eps=0.3, seed=1, flag=FlagRule("mutual_information", 1e9))
    s = res.summary()
    clean, robust = int(res.clean_correct.sum()), int(res.robust.sum())
    assert s["unflagged_errors"] == clean - robust > 0
    assert s["unflagged_error_under_attack"] == pytest.approx((clean - robust) / clean)
    assert s["robust_or_flagged_accuracy"] == s["robust_accuracy"]
    assert s["clean_flagged_rate"] == 0.0
    lo, hi = s["unflagged_error_ci"]
    assert lo <= s["unflagged_error_under_attack"] <= hi
    assert torch.equal(res.evaded_by >= 0, res.clean_correct & ~res.robust)


def test_a_deterministic_model_under_the_mi_flag_is_noted(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    res = run_suite(trained_model("vanilla"), x, y, SMALL, eps=0.2, seed=0, flag=FlagRule("mutual_information", 0.0))
    s = res.summary()
    assert any("deterministic" in n for n in s["notes"])
    assert s["robust_or_flagged_accuracy"] == s["robust_accuracy"]  # MI is 0: nothing is ever flagged


def test_the_union_is_at_least_as_strong_as_each_member(
    data: tuple[torch.Tensor, torch.Tensor], mfdv_flag: FlagRule
) -> None:
    """Per input, an attack that alone makes an unflagged error makes one inside the suite too.

    Each attack's stream derives from (seed, offset, key), so on a one-input call the member
    alone sees exactly what it sees in the suite (unless an earlier member already succeeded).
    """
    model = trained_model("mfdv")
    x, y = data
    eps, seed = 0.2, 7
    specs = [a.resolve(model.cfg.input_shape) for a in SMALL.attacks(eps, 4, mfdv_flag)]
    alone_total = [0] * len(specs)
    union_total = 0
    for i in range(8):
        xi, yi = x[i : i + 1], y[i : i + 1]
        res = run_suite(model, xi, yi, SMALL, eps=eps, seed=seed, offset=i, flag=mfdv_flag)
        union_total += int(res.evaded.sum())
        if not bool(res.clean_correct[0]):
            continue
        for j, spec in enumerate(specs):
            gen = torch.Generator().manual_seed(derive_seed(seed, i, spec.key(), "attack"))
            out = spec.run(model, xi, yi, generator=gen).x_adv
            judge_gen = torch.Generator().manual_seed(derive_seed(seed, i, spec.key(), "judge"))
            ok, flagged = judge_inputs(model, out, yi, "strict", SMALL.judge_samples, judge_gen, mfdv_flag)
            alone = bool(~ok[0] & ~flagged[0])
            alone_total[j] += alone
            if alone:
                assert bool(res.evaded[0]), f"{spec.key()} evades alone on input {i}, the suite does not"
    assert union_total >= max(alone_total) > 0  # some member succeeds somewhere: the check has teeth


def test_adaptive_results_merge_over_slices(data: tuple[torch.Tensor, torch.Tensor], mfdv_flag: FlagRule) -> None:
    x, y = data
    model = trained_model("mfdv")
    parts = [
        run_suite(model, x[i : i + 8], y[i : i + 8], SMALL, eps=0.2, seed=2, offset=i, flag=mfdv_flag)
        for i in (0, 8, 16)
    ]
    whole = merge_results(parts)
    s = whole.summary()
    assert whole.n == 24 and s["unflagged_errors"] == sum(int(p.evaded.sum()) for p in parts)
    assert sum(a["evaded"] for a in s["per_attack"]) == s["unflagged_errors"]
    assert s["flag"]["signal"] == "mutual_information" and s["flag"]["threshold"] == mfdv_flag.threshold


# ---- the probe -----------------------------------------------------------------------------------------


def test_the_probe_runs_adaptive_with_the_services_flag(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    model = trained_model("mfdv")
    spec = SuiteSpec(suite="adaptive", eps=0.3)
    assert parse_item("adaptive") == SuiteSpec(suite="adaptive")
    small = SMALL.reduced(steps=2, eot=2, queries=0, judge_samples=16)
    import models.attacks.suite as suite_mod

    original = suite_mod.SUITES["adaptive"]
    suite_mod.SUITES["adaptive"] = small  # keep the test short; the probe resolves the suite by name
    try:
        rep = probe(model, x[:6], y[:6], spec, judge_samples=16, seed=0, mi_threshold=1e9)
    finally:
        suite_mod.SUITES["adaptive"] = original
    (entry,) = rep.attacks
    suite = entry.info["suite"]
    assert suite["flag"]["threshold"] == 1e9 and suite["flag"]["signal"] == "mutual_information"
    assert entry.success_rate == pytest.approx(1 - suite["robust_or_flagged_accuracy"])
    unflagged_by = [r.info["unflagged_by"] for r in entry.inputs]
    assert [r.success for r in entry.inputs] == [u != -1 for u in unflagged_by]


def test_the_probe_validates_adaptive_settings(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    with pytest.raises(ValueError, match="the model's flag or flag_threshold"):
        probe(trained_model("mfdv"), x[:2], y[:2], "adaptive", mi_threshold=None)
    with pytest.raises(ValueError, match="adaptive suite only"):
        SuiteSpec(suite="standard", flag_threshold=0.1)
    mi = FlagRule("mutual_information", 0.05)
    rule = SuiteSpec(suite="adaptive", flag_signal="max_prob", flag_threshold=0.2).flag_rule(mi)
    assert rule == FlagRule("max_prob", 0.2)
    assert SuiteSpec(suite="adaptive").flag_rule(mi) == mi  # the model's own flag by default
    assert SuiteSpec(suite="adaptive").flag_rule(FlagRule("max_prob", 0.3)) == FlagRule("max_prob", 0.3)
    assert SuiteSpec(suite="adaptive", flag_threshold=0.2).flag_rule(mi) == FlagRule("mutual_information", 0.2)
    with pytest.raises(ValueError, match="needs flag_threshold: the model's own flag is mutual_information"):
        SuiteSpec(suite="adaptive", flag_signal="max_prob").flag_rule(mi)
    union = FlagRule.union({"mutual_information": 0.05, "max_prob": 0.4})
    assert SuiteSpec(suite="adaptive").flag_rule(union) == union  # both clauses evaded by default
    with pytest.raises(ValueError, match="needs flag_threshold: the model's own flag is mutual_information_or_max"):
        SuiteSpec(suite="adaptive", flag_signal="mutual_information").flag_rule(union)
    with pytest.raises(ValueError, match="name the signal it is for"):
        SuiteSpec(suite="adaptive", flag_threshold=0.1).flag_rule(union)
    spec = SuiteSpec(suite="adaptive", flag_signal="max_prob", flag_threshold=0.3)
    assert spec.flag_rule(union) == FlagRule("max_prob", 0.3)


def test_the_probe_flags_by_the_models_rule(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``flag`` (a FlagRule) decides ``flagged`` in the report, as the service's predictions do: a max_prob rule
    on a deterministic model flags its unconfident inputs, where mutual information never could."""
    x, y = data
    model = trained_model("vanilla")
    logits = predict_draws(model, x, 8, torch.Generator().manual_seed(0))
    threshold = float((1 - torch.softmax(logits, -1).mean(0).amax(-1)).median())  # about half flagged
    rule = FlagRule("max_prob", threshold)
    rep = probe(model, x, y, [{"name": "fgsm", "eps": 0.05}], judge_samples=8, seed=0, flag=rule)
    assert rep.flag is not None and rep.flag["signal"] == "max_prob" and rep.flag["threshold"] == threshold
    flagged = [c.flagged for c in rep.clean]
    assert flagged == [1 - max(c.mean_probs) > threshold for c in rep.clean]
    assert 0 < sum(flagged) < len(flagged)
    mi_only = probe(model, x, y, [{"name": "fgsm", "eps": 0.05}], judge_samples=8, seed=0, mi_threshold=0.0)
    assert not any(c.flagged for c in mi_only.clean)


# ---- training.evaluate ------------------------------------------------------------------------------


def test_evaluate_calibrates_on_the_data_it_is_given(tmp_path: Path) -> None:
    from tests.fixtures import make_tiny_dataset, train_tiny

    model, _ = train_tiny("mfdv", steps=40)
    test = make_tiny_dataset(n=30, seed=4)
    held = make_tiny_dataset(n=60, seed=8)
    tiny = SMALL.reduced(steps=2, eot=2, queries=0, judge_samples=8)
    m = evaluate(model, test, samples=4, suites=[tiny], attack_n=10, calibration=held, calibration_source="held")
    (summary,) = m["robust"].values()
    cal = summary["flag"]["calibration"]
    assert cal["source"] == "held" and cal["n"] == 60 and cal["flagged_correct"] <= 0.05
    assert summary["n"] == 10 and "unflagged_error_under_attack" in summary
    m = evaluate(model, test, samples=4, suites=[tiny], attack_n=10)
    (summary,) = m["robust"].values()
    assert summary["flag"]["calibration"]["n"] == 20 and "not attacked" in summary["flag"]["calibration"]["source"]
    m = evaluate(model, test, samples=4, suites=[tiny], attack_n=None)  # nothing held out, nothing left over
    (summary,) = m["robust"].values()
    assert summary["flag"]["calibration"]["n"] == 30 and "themselves" in summary["flag"]["calibration"]["source"]


def test_cli_adaptive_calibrates_on_the_held_out_training_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fixtures import make_tiny_dataset, train_tiny
    from training.export import export_checkpoint

    ds = make_tiny_dataset(n=100, seed=9)
    npz = tmp_path / "t.npz"
    np.savez(npz, x=ds.x.numpy(), y=ds.y.numpy(), x_test=ds.x.numpy()[:12], y_test=ds.y.numpy()[:12])
    model, tiny = train_tiny("vanilla", steps=40)
    ck = export_checkpoint(
        model,
        tmp_path / "ck",
        class_names=tiny.class_names,
        dataset="t",
        mi_threshold=0.0,
        train_args={"dataset": str(npz), "val_size": 20, "seed": 0},
    )
    argv = [
        str(ck),
        "--dataset",
        str(npz),
        "--suite",
        "adaptive",
        "--samples",
        "4",
        "--attack-n",
        "6",
        "--steps",
        "2",
        "--eot",
        "2",
    ]
    main([*argv, "--queries", "0"])
    out = json.loads(capsys.readouterr().out.strip())
    (summary,) = out["robust"].values()
    flag = summary["flag"]
    assert flag["signal"] == "max_prob"  # vanilla: its own confidence signal
    assert flag["calibration"]["n"] == 20 and "held-out training images" in flag["calibration"]["source"]
    assert "val_size=20" in flag["calibration"]["source"]
    main([*argv, "--queries", "0", "--flag-signal", "mutual_information", "--flag-threshold", "manifest"])
    (summary,) = json.loads(capsys.readouterr().out.strip())["robust"].values()
    assert summary["flag"]["threshold"] == 0.0 and "calibration" not in summary["flag"]
    assert any("deterministic" in n for n in summary["notes"])

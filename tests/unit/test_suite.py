"""The evaluation suites: worst case per input, strict judging, slicing invariance, partial runs."""

from __future__ import annotations

import pytest
import torch

from models.attacks import SUITES, run_attack, run_suite
from models.attacks.suite import judge_correct, merge_results
from models.prediction import majority_vote, predict_label
from models.probe import probe
from tests.unit._attack_models import module_fixtures, trained_model

SMALL = SUITES["standard"].reduced(steps=8, eot=4, queries=40, judge_samples=32)


_single_thread, data = module_fixtures(40, 21)


def test_standard_runs_every_attack_in_order_and_takes_the_worst_case(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    res = run_suite(trained_model("mfdv"), x, y, SMALL, eps=0.12, seed=3)
    assert [a.name for a in res.attacks] == ["apgd", "apgd", "pgd", "surrogate", "square"]
    assert res.attacks[0].settings["loss"] == "ce" and res.attacks[1].settings["loss"] == "dlr"
    assert not (res.robust & ~res.clean_correct).any()  # robust implies right when clean
    assert res.attacks[0].evaluated == int(res.clean_correct.sum())
    for before, after in zip(res.attacks, res.attacks[1:], strict=False):
        assert after.evaluated == before.evaluated - before.fooled  # later attacks see the survivors only
    fooled = sum(a.fooled for a in res.attacks)
    assert int(res.robust.sum()) == int(res.clean_correct.sum()) - fooled
    assert fooled > 0 and res.robust.any()  # the budget is neither trivial nor hopeless here
    assert ((res.fooled_by >= 0) == (res.clean_correct & ~res.robust)).all()
    assert (res.x_adv - x).abs().max() <= 0.12 + 1e-6
    s = res.summary()
    assert s["robust_ci"][0] <= s["robust_accuracy"] <= s["robust_ci"][1]
    assert s["judge"] == "strict" and s["judge_samples"] == 32 and len(s["attacks"]) == 5


def test_the_worst_case_is_no_better_than_any_single_attack(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    model = trained_model("mfdv")
    res = run_suite(model, x, y, SMALL, eps=0.12, seed=3)
    g = torch.Generator().manual_seed(9)
    alone = run_attack("apgd", model, x, y, eps=0.12, generator=g, steps=8, eot=4).x_adv
    right_alone = judge_correct(model, alone, y, "strict", 32, torch.Generator().manual_seed(1))
    assert int(res.robust.sum()) <= int(right_alone.sum()) + 2  # fresh draws judge both: a little noise


def test_slices_give_the_same_answer_as_one_call(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    model = trained_model("mfdv")
    whole = merge_results(
        [run_suite(model, x[i : i + 10], y[i : i + 10], SMALL, eps=0.1, seed=4, offset=i) for i in range(0, 40, 10)]
    )
    again = merge_results(
        [run_suite(model, x[i : i + 10], y[i : i + 10], SMALL, eps=0.1, seed=4, offset=i) for i in (0, 10, 20, 30)]
    )
    assert torch.equal(whole.robust, again.robust) and torch.equal(whole.x_adv, again.x_adv)
    other_seed = merge_results(
        [run_suite(model, x[i : i + 10], y[i : i + 10], SMALL, eps=0.1, seed=5, offset=i) for i in range(0, 40, 10)]
    )
    assert not torch.equal(whole.x_adv, other_seed.x_adv)
    assert whole.n == 40 and whole.attacks[0].evaluated == int(whole.clean_correct.sum())


def test_strict_judging_needs_both_rules() -> None:
    logits = torch.tensor(
        [
            [[5.0, 0.0]],  # draw 1: class 0, very sure
            [[0.0, 0.1]],  # draws 2-3: class 1, barely
            [[0.0, 0.1]],
        ]
    )  # (T=3, B=1, K=2): the mean softmax says 0, the majority says 1
    assert int(predict_label(logits)[0]) == 0 and int(majority_vote(logits)[0]) == 1


def test_published_judges_one_draw_and_reports_its_protocol(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    res = run_suite(trained_model("mfdv"), x, y, "published", eps=0.12, seed=0)
    (attack,) = res.attacks
    assert attack.name == "pgd" and attack.settings["steps"] == 10 and attack.settings["eot"] == 50
    assert attack.settings["alpha"] == pytest.approx(0.012)
    assert res.settings["judge"] == "single_draw" and res.settings["judge_samples"] == 1


def test_should_stop_ends_the_run_with_a_partial_result(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    res = run_suite(trained_model("mfdv"), x, y, SMALL, eps=0.12, seed=0, should_stop=stop)
    assert not res.complete and res.attacks[-1].stopped
    assert len(res.attacks) == 1 and res.attacks[0].grad_evals <= 4


def test_square_n_limits_the_black_box_attack_to_a_prefix(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    suite = SMALL.__class__(**{**SMALL.__dict__, "square_n": 5})
    res = run_suite(trained_model("vanilla"), x, y, suite, eps=0.05, seed=0)
    assert res.attacks[-1].name == "square" and res.attacks[-1].evaluated <= 5
    assert res.summary()["square_n"] == 5


def test_the_probe_runs_a_suite_as_one_entry(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    model = trained_model("mfdv")
    rep = probe(model, x[:8], y[:8], {"suite": "published", "eps": 0.12}, judge_samples=16, seed=2)
    (entry,) = rep.attacks
    assert entry.name == "published" and entry.kind == "suite" and entry.eps == pytest.approx(0.12)
    suite = entry.info["suite"]
    assert suite["n"] == 8 and suite["judge"] == "single_draw"
    fooled_by = [r.info["fooled_by"] for r in entry.inputs]
    assert [r.success for r in entry.inputs] == [f != -1 for f in fooled_by]
    assert entry.success_rate == pytest.approx(1 - suite["robust_accuracy"])

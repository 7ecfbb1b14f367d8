"""A union flag rule (``models.attacks.flag``): flagged when any clause fires, calibrated together, evaded together."""

from __future__ import annotations

import pytest
import torch

from models.attacks import make_attack
from models.attacks.flag import UNION, FlagRule, signal_value, union_thresholds


def _scores(n: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g)
    return {"mutual_information": a, "max_prob": 0.5 * a + 0.5 * torch.rand(n, generator=g)}  # correlated


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.2])
def test_union_thresholds_keep_to_the_rate_and_are_the_largest_share(rate: float) -> None:
    scores = _scores()
    t = union_thresholds(scores, rate)
    flagged = (scores["mutual_information"] > t["mutual_information"]) | (scores["max_prob"] > t["max_prob"])
    assert flagged.sum() <= int(rate * 1000)
    # each clause alone flags the same count k; one more per clause would break the rate
    k = {s: int((v > t[s]).sum()) for s, v in scores.items()}
    assert k["mutual_information"] == k["max_prob"]
    nxt = {s: float(v.sort(descending=True).values[k[s] + 1]) for s, v in scores.items()}
    more = (scores["mutual_information"] > nxt["mutual_information"]) | (scores["max_prob"] > nxt["max_prob"])
    assert more.sum() > int(rate * 1000)


def test_identical_signals_give_the_single_signal_threshold() -> None:
    s = torch.rand(500, generator=torch.Generator().manual_seed(1))
    t = union_thresholds({"mutual_information": s, "max_prob": s}, 0.05)
    assert (s > t["max_prob"]).sum() == 25


def test_a_union_rule_flags_when_either_clause_fires() -> None:
    logits = torch.randn(8, 64, 10, generator=torch.Generator().manual_seed(2)) * 2
    mi, mp = signal_value("mutual_information", logits), signal_value("max_prob", logits)
    t_mi, t_mp = float(mi.median()), float(mp.median())
    rule = FlagRule.union({"mutual_information": t_mi, "max_prob": t_mp})
    assert rule.kind == UNION and rule.signals() == ("mutual_information", "max_prob")
    assert torch.equal(rule.flagged(logits), (mi > t_mi) | (mp > t_mp))
    assert (mi > t_mi).sum() < rule.flagged(logits).sum()  # more than one clause alone
    d = rule.describe()
    assert d["signal"] == UNION and [c["signal"] for c in d["clauses"]] == ["mutual_information", "max_prob"]
    assert " or " in d["rule"]
    assert FlagRule.from_manifest({"flag": d}) == rule


def test_the_penalty_sums_every_clause() -> None:
    logits = torch.randn(8, 16, 10, generator=torch.Generator().manual_seed(3))
    one = FlagRule("mutual_information", 0.01)
    other = FlagRule("max_prob", 0.05)
    both = FlagRule.union({"mutual_information": 0.01, "max_prob": 0.05})
    torch.testing.assert_close(both.penalty(logits, 0.8), one.penalty(logits, 0.8) + other.penalty(logits, 0.8))


def test_a_rule_names_each_signal_once() -> None:
    with pytest.raises(ValueError, match="once"):
        FlagRule("max_prob", 0.1, (("max_prob", 0.2),))
    with pytest.raises(ValueError, match="unknown flag signal"):
        FlagRule("max_prob", 0.1, (("entropy", 0.2),))  # type: ignore[arg-type]


def test_flag_aware_attacks_carry_every_clause() -> None:
    attack = make_attack(
        "flag_margin",
        eps=0.1,
        threshold=0.01,
        signal="mutual_information",
        also=[{"signal": "max_prob", "threshold": 0.3}],
    )
    assert attack.rule == FlagRule.union({"mutual_information": 0.01, "max_prob": 0.3})
    with pytest.raises(ValueError, match="eot >= 2"):
        make_attack(
            "flag_margin",
            eps=0.1,
            threshold=0.3,
            signal="max_prob",
            also=[{"signal": "mutual_information", "threshold": 0.01}],
            eot=1,
        )


def test_the_adaptive_suite_evades_the_whole_union() -> None:
    from models.attacks.suite import get_suite

    rule = FlagRule.union({"mutual_information": 0.02, "max_prob": 0.4})
    aware = [a for a in get_suite("adaptive").attacks(0.1, 10, rule) if a.name.startswith("flag_")]
    assert len(aware) >= 3 and all(a.rule == rule for a in aware)
    settings = get_suite("adaptive").describe(0.1, 10, rule)
    assert settings["flag"]["signal"] == UNION

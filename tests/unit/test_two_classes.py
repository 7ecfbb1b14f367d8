"""Two-class models: every registered attack, every suite and the probe work for K = 2.

DLR's denominator (z_pi1 - z_pi3) needs a third logit; with two classes the loss falls back to
the logit margin and the suites and reports say so.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from models import ModelConfig, StochasticClassifier, build_model
from models.attacks import SUITES, get_attack, list_attacks, run_attack, run_suite
from models.attacks.base import DLR_FALLBACK_NOTE, dlr_loss, eot_loss_grad, margin_loss
from models.attacks.flag import FlagRule
from models.probe import probe
from tests.unit._attack_models import one_thread

IMG = 8


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def two_class_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 brightens the top half by 0.3, class 1 the bottom half, over uniform [0, 0.6) noise."""
    y = torch.randint(0, 2, (n,), generator=generator)
    x = torch.rand(n, 1, IMG, IMG, generator=generator) * 0.6
    bright = torch.zeros(2, 1, IMG, IMG)
    bright[0, :, : IMG // 2] = 0.3
    bright[1, :, IMG // 2 :] = 0.3
    return (x + bright[y]).clamp(0, 1), y


@functools.cache
def two_class_model(method: str = "mfdv", steps: int = 100) -> StochasticClassifier:
    """A tiny_cnn with 2 classes trained on ``two_class_data`` (eval mode, frozen)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="tiny_cnn", method=method, feature_dim=16, img_size=IMG, num_classes=2, sigma_init=0.3)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    with one_thread(), torch.enable_grad():
        for _ in range(steps):
            x, y = two_class_data(64, gen)
            logits = model(x, model.sample_noise(4, gen))
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0])) + 0.05 * model.head.regularizer()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval().requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return two_class_data(16, torch.Generator().manual_seed(7))


def test_the_two_class_model_learned_its_task(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    with torch.no_grad():
        acc = (two_class_model()(x, None)[0].argmax(-1) == y).float().mean().item()
    assert acc >= 0.8


def test_dlr_falls_back_to_the_margin_loss_for_two_classes_only() -> None:
    g = torch.Generator().manual_seed(0)
    two = torch.randn(3, 5, 2, generator=g)
    y2 = torch.randint(0, 2, (5,), generator=g)
    expected = two.gather(-1, (1 - y2).view(1, -1, 1).expand(3, -1, 1)).squeeze(-1) - two.gather(
        -1, y2.view(1, -1, 1).expand(3, -1, 1)
    ).squeeze(-1)
    torch.testing.assert_close(dlr_loss(two, y2), expected)
    torch.testing.assert_close(margin_loss(two, y2), expected)
    # With 3 or more classes DLR keeps its normalisation: scaling the logits leaves it unchanged.
    three = torch.randn(3, 5, 4, generator=g)
    y4 = torch.randint(0, 4, (5,), generator=g)
    torch.testing.assert_close(dlr_loss(7.0 * three, y4), dlr_loss(three, y4), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(dlr_loss(three, y4), margin_loss(three, y4))


def test_dlr_gradient_is_not_zero_for_two_classes(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    loss, grad = eot_loss_grad(two_class_model(), x, y, 4, torch.Generator().manual_seed(0), loss="dlr")
    assert torch.isfinite(loss).all() and grad.abs().sum() > 0


def _fast_settings(name: str) -> dict[str, object]:
    small = {"steps": 3, "queries": 30, "iters": 2, "eot": 2, "samples": 4, "hi": 0.2, "threshold": 0.05}
    return {k: v for k, v in small.items() if k in get_attack(name).model_fields}


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_runs_on_a_two_class_model(name: str, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = two_class_model()
    x, y = data
    settings = _fast_settings(name)
    res = run_attack(name, model, x, y, eps=0.15, generator=torch.Generator().manual_seed(0), **settings)
    assert res.x_adv.shape == x.shape and torch.isfinite(res.x_adv).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


@pytest.mark.parametrize("loss", ["dlr", "margin"])
def test_apgd_dlr_on_two_classes_attacks_and_says_what_it_ran(
    loss: str, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model = two_class_model()
    x, y = data
    res = run_attack(
        "apgd", model, x, y, eps=0.25, generator=torch.Generator().manual_seed(0), steps=10, eot=4, loss=loss
    )
    with torch.no_grad():
        before = (model(x, None)[0].argmax(-1) == y).sum()
        after = (model(res.x_adv, None)[0].argmax(-1) == y).sum()
    assert after < before  # the fallback loss has a useful gradient
    assert (res.info.get("note") == DLR_FALLBACK_NOTE) == (loss == "dlr")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_suite_runs_on_a_two_class_model_and_notes_substitutions(
    suite: str, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model = two_class_model()
    x, y = data
    s = SUITES[suite]
    if s.judge == "strict":
        s = s.reduced(steps=3, eot=2, queries=20, judge_samples=8)
    flag = FlagRule("mutual_information", 0.01) if s.flag_aware else None
    res = run_suite(model, x, y, s, eps=0.15, seed=0, flag=flag)
    summary = res.summary()
    assert summary["n"] == 16 and 0 <= summary["robust_accuracy"] <= summary["clean_accuracy"]
    if s.judge == "strict":
        losses = [a["loss"] for a in summary["attacks"] if a["name"] == "apgd"]
        assert losses == ["ce", "margin"]
        assert any("DLR" in n and "margin" in n for n in summary["notes"])
    else:
        assert summary["notes"] == []
    if s.flag_aware:
        assert 0 <= summary["robust_or_flagged_accuracy"] <= summary["clean_accuracy"]
        assert [a["loss"] for a in summary["attacks"] if a["name"] == "flag_apgd"] == ["ce"]


def test_the_same_suite_keeps_dlr_and_no_note_with_four_classes() -> None:
    s = SUITES["standard"]
    assert [a.model_dump().get("loss") for a in s.attacks(0.1, 4)][:2] == ["ce", "dlr"]
    assert s.describe(0.1, 4)["notes"] == []
    assert s.describe(0.1, 2)["attacks"][1]["loss"] == "margin"


def test_the_probe_runs_standard_and_apgd_dlr_on_two_classes(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = two_class_model()
    x, y = data
    rep = probe(model, x[:4], y[:4], [{"name": "apgd", "loss": "dlr", "steps": 3, "eot": 2}], judge_samples=8)
    assert rep.attacks[0].info["note"] == DLR_FALLBACK_NOTE
    rep = probe(model, x[:2], y[:2], "standard", judge_samples=8)  # the full suite, as the service runs it
    (entry,) = rep.attacks
    assert entry.name == "standard" and len(entry.inputs) == 2
    assert entry.info["suite"]["notes"] and entry.info["suite"]["attacks"][1]["loss"] == "margin"

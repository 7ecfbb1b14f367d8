"""APGD, Square, min-eps and the EOT gradient, on tiny models trained on a synthetic task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.attacks import eot_grad, get_attack, list_attacks, run_attack
from models.attacks.base import dlr_loss, eot_loss_grad
from models.attacks.square import model_score_fn, p_selection, square_linf
from tests.unit._attack_models import module_fixtures, synthetic, tiny_model, trained_model

_single_thread, data = module_fixtures(48, 1)


def noise_free_acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x, None)[0].argmax(-1) == y).float().mean().item()


@pytest.mark.parametrize("method", ["mfdv", "wca"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_eot_grad_is_mean_of_per_draw_grads(method: str, loss: str) -> None:
    model = tiny_model(method, seed=2)
    if method == "wca":  # a full lower-triangular L, so the noise is correlated
        with torch.no_grad():
            model.head.L.add_(0.2 * torch.randn_like(model.head.L))
    x, y = synthetic(6, torch.Generator().manual_seed(3))
    t = 8
    one_pass = eot_grad(model, x, y, t, torch.Generator().manual_seed(5), loss=loss)
    noise = model.sample_noise(t, torch.Generator().manual_seed(5))  # the same draws
    grads = []
    for i in range(t):
        xi = x.clone().requires_grad_(True)
        logits = model(xi, noise[i : i + 1])  # (1, B, K)
        value = F.cross_entropy(logits[0], y, reduction="sum") if loss == "ce" else dlr_loss(logits, y).sum()
        grads.append(torch.autograd.grad(value, xi)[0])
    torch.testing.assert_close(one_pass, torch.stack(grads).mean(0), atol=1e-5, rtol=1e-4)
    # APGD's helper returns the same gradient plus the per-input loss from the same pass.
    per_input, grad = eot_loss_grad(model, x, y, t, torch.Generator().manual_seed(5), loss=loss)
    torch.testing.assert_close(grad, one_pass, atol=1e-6, rtol=1e-5)
    assert per_input.shape == (6,)


def _fast_settings(name: str) -> dict[str, object]:
    small = {"steps": 3, "queries": 40, "iters": 2, "eot": 2, "samples": 4, "hi": 0.2, "threshold": 0.05}
    return {k: v for k, v in small.items() if k in get_attack(name).model_fields}


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_stays_in_its_ball(name: str, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = trained_model("mfdv")
    x, y = data[0][:16], data[1][:16]
    settings = _fast_settings(name)
    eps = 0.12
    res = run_attack(name, model, x, y, eps=eps, generator=torch.Generator().manual_seed(0), **settings)
    radius = float(settings.get("hi", eps))
    delta = (res.x_adv - x).flatten(1)
    dist = delta.norm(dim=1) if "l2" in name else delta.abs().amax(1)
    assert res.x_adv.shape == x.shape
    assert (dist <= radius + 1e-6).all(), f"{name} left its ball: max {dist.max():.6f} > {radius}"
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    assert not res.x_adv.requires_grad


def test_apgd_ce_and_dlr_reduce_accuracy_at_least_as_much_as_fgsm(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = trained_model("vanilla")
    x, y = data
    eps = 0.15
    clean = noise_free_acc(model, x, y)
    fgsm = noise_free_acc(model, run_attack("fgsm", model, x, y, eps=eps).x_adv, y)
    for loss in ("ce", "dlr"):
        res = run_attack("apgd", model, x, y, eps=eps, generator=torch.Generator().manual_seed(0), loss=loss, steps=20)
        acc = noise_free_acc(model, res.x_adv, y)
        assert acc <= fgsm, f"apgd-{loss} {acc:.3f} > fgsm {fgsm:.3f}"
        assert acc < clean
        assert res.grad_evals == 21 and len(res.info["best_loss"]) == len(y)  # steps + the start point


def test_apgd_keeps_the_highest_loss_point(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = trained_model("vanilla")
    x, y = data
    res = run_attack("apgd", model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0), steps=10)
    with torch.no_grad():
        ce_adv = F.cross_entropy(model(res.x_adv, None)[0], y, reduction="none")
        ce_clean = F.cross_entropy(model(x, None)[0], y, reduction="none")
    torch.testing.assert_close(ce_adv, torch.tensor(res.info["best_loss"]), atol=1e-4, rtol=1e-4)
    assert (ce_adv >= ce_clean - 1e-4).float().mean() > 0.9


def test_apgd_rejects_bad_settings(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = trained_model("vanilla")
    x, y = data
    with pytest.raises(ValueError, match="loss"):
        run_attack("apgd", model, x, y, eps=0.1, loss="hinge")
    with pytest.raises(ValueError, match="rho"):
        run_attack("apgd", model, x, y, eps=0.1, rho=1.5)
    with pytest.raises(ValueError, match="stepz"):
        run_attack("apgd", model, x, y, eps=0.1, stepz=3)


def test_square_fools_a_vanilla_model_without_gradients(
    data: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = trained_model("vanilla")
    x, y = data[0][:32], data[1][:32]

    def no_gradients(*args: object, **kwargs: object) -> None:
        raise AssertionError("the square attack asked for a gradient")

    monkeypatch.setattr(torch.autograd, "grad", no_gradients)
    monkeypatch.setattr(torch.Tensor, "backward", no_gradients)
    res = run_attack("square", model, x, y, eps=0.15, generator=torch.Generator().manual_seed(0), queries=300)
    monkeypatch.undo()

    fooled = torch.tensor(res.info["fooled"])
    with torch.no_grad():
        wrong = model(res.x_adv, None)[0].argmax(-1) != y
    assert wrong.float().mean() >= 0.3, f"square fooled only {wrong.float().mean():.2f}"
    assert torch.equal(wrong, fooled)  # vanilla: the scores it saw are the noise-free scores
    used = torch.tensor(res.info["queries_per_input"])
    assert res.queries == int(used.sum()) and (used <= 300).all()
    assert (used[fooled] < 300).all()  # stopped once fooled
    assert (used[~fooled] == 300).all()  # the rest spent the whole budget


def test_square_core_only_calls_the_score_function(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = trained_model("mfdv")
    x, y = data[0][:16], data[1][:16]
    inner = model_score_fn(model, samples=8, generator=torch.Generator().manual_seed(1))
    seen: list[int] = []

    def score(xs: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and not xs.requires_grad
        seen.append(xs.shape[0])
        return inner(xs)

    res = square_linf(score, x, y, eps=0.15, queries=50, generator=torch.Generator().manual_seed(2))
    assert res.info["score_calls"] == len(seen)
    assert res.queries == sum(seen) == sum(res.info["queries_per_input"])
    assert res.grad_evals == 0
    assert (res.x_adv - x).abs().max() <= 0.15 + 1e-6


def test_square_schedule_halves_p() -> None:
    assert p_selection(0.8, 0, 1000) == 0.8
    assert p_selection(0.8, 3, 1000) == 0.4  # iteration 30 of 10 000
    assert p_selection(0.8, 999, 1000) == 0.8 / 512


def test_min_eps_brackets_are_ordered_and_hi_succeeds(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = trained_model("vanilla")
    x, y = data[0][:24], data[1][:24]
    iters, hi0 = 4, 0.3
    res = run_attack(
        "min_eps", model, x, y, eps=0.0, generator=torch.Generator().manual_seed(0), steps=10, eot=1, iters=iters
    )
    lo, hi, found = res.info["lo"], res.info["hi"], res.info["found"]
    assert any(found)
    linf = (res.x_adv - x).flatten(1).abs().amax(1)
    with torch.no_grad():
        wrong = model(res.x_adv, None)[0].argmax(-1) != y
    for i in range(len(y)):
        if found[i]:
            assert 0.0 <= lo[i] <= hi[i] <= hi0
            assert linf[i] <= hi[i] + 1e-6
            assert wrong[i], f"input {i}: x_adv at hi={hi[i]} does not fool the model"
            if hi[i] > 0:
                assert hi[i] - lo[i] <= hi0 / 2**iters + 1e-6
        else:
            assert hi[i] is None and lo[i] == pytest.approx(hi0)
            assert torch.equal(res.x_adv[i], x[i])


def test_min_eps_on_a_stochastic_model_orders_brackets(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = trained_model("mfdv")
    x, y = data[0][:12], data[1][:12]
    res = run_attack("min_eps", model, x, y, eps=0.0, generator=torch.Generator().manual_seed(0), steps=5, iters=3)
    for lo, hi, ok in zip(res.info["lo"], res.info["hi"], res.info["found"], strict=True):
        assert (lo <= hi) if ok else hi is None
    with pytest.raises(ValueError, match="lo < hi"):
        run_attack("min_eps", model, x, y, eps=0.0, lo=0.2, hi=0.1)

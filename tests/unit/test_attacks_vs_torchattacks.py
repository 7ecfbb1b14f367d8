"""Our FGSM and PGD against torchattacks on a deterministic (vanilla) model: same inputs, same result."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torchattacks
from torch import nn

from models import StochasticClassifier
from models.attacks import run_attack
from tests.unit._attack_models import one_thread, synthetic, trained_model


class NoiseFreeLogits(nn.Module):
    """torchattacks wants ``module(x) -> [B, K]``: the noise-free logits.

    Built in eval mode: torchattacks restores the mode it found the module in, and a
    fresh module is in train mode, which would leave the shared model in train mode.
    """

    def __init__(self, model: StochasticClassifier) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, None)[0]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def setup() -> tuple[StochasticClassifier, torch.Tensor, torch.Tensor]:
    x, y = synthetic(64, torch.Generator().manual_seed(7))
    return trained_model("vanilla"), x, y


def fooled(model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, None)[0].argmax(-1) != y


@pytest.mark.parametrize("eps", [0.08, 0.12])
def test_fgsm_matches_torchattacks(setup: tuple[StochasticClassifier, torch.Tensor, torch.Tensor], eps: float) -> None:
    model, x, y = setup
    ours = run_attack("fgsm", model, x, y, eps=eps).x_adv
    theirs = torchattacks.FGSM(NoiseFreeLogits(model), eps=eps)(x, y)
    assert not model.training
    ours_fooled, theirs_fooled = fooled(model, ours, y), fooled(model, theirs, y)
    assert 0 < int(theirs_fooled.sum()) < len(y)  # the comparison means something
    assert torch.equal(ours_fooled, theirs_fooled)
    assert (ours - theirs).abs().max() <= 1e-6


@pytest.mark.parametrize("eps", [0.08, 0.12])
def test_pgd_matches_torchattacks(setup: tuple[StochasticClassifier, torch.Tensor, torch.Tensor], eps: float) -> None:
    model, x, y = setup
    alpha, steps = eps / 4, 10
    ours = run_attack("pgd", model, x, y, eps=eps, steps=steps, alpha=alpha, random_start=False).x_adv
    theirs = torchattacks.PGD(NoiseFreeLogits(model), eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert not model.training
    ours_fooled, theirs_fooled = fooled(model, ours, y), fooled(model, theirs, y)
    assert 0 < int(theirs_fooled.sum()) < len(y)
    assert torch.equal(ours_fooled, theirs_fooled)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("steps", [10, 50])
def test_apgd_ce_matches_torchattacks(
    setup: tuple[StochasticClassifier, torch.Tensor, torch.Tensor], steps: int
) -> None:
    """Same start (both draw it from a generator seeded 0), same schedule: the same best loss per input."""
    model, x, y = setup
    ours = run_attack("apgd", model, x, y, eps=0.1, steps=steps, eot=1, generator=torch.Generator().manual_seed(0))
    attack = torchattacks.APGD(NoiseFreeLogits(model), eps=0.1, steps=steps, loss="ce", seed=0)
    torch.random.manual_seed(0)
    _, _, their_best_loss, their_adv = attack.attack_single_run(x, y)
    torch.testing.assert_close(torch.tensor(ours.info["best_loss"]), their_best_loss, atol=1e-5, rtol=1e-5)
    ours_fooled, theirs_fooled = fooled(model, ours.x_adv, y), fooled(model, their_adv, y)
    assert 0 < int(theirs_fooled.sum()) < len(y)
    assert torch.equal(ours_fooled, theirs_fooled)


def test_apgd_dlr_fools_the_same_inputs_as_torchattacks(
    setup: tuple[StochasticClassifier, torch.Tensor, torch.Tensor],
) -> None:
    """With DLR (negative losses) the reference's first oscillation check compares against a zero
    (it indexes loss_steps[-1] before that row is written), ours against the start's loss: the step
    sizes can differ at the first checkpoint, the inputs fooled do not."""
    model, x, y = setup
    ours = run_attack(
        "apgd", model, x, y, eps=0.1, steps=50, eot=1, loss="dlr", generator=torch.Generator().manual_seed(0)
    )
    attack = torchattacks.APGD(NoiseFreeLogits(model), eps=0.1, steps=50, loss="dlr", seed=0)
    torch.random.manual_seed(0)
    _, _, their_best_loss, their_adv = attack.attack_single_run(x, y)
    assert torch.equal(fooled(model, ours.x_adv, y), fooled(model, their_adv, y))
    close = (torch.tensor(ours.info["best_loss"]) - their_best_loss).abs() < 1e-4
    assert close.float().mean() >= 0.9


@pytest.mark.parametrize("eps", [0.12, 0.15])
def test_square_fools_as_many_as_torchattacks(
    setup: tuple[StochasticClassifier, torch.Tensor, torch.Tensor], eps: float
) -> None:
    """Random search: the same budget fools about as many inputs (two seeds each, within 10 of 64)."""
    model, x, y = setup
    ours = theirs = 0
    for seed in (0, 1):
        res = run_attack("square", model, x, y, eps=eps, queries=300, generator=torch.Generator().manual_seed(seed))
        ours += int(fooled(model, res.x_adv, y).sum())
        adv = torchattacks.Square(NoiseFreeLogits(model), eps=eps, n_queries=300, seed=seed)(x, y)
        assert (adv - x).abs().max() <= eps + 1e-6
        theirs += int(fooled(model, adv, y).sum())
    assert theirs > 0
    assert abs(ours - theirs) / 2 <= 10, (ours, theirs)

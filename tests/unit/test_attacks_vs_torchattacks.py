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

"""Tiny trained models shared by the attack and probe tests (trained once per session).

A 4-class synthetic task on 1x8x8 images: class k brightens quadrant k by 0.3 on top
of uniform [0, 0.6) noise. A small CNN learns it in ~150 Adam steps; the margin is small
enough that eps around 0.1-0.15 flips a fair share of inputs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models import ModelConfig, StochasticClassifier, build_model

NUM_CLASSES = 4
IMG = 8
ARCH = "tiny_cnn"


def synthetic(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` inputs [n, 1, 8, 8] in [0, 1] and labels [n] of the quadrant task."""
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    x = torch.rand(n, 1, IMG, IMG, generator=generator) * 0.6
    bright = torch.zeros(NUM_CLASSES, 1, IMG, IMG)
    half = IMG // 2
    for k in range(NUM_CLASSES):
        r, c = divmod(k, 2)
        bright[k, :, r * half : (r + 1) * half, c * half : (c + 1) * half] = 0.3
    return (x + bright[y]).clamp(0, 1), y


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded (tiny tensors; avoids thread thrash on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_model(method: str, seed: int = 0) -> StochasticClassifier:
    """An untrained tiny model (8x8 inputs, D = 16, 4 classes) in eval mode."""
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=ARCH, method=method, feature_dim=16, img_size=IMG, num_classes=NUM_CLASSES, sigma_init=0.3)
    return build_model(cfg).eval()


def module_fixtures(n: int, seed: int) -> tuple[Any, Any]:
    """The two module-scoped fixtures of every attack test file: ``_single_thread`` (autouse: the module
    runs on one torch thread) and ``data``: ``synthetic(n)`` drawn with ``seed``.

    Use: ``_single_thread, data = module_fixtures(24, 31)``.
    """

    @pytest.fixture(scope="module", autouse=True, name="_single_thread")
    def single_thread() -> Iterator[None]:
        with one_thread():
            yield

    @pytest.fixture(scope="module", name="data")
    def data() -> tuple[torch.Tensor, torch.Tensor]:
        return synthetic(n, torch.Generator().manual_seed(seed))

    return single_thread, data


@functools.cache
def trained_model(method: str, steps: int = 150) -> StochasticClassifier:
    """``tiny_model(method)`` after ``steps`` Adam steps on the synthetic task (eval mode, frozen)."""
    model = tiny_model(method)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    with one_thread():
        for _ in range(steps):
            x, y = synthetic(64, gen)
            logits = model(x, model.sample_noise(4, gen))  # (T, B, K)
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]))
            loss = loss + 0.05 * model.head.regularizer()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

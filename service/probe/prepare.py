"""A validated probe request -> a ``ProbeJob``: specs resolved, caps checked, labels and inputs decoded."""

from __future__ import annotations

import torch

from models.attacks import make_attack
from models.probe import ProbeAttacks, ProbeItem
from models.probe import resolve_items as models_resolve_items

from ..compute.engine import random_seed
from ..compute.inputs import InputSpec, decode_inputs
from ..config import Settings
from ..edge.transport import Body
from ..errors import InvalidInput
from ..schemas.limits import PROBE_INPUTS
from ..schemas.probe import ProbeOptions
from .caps import check_caps
from .runner import ProbeJob

DEFAULT_ATTACKS = ("fgsm", "pgd", "surrogate")
"""Run when a request names no attacks, each with its spec's defaults."""


def resolve_items(attacks: ProbeAttacks | None, input_shape: tuple[int, int, int]) -> list[ProbeItem]:
    """The request's ``attacks`` (specs, a suite name, or None: ``DEFAULT_ATTACKS``) resolved for this model,
    once: the specs the caps are checked against are the specs that run (``models.probe.probe_items``)."""
    if attacks is None:
        attacks = [make_attack(name) for name in DEFAULT_ATTACKS]
    return models_resolve_items(attacks, input_shape)


def true_labels(labels: list[int] | None, n: int, num_classes: int) -> torch.Tensor | None:
    """The given labels as a tensor [n] (None: the clean prediction); one per input, each a class."""
    if labels is None:
        return None
    if len(labels) != n:
        raise InvalidInput(f"{len(labels)} labels for {n} inputs; give one label per input, or none")
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise InvalidInput(f"labels {bad} are not classes of this model; labels must be in [0, {num_classes})")
    return torch.tensor(labels, dtype=torch.long)


def prepare_probe(body: Body[ProbeOptions], settings: Settings, spec: InputSpec, num_classes: int) -> ProbeJob:
    """Check the options and caps, then decode the inputs (CPU work: in the decode pool).

    Caps come before decoding, so an over-budget request costs no image decoding.

    Raises:
        InvalidInput: bad inputs or labels (400).
        ValidationFailed: a cap exceeded (422).
    """
    req = body.options
    n = len(body.inputs)
    assert req.judge_samples is not None  # filled in by validation (service.schemas.limits.JudgeSamples)
    items = resolve_items(req.attacks, spec.shape)
    cost = check_caps(items, max(n, 1), settings)
    if req.return_adversarial and spec.shape[0] not in (1, 3):
        raise InvalidInput(f"return_adversarial needs 1- or 3-channel inputs; this model takes {spec.shape[0]}")
    images = decode_inputs(
        body.inputs, spec, max_inputs=PROBE_INPUTS.maximum(settings), resize=req.resize, name=body.source
    )
    labels = true_labels(req.labels, n, num_classes)
    seed = req.seed if req.seed is not None else random_seed()
    return ProbeJob(images, labels, items, req.judge_samples, seed, req.return_adversarial, cost)

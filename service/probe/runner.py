"""Running one probe in an attack-pool thread: when it stops, metrics and adversarial images.

The wall-time limit (``MFDV_MAX_PROBE_SECONDS``, from the request's arrival) holds inside an
attack: ``models.probe.probe_items`` passes the stop check (``StopCheck``) to every attack as
``should_stop``, checked between steps (queries, bisection rounds), and to ``after_attack``
between attacks. The same check stops a probe whose request was cancelled or whose server is
shutting down. An attack stopped early reports what it had (``info.stopped``); the attacks
after it are skipped; the response then says ``"partial": true`` and why.
"""

from __future__ import annotations

import base64
import copy
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models import StochasticClassifier
from models.attacks import AttackCost
from models.attacks.flag import FlagRule
from models.probe import AttackReport, ProbeItem, ProbeReport, probe_items

from ..errors import ValidationFailed
from ..metrics import Metrics


@dataclass(frozen=True)
class ProbeJob:
    """A checked request, ready to run.

    Attributes:
        images: pixels [N, C, H, W] in [0, 1].
        labels: true labels [N], or None: the clean prediction.
        items: the resolved attack and suite specs, in order.
        judge_samples: fresh draws judging each input.
        seed: the request's seed.
        return_adversarial: add each adversarial image as a base64 PNG.
        cost: what the request was charged against the caps.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    items: list[ProbeItem]
    judge_samples: int
    seed: int
    return_adversarial: bool
    cost: AttackCost


@dataclass(frozen=True)
class ProbeRun:
    """What the worker thread gives back."""

    report: ProbeReport  # with return_adversarial, each input's ``adversarial`` image set
    partial_reason: str | None
    skipped: list[str]
    started: float  # perf_counter when the worker started
    finished: float


def png_base64(image: torch.Tensor) -> str:
    """Pixels [C, H, W] in [0, 1] (C = 1 or 3) -> base64 of an 8-bit PNG."""
    arr = np.round(image.detach().cpu().clamp(0, 1).numpy() * 255).astype(np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class StopCheck:
    """When a running probe stops (``should_stop`` of every attack, checked between steps).

    It stops, and remembers why, at the first of: the request was cancelled (``cancelled`` set:
    the client went away, the server's grace period ran out, or the pool shuts down), the server
    is shutting down and its deadline for answers has passed (``shutdown_deadline``), or the
    probe's own wall-time limit has passed (``deadline``).

    Args:
        deadline: ``perf_counter`` time the probe must end by (its arrival + ``MFDV_MAX_PROBE_SECONDS``).
        limit_s: that limit, for the message.
        cancelled: set from outside to stop the probe.
        shutdown_deadline: the ``perf_counter`` time by which a shutting-down server wants its answers
            out (None while it is not shutting down).
    """

    def __init__(
        self,
        deadline: float,
        limit_s: float,
        cancelled: threading.Event | None = None,
        shutdown_deadline: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.deadline = deadline
        self.limit_s = limit_s
        self.cancelled = cancelled
        self.shutdown_deadline = shutdown_deadline
        self.reason: str | None = None

    def __call__(self) -> bool:
        if self.reason is None:
            now = time.perf_counter()
            shutdown = self.shutdown_deadline()
            if self.cancelled is not None and self.cancelled.is_set():
                self.reason = "the request was cancelled (the client went away or the server is stopping)"
            elif shutdown is not None and now > shutdown:
                self.reason = "the server is shutting down and answers what it has before its grace period ends"
            elif now > self.deadline:
                self.reason = f"wall-time limit of {self.limit_s:g} s reached (MFDV_MAX_PROBE_SECONDS)"
        return self.reason is not None


def partial_reason(why: str | None, stopped: list[str], done: int, skipped: list[str]) -> str | None:
    """Why a report covers less than was asked for (None: it covers everything)."""
    if not stopped and not skipped:
        return None
    parts = [f"{why or 'stopped'} after {done} attack(s)"]
    if stopped:
        parts.append(f"stopped before its budget was spent: {stopped}")
    if skipped:
        parts.append(f"skipped: {skipped}")
    return "; ".join(parts)


def run_probe(
    model: StochasticClassifier,
    job: ProbeJob,
    *,
    mi_threshold: float,
    flag: FlagRule | None = None,
    deadline: float,
    limit_s: float,
    metrics: Metrics,
    model_name: str,
    threads: int,
    cancelled: threading.Event | None = None,
    shutdown_deadline: Callable[[], float | None] = lambda: None,
) -> ProbeRun:
    """Run the probe (blocking; in the attack pool) until it is done or stopped (``StopCheck``).

    ``model_name`` labels the attack metrics. ``threads`` sets this worker thread's intra-op CPU threads (OpenMP's setting is per thread,
    so the prediction batcher keeps its own).

    Raises:
        ValidationFailed: an attack rejected its settings while running (422, never a 500).
    """
    started = time.perf_counter()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    images: list[list[str]] = []
    stop = StopCheck(deadline, limit_s, cancelled, shutdown_deadline)

    def after_attack(report: AttackReport, x_adv: torch.Tensor) -> bool:
        successes = sum(r.success for r in report.inputs)
        metrics.attacks.labels(model=model_name, attack=report.name).inc(len(report.inputs))
        metrics.attack_successes.labels(model=model_name, attack=report.name).inc(successes)
        metrics.attack_duration.labels(model=model_name, attack=report.name).observe(report.wall_time_s)
        if job.return_adversarial:
            images.append([png_base64(im) for im in x_adv])
        return stop()

    try:
        report = probe_items(
            model,
            job.images.to(model.proj.weight.device),
            job.labels,
            job.items,
            judge_samples=job.judge_samples,
            seed=job.seed,
            mi_threshold=mi_threshold,
            flag=flag,
            after_attack=after_attack,
            should_stop=stop,
        )
    except ValueError as e:  # a setting the checks let through: the caller's to fix, not a 500
        raise ValidationFailed(f"the probe rejected its settings: {e}") from None
    ran = report.attacks
    for attack, imgs in zip(ran, images, strict=False):
        for result, img in zip(attack.inputs, imgs, strict=True):
            result.adversarial = img
    skipped = [item.name for item in job.items[len(ran) :]]
    stopped = [a.name for a in ran if "stopped" in a.info]
    reason = partial_reason(stop.reason, stopped, len(ran), skipped)
    return ProbeRun(report, reason, skipped, started, time.perf_counter())


def probe_model(model: StochasticClassifier) -> StochasticClassifier:
    """A frozen copy of ``model`` for attack probes: eval mode, no parameter gradients.

    A copy, so that attack threads never touch the module the prediction batcher runs;
    frozen, so backward passes compute input gradients only.
    """
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen

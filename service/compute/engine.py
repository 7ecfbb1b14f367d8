"""The inference engine: checkpoint + backend + micro-batcher, one backbone pass per batch.

For a batch of requests the engine runs the backbone once over all their images
(in chunks of ``backbone_chunk`` rows, each padded to that fixed shape when
``batch_invariant``), then gives every request its own
T noise draws from a generator seeded with the request's seed and summarizes them
(mean probabilities and uncertainty): one summary per group of requests with the same T,
whose inputs are independent columns of it. Nothing a request gets depends on the other
requests in its batch, so the same seed gives the same answer. A request may bring a
``render`` function: the compute thread then also writes its response body, so the event
loop only sends it.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from models import Checkpoint, Uncertainty, load_checkpoint, seeded_noise, summarize
from models.attacks.flag import FlagRule

from ..config import Settings
from ..metrics import ModelMetrics
from .backends import Backend, create_backend, resolve_device
from .batcher import Batched, MicroBatcher

logger = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
CPU_CHUNK = 4  # rows per backbone call on CPU unless MFDV_BACKBONE_CHUNK is set: bounds padding at low load


_SEEDS = random.Random(secrets.randbits(64))  # one system-entropy read per process, not one per request
os.register_at_fork(after_in_child=lambda: _SEEDS.seed(secrets.randbits(64)))  # forked workers draw apart


def random_seed() -> int:
    """A fresh seed for requests that bring none (fits in a JSON number without loss)."""
    return _SEEDS.getrandbits(31)


@dataclass(frozen=True)
class PredictJob:
    """One request's inputs and options.

    Attributes:
        images: pixels [n, C, H, W] in [0, 1], CPU float32.
        samples: noise draws T.
        seed: seed of this request's noise generator.
        keep_draws: also return the per-draw probabilities.
        render: called in the compute thread with this job and its ``PredictOutput`` once its batch
            is computed; what it returns is the output's ``body`` (the response, written off the
            event loop, by the thread that already holds the results).
    """

    images: torch.Tensor
    samples: int
    seed: int
    keep_draws: bool = False
    render: Callable[[PredictJob, PredictOutput], Any] | None = None

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class PredictOutput:
    """Per-input summaries of one request (leading dim n), and the draws if asked for.

    Attributes:
        uncertainty: mean probabilities, label and uncertainty per input.
        draws: per-draw probabilities [T, n, K], or None.
        body: what the job's ``render`` returned (None without one).
    """

    uncertainty: Uncertainty
    draws: torch.Tensor | None
    body: Any = None


UNCERTAINTY_FIELDS = tuple(f.name for f in fields(Uncertainty))


def split_rows(u: Uncertainty, sizes: list[int]) -> list[Uncertainty]:
    """``u`` cut into consecutive parts of ``sizes`` rows (views, no copy; one split per field)."""
    parts = [getattr(u, name).split(sizes) for name in UNCERTAINTY_FIELDS]
    return [Uncertainty(*rows) for rows in zip(*parts, strict=True)]


class InferenceEngine:
    """Serve one checkpoint: ``predict`` goes through the micro-batcher, ``run`` does the compute.

    Args:
        checkpoint: the loaded, verified checkpoint (its torch model stays available, e.g.
            for attack probes, whatever the backend).
        backend: the backend that computes logits.
        settings: batching limits and whether batches are padded to a fixed shape.
        metrics: where batch metrics go (optional): the model's labelled series (``Metrics.model``).
        executor: the compute thread, when shared with other models' engines (``MicroBatcher``).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        backend: Backend,
        settings: Settings,
        metrics: ModelMetrics | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.backend = backend
        self.settings = settings
        self.chunk = settings.backbone_chunk or (
            settings.max_batch if backend.device == "cuda" else min(settings.max_batch, CPU_CHUNK)
        )
        self.pad = settings.batch_invariant
        self.batcher: MicroBatcher[PredictJob, PredictOutput] = MicroBatcher(
            self.run,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            queue_size=settings.queue_size,
            metrics=metrics,
            initializer=backend.init_thread,  # the compute thread's intra-op threads
            executor=executor,
        )

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: ModelMetrics | None = None,
        *,
        path: Path | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> InferenceEngine:
        """Load and verify the checkpoint at ``path`` (default ``settings.model_dir``; sha256), build the
        backend and warm it up (blocking).

        Raises:
            models.CheckpointError: the checkpoint is missing, altered or inconsistent.
            service.compute.backends.BackendError: the backend or device cannot be used here.
        """
        device = resolve_device(settings.device)
        if path is None and settings.model_dir is None:
            raise ValueError("no checkpoint: give a path or settings.model_dir")
        checkpoint = load_checkpoint(path or settings.model_dir, device=device)  # type: ignore[arg-type]
        backend = create_backend(settings.backend, checkpoint, device, settings.compute_threads())
        engine = cls(checkpoint, backend, settings, metrics, executor)
        backend.init_thread()  # the warm-up computes in this thread
        engine.warmup()
        logger.info(
            "loaded %s (%s, %s/%s, id %s) on %s with the %s backend (MFDV_BACKEND=%s), %d intra-op threads",
            engine.name,
            checkpoint.path,
            engine.manifest.get("arch"),
            engine.manifest.get("method"),
            engine.model_id[:12],
            device,
            backend.name,
            settings.backend,
            backend.threads,
        )
        return engine

    # -- metadata -------------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        return self.checkpoint.manifest

    @property
    def name(self) -> str:
        """The model name clients use (the checkpoint directory's name)."""
        return str(self.manifest.get("name") or self.checkpoint.path.name)

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    @property
    def class_names(self) -> list[str]:
        return self.checkpoint.class_names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.manifest["input_shape"]
        return int(c), int(h), int(w)

    @property
    def feature_dim(self) -> int:
        return int(self.checkpoint.model.feature_dim)

    @property
    def mi_threshold(self) -> float:
        return float(self.manifest.get("mi_threshold", 0.0))

    @functools.cached_property
    def flag(self) -> FlagRule:
        """The rule ``flagged`` follows: the manifest's calibrated ``flag`` (signal and threshold: mutual
        information, or 1 - max mean probability for a deterministic model), else mutual information above
        ``mi_threshold`` (``models.attacks.flag.FlagRule.from_manifest``)."""
        return FlagRule.from_manifest(self.manifest)

    def flagged(self, u: Uncertainty) -> list[bool]:
        """Which inputs of the summary ``u`` the flag rule flags."""
        return self.flag.flags_summary(u.mean_probs, u.mutual_information).tolist()

    # -- compute --------------------------------------------------------------------------

    def noise(self, samples: int, seed: int) -> torch.Tensor:
        """The draws a request with ``samples`` and ``seed`` gets: [T, D] (``models.seeded_noise``)."""
        return seeded_noise(samples, self.feature_dim, seed)

    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone state for [N, C, H, W], in chunks of ``chunk`` rows (zero-padded to ``chunk`` when ``pad``)."""
        parts = []
        for start in range(0, images.shape[0], self.chunk):
            part = images[start : start + self.chunk]
            n = part.shape[0]
            if self.pad and n < self.chunk:
                part = torch.cat([part, part.new_zeros((self.chunk - n, *part.shape[1:]))])
            parts.append(self.backend.backbone(part)[:n])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def run(self, jobs: list[PredictJob]) -> list[PredictOutput]:
        """Compute a batch: the backbone once over every job's images, each job's own draws, one summary
        per group of jobs with the same T; then each job's ``render``, if it has one."""
        images = jobs[0].images if len(jobs) == 1 else torch.cat([j.images for j in jobs])
        state = self.backbone(images)
        logits = []
        offset = 0
        for job in jobs:
            rows = state[offset : offset + job.size]
            offset += job.size
            logits.append(self.backend.head(rows, self.noise(job.samples, job.seed)))  # (T, n, K)
        summaries = self.summaries(jobs, logits)
        outputs = []
        for job, lg, u in zip(jobs, logits, summaries, strict=True):
            out = PredictOutput(u, torch.softmax(lg, dim=-1) if job.keep_draws else None)
            if job.render is not None:
                out = PredictOutput(out.uncertainty, out.draws, job.render(job, out))
            outputs.append(out)
        return outputs

    @staticmethod
    def summaries(jobs: list[PredictJob], logits: list[torch.Tensor]) -> list[Uncertainty]:
        """Each job's uncertainty, from one ``summarize`` per group of jobs with the same T.

        An input is a column of the group's [T, N, K] logits and every statistic reduces over T
        or K only, so its summary does not depend on the other columns (bit for bit: tested);
        one call per group replaces one per request.
        """
        groups: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.samples, []).append(i)
        out: list[Uncertainty | None] = [None] * len(jobs)
        for members in groups.values():
            if len(members) == 1:
                out[members[0]] = summarize(logits[members[0]])
                continue
            u = summarize(torch.cat([logits[i] for i in members], dim=1))  # (T, N, K) -> N rows
            for i, rows in zip(members, split_rows(u, [jobs[i].size for i in members]), strict=True):
                out[i] = rows
        return out  # type: ignore[return-value]

    def warmup(self) -> None:
        """Run one batch of each kind the service will see, so the first request is not slow."""
        c, h, w = self.input_shape
        self.run([PredictJob(torch.zeros(1, c, h, w), self.settings.default_samples, 0)])
        if not self.pad and self.chunk > 1:
            self.run([PredictJob(torch.zeros(self.chunk, c, h, w), 1, 0)])

    # -- serving --------------------------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    @property
    def ready(self) -> bool:
        return self.batcher.running

    async def predict(self, job: PredictJob) -> Batched[PredictOutput]:
        """Queue ``job`` for the next batch and wait for its output.

        Raises:
            service.errors.Overloaded: the queue is full.
            service.errors.ModelNotReady: the engine is not running.
        """
        return await self.batcher.submit(job)

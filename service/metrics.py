"""Prometheus metrics of one app, in a registry of its own (several apps can share a process).

With several worker processes (``MFDV_WORKERS`` > 1) each process counts for itself, and a
scrape reaches one of them. ``python -m service`` then runs prometheus_client's multiprocess
mode: it points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start,
every worker writes its values to files there, and ``/metrics`` (whichever worker answers)
adds up the files of all of them. Gauges say how: requests in flight are summed over live
workers, the model-info gauge is their maximum.

The names and labels are a contract with ``deploy/`` (dashboards, alerts): change
them only together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    """True when prometheus_client keeps values in files (its multiprocess mode, chosen at its import from
    ``PROMETHEUS_MULTIPROC_DIR``)."""
    return values.ValueClass is not values.MutexValue


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SAMPLES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
MI_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ATTACK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


MODEL_LABELS = ("model", "version")
"""The labels of every per-model series: the model's name and the served version (a repository serves several)."""


@dataclass(frozen=True)
class ModelMetrics:
    """One model version's series of the per-model metrics (``Metrics.model``): what its batcher and its
    routes observe."""

    queue: Histogram
    compute: Histogram
    batch_size: Histogram
    samples: Histogram
    mutual_information: Histogram


class Metrics:
    """Every metric the service exports, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mfdv_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mfdv_request_latency_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue = Histogram(
            "mfdv_queue_seconds",
            "time a prediction waited for the batcher",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "mfdv_compute_seconds",
            "compute time of one batch (backbone once + draws)",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mfdv_batch_size",
            "images per backbone batch (padding excluded)",
            MODEL_LABELS,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.samples = Histogram(
            "mfdv_samples", "noise draws T per request", MODEL_LABELS, buckets=SAMPLES_BUCKETS, registry=r
        )
        self.mutual_information = Histogram(
            "mfdv_mutual_information",
            "mutual information (nats) per predicted input",
            MODEL_LABELS,
            buckets=MI_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "mfdv_inflight_requests", "HTTP requests being handled", registry=r, multiprocess_mode="livesum"
        )
        self.model_info = Gauge(
            "mfdv_model_info",
            "the loaded models (value 1; 0 once unloaded)",
            [*MODEL_LABELS, "model_id", "method", "arch", "dataset", "backend", "device"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.attacks = Counter("mfdv_attack", "attack probes run, by model and attack", ["model", "attack"], registry=r)
        self.attack_successes = Counter(
            "mfdv_attack_success",
            "attack probes that changed the prediction, by model and attack",
            ["model", "attack"],
            registry=r,
        )
        self.attack_duration = Histogram(
            "mfdv_attack_duration_seconds",
            "attack probe duration",
            ["model", "attack"],
            buckets=ATTACK_BUCKETS,
            registry=r,
        )

    def model(self, name: str, version: str) -> ModelMetrics:
        """The per-model series of ``name`` at ``version``."""
        labels = {"model": name, "version": version}
        return ModelMetrics(
            queue=self.queue.labels(**labels),
            compute=self.compute.labels(**labels),
            batch_size=self.batch_size.labels(**labels),
            samples=self.samples.labels(**labels),
            mutual_information=self.mutual_information.labels(**labels),
        )

    def model_loaded(self, info: dict[str, str], loaded: bool) -> None:
        """``mfdv_model_info`` of one model version (``info``: its labels): 1 while loaded, 0 once unloaded
        (kept, not removed: with several workers a removed series would linger in the others' files)."""
        self.model_info.labels(**info).set(1 if loaded else 0)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type: this app's registry, or in multiprocess mode
        the values of every worker process, added up."""
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """This process is about to end: in multiprocess mode its live gauges stop counting."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())

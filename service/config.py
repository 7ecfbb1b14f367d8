"""Service settings, read from ``MFDV_*`` environment variables (pydantic-settings).

Every field can be set as ``MFDV_<FIELD>`` (e.g. ``MFDV_MAX_BATCH=32``) or passed to
``Settings(...)`` directly, which is what tests do. Values are checked when the
object is built; a bad value fails at once with a message naming what is valid.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_REPOSITORY = Path("checkpoints")
"""The repository served when neither ``model_dir`` nor ``model_repository`` is set: the committed checkpoints."""
DEFAULT_MODEL = "fashion_mnist_mfdv"
"""The default model of ``DEFAULT_MODEL_REPOSITORY`` (the stochastic checkpoint) unless ``default_model`` says otherwise."""
DEFAULT_MODEL_DIR = DEFAULT_MODEL_REPOSITORY / DEFAULT_MODEL
"""That model's checkpoint folder (what the benchmarks serve by default)."""
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPU cores this process may use: the CPUs it may run on (affinity, cpuset), capped by a cgroup v2
    CPU quota (a container's CPU limit, rounded up) when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


MAX_DEFAULT_WORKERS = 8
"""The most worker processes chosen by default: each loads its own model (torch and onnxruntime, about
400 MB resident), so a many-core host gets ``MFDV_WORKERS`` set on purpose, not 64 copies by default."""


def default_workers(device: str = "auto", cores: int | None = None) -> int:
    """Worker processes by default: one per core (each worker's event loop saturates a core before its
    compute does; ``docs/service.md#workers-scaling-across-cores``), at most ``MAX_DEFAULT_WORKERS``;
    one where the predictions run on a GPU (``device`` ``cuda``, or ``auto`` with CUDA present): N
    processes would each hold the model on the one device (the GPU plan in docs/service.md)."""
    if device == "cuda" or (device == "auto" and _cuda_available()):
        return 1
    return max(1, min(cores or available_cores(), MAX_DEFAULT_WORKERS))


def _cuda_available() -> bool:
    import torch  # the service loads torch anyway; imported here only when a default is needed

    return torch.cuda.is_available()


def threads_per_worker(cores: int, workers: int) -> int:
    """Default intra-op threads of one worker's prediction compute: its share of ``cores``, less one
    core for its event loop (which parses, decodes and answers every request), at least one.

    Two cores and one worker: one thread, the other core runs the event loop; more threads would
    compete with it (and with each other: torch with 2 threads on 2 busy cores fell to a few
    images/s in ``benchmarks/bench_service.py``'s compute table).
    """
    return max(1, cores // max(1, workers) - 1)


class Settings(BaseSettings):
    """Configuration of one service process.

    Attributes:
        model_dir: one model to serve, a repository of one: a checkpoint directory (``weights.safetensors``,
            ``model.onnx``, ``manifest.json``) or a directory of numbered version folders, each a checkpoint.
            Set it or ``model_repository``, not both; neither: the repository ``checkpoints/``.
        model_repository: a directory of models (``service.compute.repository``): every folder in it that is a
            checkpoint, or holds numbered version folders that are, is a model named by its manifest;
            the highest version is served. Models load at start and can be loaded, reloaded and
            unloaded while serving (``POST /v2/repository/...``).
        default_model: the model the routes that name none serve (``/v1/predict``, ``/v1/attack-probe``).
            Unset: the one model of ``model_dir``; for a repository, ``fashion_mnist_mfdv`` when the
            repository is the default ``checkpoints/``, else the first model in name order.
        max_loaded_models: most models loaded at once (each holds its weights, an onnxruntime session and
            a batching queue); a load beyond it is refused with 409 until one is unloaded.
        host: interface uvicorn binds (``python -m service`` only).
        port: TCP port uvicorn binds (``python -m service`` only).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda`` (fails when CUDA is missing).
        workers: uvicorn worker processes; each loads its own model, batches on its own and has its
            own decode and attack pools. Unset: one per core (cgroup CPU limit respected), at most
            8; one on a GPU (``default_workers``). The thread defaults divide the cores by it, so an
            app served in one process of your own (``create_app``) should say ``workers=1``.
        backend: the predict backend: ``auto`` (the fastest measured for the device: onnxruntime on
            CPU, torch on CUDA; see ``service.compute.backends.choose_backend``), ``torch`` or ``onnx``
            (onnxruntime, CUDA provider when available and allowed). Attack probes use the torch
            model whatever this is.
        predict_threads: intra-op CPU threads of the prediction compute (onnxruntime's
            ``intra_op_num_threads``, or ``torch.set_num_threads`` in the compute thread). Unset:
            ``max(1, cores // workers - 1)``: each worker's share of the cores, less one for its
            event loop (``threads_per_worker``).
        default_samples: noise draws T when a request names none.
        max_samples: largest T a request may ask for.
        max_batch: most images coalesced into one backbone pass.
        max_wait_ms: how long the batcher waits for more requests after the first one arrives. 0 (as
            Triton's ``max_queue_delay``): a batch starts as soon as the compute thread is free, with
            every request that arrived while it was busy, so batches grow with the load by themselves;
            waiting only delays requests when the compute thread is idle.
        queue_size: requests waiting for the batcher; when full, requests get 503 + Retry-After.
        max_body_bytes: largest request body; larger bodies get 413 before they are read.
        body_timeout_seconds: how long a request body may take to arrive, from the request's
            headers; past it, 408 (a client trickling its body cannot hold a place for long).
        body_min_rate: the least average pace, in bytes per second, at which a body must arrive
            once ``body_grace_seconds`` have passed (Kestrel's ``MinRequestBodyDataRate``); slower,
            408. A request holds nothing (no admission place, no probe-pool place) until its whole
            body is in, so this only frees the connection early. 0: no pace limit.
        body_grace_seconds: how long a body may take before ``body_min_rate`` applies.
        header_timeout_seconds: how long a connection may take to deliver a request's line and
            headers, from when it opens or the first bytes of a later request arrive (nginx's
            ``client_header_timeout``); past it the server answers 408 and closes.
        max_connections: most open connections per process; a connection over it is answered 503
            (``Retry-After``) on its first request and closed (``python -m service`` only).
        max_inflight: most prediction requests (``/v1/predict``, v2 ``infer``) handled at once,
            counted from when their whole body has arrived to their response; one more gets 503 +
            Retry-After (before its body is read when the headers already show it).
        max_queue_delay_ms: the longest expected wait a prediction request is admitted with (the
            requests in flight over the rate this process completes them while busy, as Triton's
            max queue delay); over it, 503 + Retry-After before the body is read. 0: no limit.
        max_inputs: most inputs (images) in one request.
        max_image_pixels: largest width x height an uploaded image may claim (decompression-bomb guard).
        max_request_pixels: most pixels the images of one request may claim together, checked on every
            header before any pixel is decoded: the bound on one request's decode work (time grows with
            pixels) and memory (about one decoded image at a time, at most 4 bytes per pixel).
        decode_workers: threads per worker that parse and decode the request bodies too large for the
            event loop and render probe responses; at most this many decode at once, the rest wait, so
            a worker's decode memory is at most ``decode_workers`` x one request's. Unset: the worker's
            share of the cores, ``max(1, cores // workers)`` (``decode_threads``).
        backbone_chunk: rows per backbone call; a batch runs as consecutive chunks of this size.
            Unset: ``max_batch`` on CUDA (padding is nearly free there), ``min(max_batch, 4)`` on
            CPU, where padded rows cost compute: a lone request pays for 4 rows, not 64.
        batch_invariant: pad every backbone call to exactly ``backbone_chunk`` rows (zeros), so an
            input's answer is bit-identical whatever else shares its batch; off saves the padded
            compute at low load (answers then agree to ~1e-6 across batch compositions).
        api_key: key the attack-probe endpoint requires in ``X-API-Key`` (unset or empty: open).
        attack_workers: threads running attack probes (apart from the prediction batcher).
        attack_queue_size: probes allowed to wait for an attack worker before 503 + Retry-After.
        attack_threads: CPU threads each attack worker computes with (``torch.set_num_threads``
            in that worker thread only; predictions keep theirs), so probes leave cores to predictions.
            1 by default, whatever the cores: attack threads run at ``attack_nice``, and torch's
            threads wait for each other at every operation, so one starved thread stalls the rest.
        attack_nice: the OS scheduling priority (nice value, 0..19) of the attack worker threads
            and the threads they start (Linux sets it per thread): 19, the lowest, lets attacks
            use only the CPU predictions leave; 0 is the predictions' own priority.
        max_probe_inputs: most inputs in one attack-probe request (over it: 422).
        max_probe_gradient_budget: most gradient work in one probe, in backbone passes x inputs
            (``spec.cost``): steps for PGD-style attacks whatever their EOT draws (they share the
            step's one backward pass), steps + 1 for APGD, and the forward passes that judge tries
            (min_eps, suites). Over it: 422 naming the request's cost.
        max_probe_queries: most score queries in one probe: the sum over its score-based attacks
            (Square) of ``queries`` x inputs. Over it: 422.
        max_probe_eps: largest perturbation budget an attack may ask for (``eps``, and ``hi`` of
            min_eps), in pixel units. Over it: 422.
        max_probe_seconds: wall-time limit of one probe, from its arrival. It is checked between
            the steps of every attack (queries, bisection rounds) and after each: past it, the
            running attack stops with what it has, the rest are skipped, and the response is marked
            ``"partial": true`` with the reason. The default gradient and query caps are this limit
            divided by the worst-case time of one cost unit (docs/attack-probe.md), so a probe
            within the caps fits in the limit on the reference machine.
        drain_seconds: after the first SIGTERM, how long the process keeps listening and serving
            while its readiness routes answer 503 (so load balancers stop sending), before uvicorn
            shuts down; a second SIGTERM ends it early. 0: shut down at once.
        graceful_seconds: how long requests in flight get after the drain (uvicorn's
            ``timeout_graceful_shutdown``); a request cut then gets a JSON 503, and a running
            probe stops early enough to answer with its partial results.
        log_level: logging level of the service and uvicorn.
        access_log: log every request (uvicorn's access log; ``--no-access-log`` turns it off).
        ui: serve the playground page (``/`` redirects to ``/ui/``): static HTML, CSS and JavaScript
            that call only the public API; off: both paths answer 404.
    """

    model_config = SettingsConfigDict(env_prefix="MFDV_", extra="forbid", validate_assignment=True)

    model_dir: Path | None = None
    model_repository: Path | None = None
    default_model: str | None = None
    max_loaded_models: int = Field(8, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = Field(default_factory=lambda data: default_workers(data.get("device", "auto")), ge=1)
    backend: Literal["auto", "torch", "onnx"] = "auto"
    predict_threads: int | None = Field(None, ge=1)
    default_samples: int = Field(32, ge=1)
    max_samples: int = Field(256, ge=1)
    max_batch: int = Field(64, ge=1)
    max_wait_ms: float = Field(0, ge=0)
    queue_size: int = Field(1024, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    body_timeout_seconds: float = Field(30, gt=0)
    body_min_rate: float = Field(1024, ge=0)
    body_grace_seconds: float = Field(2, ge=0)
    header_timeout_seconds: float = Field(10, gt=0)
    max_connections: int = Field(2048, ge=1)
    max_inflight: int = Field(128, ge=1)
    max_queue_delay_ms: float = Field(100, ge=0)
    max_inputs: int = Field(64, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_request_pixels: int = Field(4096 * 4096, ge=1)
    decode_workers: int | None = Field(None, ge=1)
    backbone_chunk: int | None = Field(None, ge=1)
    batch_invariant: bool = True
    api_key: SecretStr | None = None
    attack_workers: int = Field(1, ge=1)
    attack_queue_size: int = Field(4, ge=0)
    attack_threads: int = Field(1, ge=1)
    attack_nice: int = Field(19, ge=0, le=19)
    max_probe_inputs: int = Field(64, ge=1)
    max_probe_gradient_budget: int = Field(14_600, ge=1)  # 60 s / 4.1 ms per worst-case unit (docs/attack-probe.md)
    max_probe_queries: int = Field(23_300, ge=0)  # 60 s / 2.57 ms per worst-case unit
    max_probe_eps: float = Field(0.3, gt=0, le=1)
    max_probe_seconds: float = Field(60, gt=0)
    drain_seconds: float = Field(5, ge=0)
    graceful_seconds: float = Field(20, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = True
    ui: bool = True

    def compute_threads(self) -> int:
        """The prediction compute's intra-op threads: ``predict_threads``, or ``threads_per_worker``."""
        return self.predict_threads or threads_per_worker(available_cores(), self.workers)

    def decode_threads(self) -> int:
        """One worker's decode-pool threads: ``decode_workers``, or its share of the cores."""
        return self.decode_workers or max(1, available_cores() // self.workers)

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v: object) -> object:
        """``MFDV_API_KEY=`` (empty, as compose writes an unset variable) means no key."""
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    @field_validator("default_model", mode="before")
    @classmethod
    def _empty_name_is_none(cls, v: object) -> object:
        """``MFDV_DEFAULT_MODEL=`` (empty) means the rule above."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    def repository(self) -> tuple[Path, list[Path]]:
        """The repository's root and the model folders to serve: ``model_dir`` alone (a repository of one),
        or every folder of ``model_repository`` (default ``checkpoints/``) in name order."""
        if self.model_dir is not None:
            return self.model_dir.parent, [self.model_dir]
        root = self.model_repository or DEFAULT_MODEL_REPOSITORY
        return root, sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def default_model_name(self, names: list[str]) -> str | None:
        """The default model among the repository's ``names`` (``default_model``, documented above)."""
        if self.default_model is not None:
            return self.default_model
        if self.model_dir is None and self.model_repository is None and DEFAULT_MODEL in names:
            return DEFAULT_MODEL
        return min(names) if names else None

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.model_dir is not None and self.model_repository is not None:
            raise ValueError("set model_dir (one model) or model_repository (a directory of models), not both")
        if self.default_samples > self.max_samples:
            raise ValueError(
                f"default_samples ({self.default_samples}) must not exceed max_samples ({self.max_samples})"
            )
        return self

"""Benchmark the service against this machine's ceilings, everything in one run.

    python -m benchmarks.bench_service                       # default checkpoint, about 8 minutes
    python -m benchmarks.bench_service --duration 10 --rounds 2 --clients 32 --checkpoint DIR
    python -m benchmarks.bench_service --skip-compute --anchor-only --duration 8   # vs the naive app, ~2 minutes

Prints, as markdown:

1. **compute ceiling** (in-process): images/s of the prediction compute (the engine's batch: backbone,
   T draws per request, summaries) per backend (onnxruntime, torch), intra-op threads (1, the
   default ``MFDV_PREDICT_THREADS`` and every core) and batch of one-image requests (1 to 256) at
   T = 32, plus T = 64 at batch 256 (the GPU goal: >= 10,000 images/s); which is fastest at each
   batch, and which row is the default (``MFDV_BACKEND=auto``: ``service.compute.backends.AUTO_BACKENDS``).
2. **padding**: images/s of the default backend when every backbone call is padded to a fixed chunk
   (``MFDV_BACKBONE_CHUNK``, batch invariance) vs not padded, per batch size: the cost of padding.
3. **T draws vs one pass** (torch): one deterministic pass, the service's T draws (one backbone pass +
   T head draws, with and without the uncertainty summary) and T naive full passes.
4. **HTTP** (Debian's ``hey``, a compiled client; a Python client saturates two cores before the
   server does): ``--clients`` concurrent clients, each posting one 28x28 PNG as multipart with
   ``samples=32``, ``--duration`` seconds per run, ``--rounds`` interleaved rounds, against: the
   naive app (``benchmarks/naive_app.py``: the 20-line FastAPI + onnxruntime app a user would write
   instead, the anchor) and the service, each at 1 worker and at the service's default worker count
   (one per core); the bare app (``benchmarks/bare_app.py``: the same multipart read and Pillow
   decode, a small JSON answer: this machine's HTTP-stack ceiling) at both; the service at 1 worker
   with the other backend and with micro-batching off (``MFDV_MAX_BATCH=1``). Per configuration:
   req/s of each round, p50/p99, p99/p50, mean images per batch, errors, and the share of the bare
   app's req/s at the same worker count. Then the service against the naive app (goals: >= 1.2x
   req/s at equal workers, >= 1.5x at each one's default, p99 no higher), and the older goals:
   service >= 60% of the ceiling with p99 <= 2x p50; micro-batching on vs off (>= 4x on a GPU);
   N workers vs 1. ``--anchor-only`` runs the naive app and the service alone (4 configurations).

Admission's queue-delay limit is off in every service run (``MFDV_MAX_QUEUE_DELAY_MS=0``): this
measures throughput at a fixed concurrency, not shedding (``bench_overload.py`` does that). Client and
servers share the machine's cores, as they would on one host; ``uptime``'s load is printed first, so a
busy machine shows. This is a benchmark, not a test: it prints tables and asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from models import ModelConfig, build_model, load_checkpoint, summarize
from service.compute.backends import AUTO_BACKENDS, TorchBackend, choose_backend
from service.compute.engine import InferenceEngine, PredictJob
from service.config import Settings, available_cores, threads_per_worker
from tests.support.server import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench")

DRAWS = (1, 16, 64, 256)
DRAW_BATCHES = (1, 32)
CEILING_BATCHES = (1, 4, 16, 64, 256)
PAD_BATCHES = (1, 2, 3, 5, 8, 16, 32, 64)
PAD_CHUNKS = (1, 4, 16, 64)
SAMPLES = 32
GPU_GOAL = (256, 64, 10_000)  # batch, T, images/s
BOUNDARY = "mfdvbenchboundary"


def resolve_checkpoint(path: Path) -> tuple[Path, str]:
    """The checkpoint to use, or a freshly exported untrained small_cnn when ``path`` is missing."""
    if (path / "manifest.json").is_file():
        return path, str(path)
    from training.export import export_checkpoint

    log.warning("%s is missing: benchmarking a freshly exported UNTRAINED small_cnn (timings are still valid)", path)
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    out = Path(tempfile.mkdtemp(prefix="bench-ckpt-")) / "untrained_small_cnn"
    export_checkpoint(model, out, class_names=[str(i) for i in range(10)], dataset="none (untrained)")
    return out, f"{out} (untrained small_cnn: {path} is missing)"


def best_of(fns: dict[str, Callable[[], object]], budget_s: float, min_reps: int = 5) -> dict[str, float]:
    """Fastest seconds per call of each function, calling them in turn (round robin) for ``budget_s``.

    Interleaving exposes every function to the same background load; the minimum is the least
    disturbed run (this benchmark runs on machines shared with other work).
    """
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    reps = 0
    while reps < min_reps or time.perf_counter() - start < budget_s:
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
        reps += 1
    return {k: min(v) for k, v in times.items()}


# -- 1. compute ceiling ---------------------------------------------------------------------------


def engine(checkpoint: Path, device: str, backend: str, threads: int, **kw: object) -> InferenceEngine:
    settings = Settings(model_dir=checkpoint, device=device, backend=backend, predict_threads=threads, **kw)  # type: ignore[arg-type]
    return InferenceEngine.load(settings)


def one_image_jobs(e: InferenceEngine, n: int, samples: int, seed: int = 0) -> list[PredictJob]:
    """``n`` one-image requests, as HTTP traffic brings them."""
    g = torch.Generator().manual_seed(seed)
    return [PredictJob(torch.rand(1, *e.input_shape, generator=g), samples, seed + i) for i in range(n)]


def batch_fn(e: InferenceEngine, jobs: list[PredictJob], chunk: int, pad: bool) -> Callable[[], object]:
    """One batch as the compute thread runs it, with this engine's threads and the given chunking."""

    def run() -> object:
        e.backend.init_thread()
        e.chunk, e.pad = chunk, pad
        return e.run(jobs)

    return run


def compute_ceiling(checkpoint: Path, device: str, budget_s: float) -> tuple[str, dict[int, str]]:
    """Part 1: images/s per backend, threads and batch; returns the table and the fastest backend per batch."""
    cores = available_cores()
    default_threads = threads_per_worker(cores, 1)
    thread_counts = sorted({1, default_threads, cores}) if device == "cpu" else [default_threads]
    backends = ["onnx", "torch"]
    engines: dict[tuple[str, int], InferenceEngine] = {}
    for name in backends:
        for threads in thread_counts:
            try:
                engines[name, threads] = engine(checkpoint, device, name, threads, max_batch=max(CEILING_BATCHES))
            except Exception as exc:  # e.g. onnxruntime without the CUDA provider on a GPU machine
                log.warning("%s backend unavailable on %s: %s", name, device, exc)
    cases = [(b, SAMPLES) for b in CEILING_BATCHES] + [GPU_GOAL[:2]]
    best: dict[tuple[str, int, int, int], float] = {}
    for b, t in cases:  # interleaved within each case: a slow configuration cannot starve the others of runs
        fns = {
            (name, threads, b, t): batch_fn(e, one_image_jobs(e, b, t), chunk=b, pad=True)
            for (name, threads), e in engines.items()
        }
        best.update(best_of(fns, budget_s / len(cases), min_reps=3))  # type: ignore[arg-type]
    rows = [
        "| backend | intra-op threads | batch | T | images/s | ms per batch | the default |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    auto = choose_backend("auto", device)
    fastest: dict[int, str] = {}
    for b, t in cases:
        scores = {k: k[2] / v for k, v in best.items() if k[2] == b and k[3] == t}
        if t == SAMPLES and scores:
            name, threads, _, _ = max(scores, key=scores.get)  # type: ignore[arg-type]
            fastest[b] = f"{name} ({threads} thread{'s' if threads > 1 else ''})"
        for (name, threads, _, _), ips in sorted(scores.items()):
            mark = "yes" if name == auto and threads == default_threads else ""
            rows.append(f"| {name} | {threads} | {b} | {t} | {ips:,.0f} | {b / ips * 1e3:.2f} | {mark} |")
    return "\n".join(rows), fastest


# -- 2. padding -----------------------------------------------------------------------------------


def padding_table(checkpoint: Path, device: str, budget_s: float) -> str:
    """Part 2: images/s of the default backend and threads with backbone calls padded to fixed chunks vs not."""
    e = engine(checkpoint, device, "auto", threads_per_worker(available_cores(), 1), max_batch=Settings().max_batch)
    default_chunk = e.chunk
    fns: dict[tuple[int, str], Callable[[], object]] = {}
    for b in PAD_BATCHES:
        jobs = one_image_jobs(e, b, SAMPLES)
        fns[b, "none"] = batch_fn(e, jobs, chunk=b, pad=False)
        for c in PAD_CHUNKS:
            fns[b, str(c)] = batch_fn(e, jobs, chunk=c, pad=True)
    best = best_of(fns, budget_s, min_reps=3)  # type: ignore[arg-type]
    e.chunk, e.pad = default_chunk, True
    head = " | ".join(f"chunk {c}" + (" (default)" if c == default_chunk else "") for c in PAD_CHUNKS)
    rows = [
        f"backend {e.backend.name}, {e.backend.threads} intra-op thread(s), T = {SAMPLES}; images/s, and in brackets "
        "the share of the unpadded rate",
        "",
        f"| batch | not padded | {head} |",
        "|---:|---:|" + "---:|" * len(PAD_CHUNKS),
    ]
    for b in PAD_BATCHES:
        free = b / best[b, "none"]
        cells = " | ".join(f"{b / best[b, str(c)]:,.0f} ({b / best[b, str(c)] / free:.0%})" for c in PAD_CHUNKS)
        rows.append(f"| {b} | {free:,.0f} | {cells} |")
    return "\n".join(rows)


# -- 3. T draws vs one pass -----------------------------------------------------------------------


def draw_cost_table(checkpoint: Path, budget_s: float) -> str:
    """Part 3: markdown table of T draws vs one pass vs T passes (torch, the default predict threads)."""
    ck = load_checkpoint(checkpoint)
    model = ck.model.eval()
    backend = TorchBackend(ck, "cpu", threads_per_worker(available_cores(), 1))
    backend.init_thread()
    c, h, w = ck.manifest["input_shape"]
    g = torch.Generator().manual_seed(0)
    rows = [
        "| batch | T | one pass (ms) | T draws (ms) | ratio | T draws + uncertainty (ms) | ratio | T full passes (ms) | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with torch.inference_mode():
        for b in DRAW_BATCHES:
            x = torch.rand(b, c, h, w, generator=g)
            noises = {t: torch.randn(t, model.feature_dim, generator=g) for t in DRAWS}
            fns: dict[str, Callable[[], object]] = {"one": lambda x=x: model(x, None)}
            for t, n in noises.items():
                fns[f"draws{t}"] = lambda x=x, n=n: backend.head(backend.backbone(x), n)
                fns[f"full{t}"] = lambda x=x, n=n: summarize(backend.head(backend.backbone(x), n))
            best = best_of(fns, budget_s, min_reps=10)
            one = best["one"]
            for t, n in noises.items():

                def naive(x: torch.Tensor = x, n: torch.Tensor = n) -> None:
                    for i in range(n.shape[0]):
                        model(x, n[i : i + 1])

                # T full passes: slow, so fewer runs (one when a run takes seconds)
                passes = best_of({"naive": naive}, budget_s / 4, min_reps=3 if b * t <= 2048 else 1)["naive"]
                draws, full = best[f"draws{t}"], best[f"full{t}"]
                rows.append(
                    f"| {b} | {t} | {one * 1e3:.3f} | {draws * 1e3:.3f} | {draws / one:.2f}x | "
                    f"{full * 1e3:.3f} | {full / one:.2f}x | {passes * 1e3:.1f} | {passes / one:.1f}x |"
                )
    return "\n".join(rows)


# -- 4. HTTP --------------------------------------------------------------------------------------


def multipart_body(path: Path, shape: tuple[int, int, int]) -> str:
    """One PNG of the model's size as a ``file`` part and ``samples`` as a field; returns the content type."""
    c, h, w = shape
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (h, w) if c == 1 else (h, w, c), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode(),
        buf.getvalue(),
        f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="samples"\r\n\r\n{SAMPLES}\r\n'
        f"--{BOUNDARY}--\r\n".encode(),
    ]
    path.write_bytes(b"".join(parts))
    return f"multipart/form-data; boundary={BOUNDARY}"


class AppProcess:
    """``python -m benchmarks.<module>`` (the bare or the naive app) on a free port, ready when entered."""

    def __init__(self, module: str, workers: int, args: list[str] | None = None) -> None:
        self.module = module
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> AppProcess:
        cmd = [sys.executable, "-m", f"benchmarks.{self.module}", "--port", str(self.port)]
        cmd += ["--workers", str(self.workers), *self.args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.module} did not start within 60 s")

    def __exit__(self, *_: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Config:
    name: str
    kind: str  # "bare", "naive" or "service"
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    rps: float
    latencies: np.ndarray  # seconds, of the 200s
    errors: int
    batch: float | None  # mean images per batch (service only)


def metric_sums(url: str) -> tuple[float, float]:
    """``mfdv_batch_size`` (sum, count) from ``/metrics`` (every worker's, in multiprocess mode)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {
        line.split()[0]: float(line.split()[-1]) for line in text.splitlines() if line.startswith("mfdv_batch_size_")
    }
    return values.get("mfdv_batch_size_sum", 0.0), values.get("mfdv_batch_size_count", 0.0)


def hey(args: argparse.Namespace, url: str, body: Path, ctype: str, seconds: float) -> tuple[int, np.ndarray, int]:
    """``hey`` on ``/v1/predict`` for ``seconds`` with ``args.clients``: see ``run_hey``."""
    return run_hey(args.hey, f"{url}/v1/predict", body, ctype, args.clients, seconds)


def run_hey(exe: str, url: str, body: Path, ctype: str, clients: int, seconds: float) -> tuple[int, np.ndarray, int]:
    """``hey`` posting ``body`` to ``url`` for ``seconds`` with ``clients``, closed loop: (requests answered 200,
    their latencies in s, everything else)."""
    cmd = [exe, "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-T", ctype, "-D", str(body)]
    cmd += ["-t", "60", "-o", "csv", url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ok, other = [], 0
    for row in csv.DictReader(io.StringIO(out)):
        if row["status-code"] == "200":
            ok.append(float(row["response-time"]))
        else:
            other += 1
    return len(ok), np.array(ok), other


def measure(args: argparse.Namespace, cfg: Config, checkpoint: Path, body: Path, ctype: str) -> Run:
    server: AppProcess | ServerProcess
    if cfg.kind == "bare":
        server = AppProcess("bare_app", cfg.workers)
    elif cfg.kind == "naive":
        server = AppProcess("naive_app", cfg.workers, ["--model-dir", str(checkpoint)])
    else:
        env = {"MFDV_LOG_LEVEL": "warning", "MFDV_MAX_QUEUE_DELAY_MS": "0", **cfg.env}
        server = ServerProcess(checkpoint, env=env, args=["--no-access-log"])
    with server:
        hey(args, server.url, body, ctype, args.warmup)
        before = metric_sums(server.url) if cfg.kind == "service" else None
        n, lat, errors = hey(args, server.url, body, ctype, args.duration)
        batch = None
        if before is not None:
            after = metric_sums(server.url)
            batch = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    return Run(n / args.duration, lat, errors, batch)


NAIVE = "naive app (FastAPI + onnxruntime, 20 lines), 1 worker"
SERVICE_1 = "service, 1 worker (MFDV_WORKERS=1)"
SERVICE = "service, defaults"
BARE = "bare app (HTTP-stack ceiling), 1 worker"


def http_configs(device: str, workers: int, anchor_only: bool = False) -> list[Config]:
    """The HTTP runs: the naive app and the service at 1 and at the default ``workers``, then (unless
    ``anchor_only``) the bare app at both and the service's 1-worker variants."""
    one = {"MFDV_WORKERS": "1"}
    configs = [Config(NAIVE, "naive"), Config(SERVICE_1, "service", env=one)]
    if workers > 1:
        configs.append(Config(f"naive app, {workers} workers", "naive", workers=workers))
        configs.append(Config(f"{SERVICE} ({workers} workers)", "service", workers=workers))
    if anchor_only:
        return configs
    other = "torch" if choose_backend("auto", device) != "torch" else "onnx"
    configs.append(Config(BARE, "bare"))
    if workers > 1:
        configs.append(Config(f"bare app, {workers} workers", "bare", workers=workers))
    configs += [
        Config(f"service, 1 worker, MFDV_BACKEND={other}", "service", env={**one, "MFDV_BACKEND": other}),
        Config(
            "service, 1 worker, micro-batching off (MFDV_MAX_BATCH=1)", "service", env={**one, "MFDV_MAX_BATCH": "1"}
        ),
    ]
    return configs


def pct(lat: np.ndarray, q: float) -> float:
    return float(np.percentile(lat, q) * 1e3) if lat.size else float("nan")


def http_report(args: argparse.Namespace, configs: list[Config], device: str, workers: int) -> str:
    def rps(c: Config) -> float:
        return float(np.mean([r.rps for r in c.runs]))

    def latencies(c: Config) -> np.ndarray:
        return np.concatenate([r.latencies for r in c.runs])

    ceiling = {c.workers: rps(c) for c in configs if c.kind == "bare"}
    rounds = " | ".join(f"round {i + 1}" for i in range(args.rounds))
    rows = [
        f"| configuration ({args.clients} clients) | {rounds} | req/s | p50 ms | p99 ms | p99/p50 | share of the "
        "bare app | images per batch | errors |",
        "|---|" + "---:|" * (args.rounds + 7),
    ]
    for c in configs:
        lat = latencies(c)
        p50, p99 = pct(lat, 50), pct(lat, 99)
        share = f"{rps(c) / ceiling[c.workers]:.0%}" if c.kind == "service" and c.workers in ceiling else "-"
        batches = [r.batch for r in c.runs if r.batch is not None]
        batch = f"{np.mean(batches):.1f}" if batches else "-"
        per_round = " | ".join(f"{r.rps:,.0f}" for r in c.runs)
        rows.append(
            f"| {c.name} | {per_round} | {rps(c):,.0f} | {p50:.1f} | {p99:.1f} | {p99 / p50:.2f} | {share} | {batch} | "
            f"{sum(r.errors for r in c.runs)} |"
        )
    rows += ["", anchor_table(configs, workers)]
    by_kind = {(c.kind, c.workers, bool(c.env.keys() - {"MFDV_WORKERS"})): c for c in configs}
    service, bare = by_kind[("service", 1, False)], by_kind.get(("bare", 1, False))
    if bare is None:  # --anchor-only
        return "\n".join(rows)
    lat = latencies(service)
    share = rps(service) / rps(bare)
    p50, p99 = pct(lat, 50), pct(lat, 99)
    off = next(c for c in configs if "MFDV_MAX_BATCH" in c.env)
    goal_batching = 4.0 if device == "cuda" else None
    lines = [
        "",
        f"- service vs the HTTP-stack ceiling at {args.clients} clients, 1 worker: {rps(service):,.0f} / "
        f"{rps(bare):,.0f} req/s = {share:.0%} (goal >= 60%: {'met' if share >= 0.6 else 'NOT met'})",
        f"- service p99 / p50, 1 worker: {p99:.1f} / {p50:.1f} ms = {p99 / p50:.2f} "
        f"(goal <= 2: {'met' if p99 <= 2 * p50 else 'NOT met'})",
        f"- micro-batching on vs off (1 worker): {rps(service) / rps(off):.2f}x"
        + (
            f" (goal on a GPU >= {goal_batching:g}x)"
            if goal_batching
            else " (a CPU's cost per image barely changes with batch size)"
        ),
    ]
    if workers > 1:
        service_n, bare_n = by_kind[("service", workers, False)], by_kind[("bare", workers, False)]
        lines += [
            f"- service vs the HTTP-stack ceiling, {workers} workers: {rps(service_n) / rps(bare_n):.0%}",
            f"- {workers} workers vs 1: service {rps(service_n) / rps(service):.2f}x, bare app "
            f"{rps(bare_n) / rps(bare):.2f}x",
        ]
    return "\n".join(rows + lines)


def anchor_table(configs: list[Config], workers: int) -> str:
    """The service against the naive app (issue 19's goals): at equal workers, and at each one's default."""

    def stats(c: Config) -> tuple[float, float]:
        return float(np.mean([r.rps for r in c.runs])), pct(np.concatenate([r.latencies for r in c.runs]), 99)

    naive = {c.workers: c for c in configs if c.kind == "naive"}
    service = {c.workers: c for c in configs if c.kind == "service" and not c.env.keys() - {"MFDV_WORKERS"}}
    pairs = [(f"{n} worker{'s' if n > 1 else ''} each", naive[n], service[n], 1.2) for n in sorted(naive)]
    pairs.append((f"each at its default (naive 1, service {workers})", naive[1], service[workers], 1.5))
    rows = [
        "| against the naive app | naive req/s | service req/s | ratio | naive p99 ms | service p99 ms | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, nc, sc, goal in pairs:
        (nr, np99), (sr, sp99) = stats(nc), stats(sc)
        met = sr >= goal * nr and sp99 <= np99
        rows.append(
            f"| {label} | {nr:,.0f} | {sr:,.0f} | {sr / nr:.2f}x | {np99:.1f} | {sp99:.1f} | >= {goal:g}x req/s "
            f"and p99 no higher: {'met' if met else 'NOT met'} |"
        )
    return "\n".join(rows)


def http_part(args: argparse.Namespace, checkpoint: Path, device: str) -> str:
    shape = tuple(load_checkpoint(checkpoint, verify=False).manifest["input_shape"])
    body = Path(tempfile.mkdtemp(prefix="bench-service-")) / "body.multipart"
    ctype = multipart_body(body, shape)  # type: ignore[arg-type]
    workers = Settings(device=device).workers  # what python -m service runs here by default
    configs = http_configs(device, workers, args.anchor_only)
    for r in range(args.rounds):
        for cfg in configs:
            run = measure(args, cfg, checkpoint, body, ctype)
            cfg.runs.append(run)
            log.info(
                "round %d, %s: %.0f req/s, p50 %.1f ms, errors %d",
                r + 1,
                cfg.name,
                run.rps,
                pct(run.latencies, 50),
                run.errors,
            )
    return http_report(args, configs, device, workers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "fashion_mnist_mfdv")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of interleaved timing per in-process table")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measured run")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per HTTP run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the HTTP runs")
    p.add_argument("--skip-http", action="store_true", help="only the in-process tables")
    p.add_argument("--skip-compute", action="store_true", help="only the HTTP runs")
    p.add_argument(
        "--anchor-only",
        action="store_true",
        help="HTTP: only the naive app and the service, at 1 and at the default workers (with --skip-compute: "
        "the issue-19 comparison alone)",
    )
    p.add_argument("--hey", default=shutil.which("hey") or "hey")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.skip_http and shutil.which(args.hey) is None:
        print("hey is missing: apt-get install hey (Debian), or pass --hey PATH (or --skip-http)", file=sys.stderr)
        return 2

    checkpoint, described = resolve_checkpoint(args.checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    import onnxruntime

    cores = available_cores()
    print(f"checkpoint: {described}")
    print(
        f"machine: {cores} CPU cores ({platform.processor() or platform.machine()}), load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the start, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, CUDA {torch.cuda.get_device_name() if device == 'cuda' else 'no'}; "
        f"MFDV_BACKEND=auto picks {AUTO_BACKENDS.get(device)} here, default predict threads "
        f"{threads_per_worker(cores, 1)} (1 worker), {threads_per_worker(cores, Settings(device=device).workers)} "
        f"(the default {Settings(device=device).workers} workers)"
    )
    if not args.skip_compute:
        print(f"\n## 1. Compute ceiling (in-process, one-image requests, best of interleaved runs, {device})\n")
        table, fastest = compute_ceiling(checkpoint, device, args.budget)
        print(table)
        print("\nfastest per batch (T = 32): " + ", ".join(f"{b}: {name}" for b, name in fastest.items()))
        print(f"\n## 2. Padding to fixed backbone chunks (batch invariance; in-process, {device})\n")
        print(padding_table(checkpoint, device, args.budget))
        print("\n## 3. T draws vs one deterministic pass (torch, CPU, one process; best of interleaved runs)\n")
        print(draw_cost_table(checkpoint, args.budget / 4))
    if not args.skip_http:
        print(
            f"\n## 4. HTTP over loopback: hey, {args.clients} clients, one {SAMPLES}-draw PNG request (multipart), "
            f"{args.duration:g} s per run, {args.rounds} interleaved rounds\n"
        )
        print(http_part(args, checkpoint, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the service: (a) cost of T noise draws vs one pass, (b) HTTP throughput with micro-batching on/off.

    python benchmarks/bench_service.py                       # default checkpoint
    python benchmarks/bench_service.py --checkpoint DIR --duration 15

(a) times, in one process, one deterministic pass ``model(x, None)``, the service's
way to get T draws (one backbone pass + T head draws, plus the uncertainty summary)
and the naive way (T full forward passes), at batch 1 and 32, and prints ratios to
the one pass. Target: T=64 at batch 32 within 1.3x of one pass.

(b) starts real ``python -m service`` processes and drives each with 32 concurrent
httpx clients over loopback (one PNG image per request, T = the server's default),
micro-batching on (``MFDV_MAX_BATCH=32``) and off (``MFDV_MAX_BATCH=1``,
``MFDV_MAX_WAIT_MS=0``). Target: >= 4x requests/s with it on. Client and server share
the machine's cores, as they would on one host.

This is a benchmark, not a test: it prints tables (markdown) and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import ModelConfig, build_model, load_checkpoint, summarize  # noqa: E402
from service.backends import TorchBackend  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

log = logging.getLogger("bench")

DRAWS = (1, 16, 64, 256)
BATCHES = (1, 32)


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

    Interleaving exposes every function to the same background load; the minimum is
    the least disturbed run (this benchmark runs on machines shared with other work).
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


def draw_cost_table(checkpoint: Path, budget_s: float) -> str:
    """Part (a): markdown table of T draws vs one pass vs T passes."""
    ck = load_checkpoint(checkpoint)
    model = ck.model.eval()
    backend = TorchBackend(ck, "cpu")
    c, h, w = ck.manifest["input_shape"]
    g = torch.Generator().manual_seed(0)
    rows = [
        "| batch | T | one pass (ms) | T draws (ms) | ratio | T draws + uncertainty (ms) | ratio | T full passes (ms) | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with torch.inference_mode():
        for b in BATCHES:
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


def png_b64(rng: np.random.Generator, shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    arr = (rng.random((h, w) if c == 1 else (h, w, c)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def scrape(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def load_test(url: str, bodies: list[dict], clients: int, warmup_s: float, duration_s: float) -> dict[str, float]:
    """``clients`` concurrent loops, each sending one request after the other; stats over ``duration_s``."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.perf_counter() + warmup_s + duration_s

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        k = i
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            try:
                ok = (await client.post("/v1/predict", json=bodies[k % len(bodies)])).status_code == 200
            except httpx.HTTPError as e:
                log.warning("request failed: %r", e)
                ok = False
            if measuring:
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1
            k += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(worker(i, client)) for i in range(clients)]
        await asyncio.sleep(warmup_s)
        measuring = True
        batches0, images0 = scrape(url, "mfdv_batch_size_count"), scrape(url, "mfdv_batch_size_sum")
        t0 = time.perf_counter()
        await asyncio.sleep(duration_s)
        elapsed = time.perf_counter() - t0
        batches1, images1 = scrape(url, "mfdv_batch_size_count"), scrape(url, "mfdv_batch_size_sum")
        await asyncio.gather(*tasks)
    lat = np.array(latencies) * 1e3
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "batch": (images1 - images0) / max(1.0, batches1 - batches0),
        "errors": errors,
    }


def throughput_table(checkpoint: Path, clients: int, warmup_s: float, duration_s: float) -> str:
    """Part (b): markdown table of requests/s and latency, micro-batching on vs off."""
    shape = tuple(load_checkpoint(checkpoint, verify=False).manifest["input_shape"])
    rng = np.random.default_rng(0)
    bodies = [{"inputs": [png_b64(rng, shape)], "seed": i} for i in range(64)]  # type: ignore[arg-type]
    configs = [
        ("off (max_batch=1, max_wait=0)", {"MFDV_MAX_BATCH": "1", "MFDV_MAX_WAIT_MS": "0"}),
        ("on (max_batch=32, max_wait=5 ms)", {"MFDV_MAX_BATCH": "32", "MFDV_MAX_WAIT_MS": "5"}),
        (
            "on, one backbone call per batch (backbone_chunk=32)",
            {"MFDV_MAX_BATCH": "32", "MFDV_MAX_WAIT_MS": "5", "MFDV_BACKBONE_CHUNK": "32"},
        ),
    ]
    results = []
    for name, env in configs:
        # Admission's queue-delay limit off: this measures throughput at a fixed concurrency, not shedding.
        env = {**env, "MFDV_LOG_LEVEL": "warning", "MFDV_MAX_QUEUE_DELAY_MS": "0"}
        with ServerProcess(checkpoint, env=env, args=["--no-access-log"]) as server:
            stats = asyncio.run(load_test(server.url, bodies, clients, warmup_s, duration_s))
            if stats["errors"]:
                log.warning(
                    "%s: %d failed requests; server warnings and errors:\n%s", name, stats["errors"], server.log_tail()
                )
        results.append((name, stats))
        log.info("%s: %s", name, stats)
    base = results[0][1]["rps"]
    rows = [
        f"| micro-batching ({clients} clients) | req/s | vs off | p50 (ms) | p99 (ms) | mean images per batch | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in results:
        rows.append(
            f"| {name} | {s['rps']:.1f} | {s['rps'] / base:.2f}x | {s['p50']:.1f} | {s['p99']:.1f} | "
            f"{s['batch']:.1f} | {s['errors']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "fashion_mnist_mfdv")
    p.add_argument("--budget", type=float, default=8.0, help="seconds of interleaved timing per batch size in part (a)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per configuration in part (b)")
    p.add_argument("--skip-http", action="store_true", help="only part (a)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    checkpoint, described = resolve_checkpoint(args.checkpoint)
    cpu = platform.processor() or platform.machine()
    print(f"checkpoint: {described}")
    print(
        f"machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CUDA {'yes' if torch.cuda.is_available() else 'no'}"
    )
    print("\n(a) cost of T draws vs one deterministic pass (torch, CPU, one process; best of interleaved runs)\n")
    print(draw_cost_table(checkpoint, args.budget))
    if not args.skip_http:
        print(f"\n(b) HTTP over loopback, {args.clients} concurrent clients, 1 PNG image per request\n")
        print(throughput_table(checkpoint, args.clients, args.warmup, args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())

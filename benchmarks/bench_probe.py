"""Benchmark: predict latency idle vs while attack probes run (``POST /v1/attack-probe``).

    python benchmarks/bench_probe.py                           # default checkpoint, 20 s per phase
    python benchmarks/bench_probe.py --checkpoint DIR --duration 30 --clients 4

Starts a real ``python -m service`` on the checkpoint and drives ``/v1/predict`` with
``--clients`` concurrent httpx clients over loopback (one PNG per request, closed loop,
T = the server's default), first with nothing else running (idle), then while
``--probers`` clients send attack probes back to back (PGD, EOT 16 draws, 20 steps,
``--probe-inputs`` inputs each, eps 0.1). Prints both phases' p50/p99 and the ratios
side by side. Target: predict p99 under probes <= 2x its idle value (probes run in
their own bounded pool, ``MFDV_ATTACK_WORKERS``, apart from the prediction batcher).
Client and server share the machine's cores, as they would on one host.

This is a benchmark, not a test: it prints a table (markdown) and asserts nothing.
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
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.config import DEFAULT_MODEL_DIR  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

log = logging.getLogger("bench_probe")


def png_b64(rng: np.random.Generator, size: int) -> str:
    """A random 8-bit grey image as base64 PNG."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def predict_loop(client: httpx.AsyncClient, body: dict, stop_at: float, out: list[float]) -> None:
    """Send predictions back to back until ``stop_at``; append each latency (s)."""
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        r = await client.post("/v1/predict", json=body)
        r.raise_for_status()
        out.append(time.perf_counter() - t)


async def probe_loop(client: httpx.AsyncClient, body: dict, stop: asyncio.Event, out: list[float]) -> None:
    """Send attack probes back to back until ``stop`` is set; append each latency (s)."""
    while not stop.is_set():
        t = time.perf_counter()
        r = await client.post("/v1/attack-probe", json=body, timeout=600)
        if r.status_code == 503:  # the attack pool is full: back off as told
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            continue
        r.raise_for_status()
        out.append(time.perf_counter() - t)


async def phase(url: str, args: argparse.Namespace, images: list[str], probe_body: dict | None) -> dict[str, float]:
    """One measurement phase: ``clients`` predict loops for ``duration`` s, with probes running if given."""
    limits = httpx.Limits(max_connections=args.clients + args.probers + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        probes: list[float] = []
        stop = asyncio.Event()
        probers = []
        if probe_body is not None:
            probers = [asyncio.create_task(probe_loop(client, probe_body, stop, probes)) for _ in range(args.probers)]
            await asyncio.sleep(args.probe_lead)  # let the first probes start before measuring
        lat: list[float] = []
        stop_at = time.perf_counter() + args.duration
        bodies = [{"inputs": [images[i % len(images)]], "seed": i} for i in range(args.clients)]
        start = time.perf_counter()
        await asyncio.gather(*(predict_loop(client, b, stop_at, lat) for b in bodies))
        elapsed = time.perf_counter() - start
        stop.set()
        await asyncio.gather(*probers)
    a = np.array(lat) * 1e3
    return {
        "requests": len(lat),
        "rps": len(lat) / elapsed,
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "probes": len(probes),
        "probe_s": float(np.mean(probes)) if probes else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / DEFAULT_MODEL_DIR)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of predict load per phase")
    p.add_argument("--clients", type=int, default=4, help="concurrent predict clients")
    p.add_argument("--probers", type=int, default=2, help="concurrent attack-probe clients")
    p.add_argument("--probe-inputs", type=int, default=16)
    p.add_argument("--probe-lead", type=float, default=1.0, help="seconds probes run before predict is measured")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    rng = np.random.default_rng(0)
    size = 28
    images = [png_b64(rng, size) for _ in range(16)]
    probe_body = {
        "inputs": [png_b64(rng, size) for _ in range(args.probe_inputs)],
        "attacks": [{"name": "pgd", "eps": 0.1, "steps": 20, "eot": 16}],
        "judge_samples": 64,
        "seed": 0,
    }
    env = {"MFDV_LOG_LEVEL": "warning"}
    log.info(
        "serving %s; %d predict clients, %d probers, %.0f s per phase",
        args.checkpoint,
        args.clients,
        args.probers,
        args.duration,
    )
    with ServerProcess(args.checkpoint, env=env, args=["--no-access-log"]) as server:
        asyncio.run(phase(server.url, argparse.Namespace(**{**vars(args), "duration": 2.0}), images, None))  # warm-up
        idle = asyncio.run(phase(server.url, args, images, None))
        busy = asyncio.run(phase(server.url, args, images, probe_body))

    print(f"\n## Predict latency idle vs under attack probes ({args.checkpoint.name})\n")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.clients} predict clients (1 PNG each, default T), {args.probers} probe clients "
        f"(PGD eps 0.1, 20 steps, EOT 16, {args.probe_inputs} inputs, judge 64), {args.duration:.0f} s per phase\n"
    )
    print("| phase | predict requests | req/s | p50 ms | p99 ms | probes done | mean probe s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in (("idle", idle), ("probes running", busy)):
        print(
            f"| {name} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['probes']} | "
            f"{r['probe_s']:.2f} |"
        )
    print(
        f"| ratio (probes / idle) | | {busy['rps'] / idle['rps']:.2f}x | {busy['p50'] / idle['p50']:.2f}x | "
        f"**{busy['p99'] / idle['p99']:.2f}x** (target <= 2x) | | |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: prediction throughput and latency idle vs while attack probes run, and what a probe's cost unit takes.

    python -m benchmarks.bench_probe                           # default checkpoint, 20 s per phase
    python -m benchmarks.bench_probe --checkpoint DIR --duration 30 --clients 4 --probers 4 --no-compare-nice

(a) Starts a real ``python -m service`` on the checkpoint and drives ``/v1/predict`` with
``--clients`` concurrent clients over loopback (one PNG per request, closed loop, T = the
server's default), first with nothing else running (idle), then while ``--probers`` clients
send attack probes back to back (PGD, EOT 16 draws, 20 steps, ``--probe-inputs`` inputs each,
eps 0.1). Attack workers run at the lowest OS priority (``MFDV_ATTACK_NICE=19``); with
``--compare-nice`` (default) a second server with ``MFDV_ATTACK_NICE=0`` runs the same probe
phase, side by side. Prints each phase's requests/s, p50 and p99 and their ratios to idle.
Targets: requests/s under probes >= 0.80x idle; p99 under probes <= 2x idle. The predict load
comes from ``hey`` when it is installed (``apt-get install hey``; a compiled client measures the
server, where Python clients would take the cores themselves), else from httpx clients.

(b) Measures, in this process on one CPU thread (``MFDV_ATTACK_THREADS=1``), what one cost unit
of ``spec.cost`` (one backbone pass for one input) takes in the worst case: a gradient unit on
one input alone (APGD, PGD) with 1 and with ``MFDV_MAX_SAMPLES`` EOT draws, a score unit on one
input that does not flip (Square) with 1 and ``MFDV_MAX_SAMPLES`` draws per query, and prints the
caps they give for ``--limit`` seconds (the arithmetic of docs/attack-probe.md).

This is a benchmark, not a test: it prints tables (markdown) and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from models import load_checkpoint
from models.attacks import make_attack
from service.config import DEFAULT_MODEL_DIR, Settings
from tests.support.server import ServerProcess

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench_probe")


def png_b64(rng: np.random.Generator, size: int) -> str:
    """A random 8-bit grey image as base64 PNG."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@dataclass
class Phase:
    """One measurement phase's results."""

    name: str
    latencies: np.ndarray  # of the 200s (s)
    elapsed: float
    errors: int = 0
    probes: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.latencies.size / self.elapsed

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.latencies.size else float("nan")


class Probers:
    """``n`` clients sending attack probes back to back in a thread of their own, until the block ends."""

    def __init__(self, url: str, body: dict, n: int) -> None:
        self.url, self.body, self.n = url, body, n
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _loop(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            r = await client.post("/v1/attack-probe", json=self.body, timeout=600)
            if r.status_code == 503:  # the attack pool is full: back off as told
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            r.raise_for_status()
            self.latencies.append(time.perf_counter() - t)

    async def _main(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, limits=httpx.Limits(max_connections=self.n + 2)) as c:
            await asyncio.gather(*(self._loop(c) for _ in range(self.n)))

    def __enter__(self) -> Probers:
        if self.n:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self.n:
            self._thread.join()


def hey_load(hey: str, url: str, body_file: Path, clients: int, duration: float) -> tuple[np.ndarray, float, int]:
    """``hey`` closed loop for ``duration`` s: (latencies of the 200s, elapsed s, non-200 answers)."""
    cmd = [hey, "-z", f"{duration}s", "-c", str(clients), "-t", "60", "-m", "POST", "-T", "application/json"]
    cmd += ["-D", str(body_file), "-o", "csv", f"{url}/v1/predict"]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - start
    rows = list(csv.DictReader(io.StringIO(out)))
    ok = np.array([float(r["response-time"]) for r in rows if r["status-code"] == "200"])
    return ok, elapsed, len(rows) - ok.size


async def httpx_load(url: str, bodies: list[dict], duration: float) -> tuple[np.ndarray, float, int]:
    """Python clients (one per body), closed loop for ``duration`` s."""
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def loop(client: httpx.AsyncClient, body: dict) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            r = await client.post("/v1/predict", json=body)
            if r.status_code == 200:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=len(bodies) + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(loop(client, b) for b in bodies))
        return np.array(lat), time.perf_counter() - start, errors


def measure(
    name: str, url: str, args: argparse.Namespace, body_file: Path, bodies: list[dict], probe_body: dict | None
) -> Phase:
    with Probers(url, probe_body or {}, args.probers if probe_body else 0) as probers:
        if probe_body:
            time.sleep(args.probe_lead)  # let the first probes start before measuring
        if args.hey:
            lat, elapsed, errors = hey_load(args.hey, url, body_file, args.clients, args.duration)
        else:
            lat, elapsed, errors = asyncio.run(httpx_load(url, bodies, args.duration))
    return Phase(name, lat, elapsed, errors, probers.latencies)


def unit_costs(checkpoint: Path) -> list[tuple[str, str, float]]:
    """(attack, unit kind, CPU seconds per unit) in the worst case of each kind, on one thread."""
    torch.set_num_threads(1)
    model = load_checkpoint(checkpoint).model.eval().requires_grad_(False)
    shape = tuple(model.cfg.input_shape)
    torch.manual_seed(0)
    x = torch.rand(1, *shape) * 0.2
    with torch.no_grad():
        y = model(x, None)[0].argmax(-1)
    out = []
    draws = Settings().max_samples  # the most draws a head evaluation may take: they share the pass
    for name, kind, settings in [
        ("apgd", "gradient", {"eps": 0.1, "steps": 50, "eot": 1}),
        ("apgd", "gradient", {"eps": 0.1, "steps": 50, "eot": draws}),
        ("pgd", "gradient", {"eps": 0.1, "steps": 50, "eot": draws}),
        ("square", "score", {"eps": 1e-5, "queries": 300, "samples": 1}),
        ("square", "score", {"eps": 1e-5, "queries": 300, "samples": draws}),
    ]:
        spec = make_attack(name, **settings).resolve(shape)
        best = float("inf")
        for _ in range(3):
            cpu = time.process_time()
            res = spec.run(model, x, y, generator=torch.Generator().manual_seed(0))
            used = res.queries if kind == "score" else res.grad_evals
            best = min(best, (time.process_time() - cpu) / max(used, 1))
        out.append(
            (f"{name} ({', '.join(f'{k}={v}' for k, v in settings.items() if k != 'eps')}, 1 input)", kind, best)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / DEFAULT_MODEL_DIR)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of predict load per phase")
    p.add_argument("--clients", type=int, default=4, help="concurrent predict clients")
    p.add_argument("--probers", type=int, default=4, help="concurrent attack-probe clients")
    p.add_argument("--probe-inputs", type=int, default=16)
    p.add_argument("--probe-lead", type=float, default=1.0, help="seconds probes run before predict is measured")
    p.add_argument("--compare-nice", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--hey", default=shutil.which("hey"), help="hey's path (default: on PATH; none: httpx clients)")
    p.add_argument("--limit", type=float, default=Settings().max_probe_seconds, help="wall-time limit for (b)")
    p.add_argument("--skip-http", action="store_true", help="only (b)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    rng = np.random.default_rng(0)
    size = 28
    images = [png_b64(rng, size) for _ in range(16)]
    bodies = [{"inputs": [images[i % len(images)]], "seed": i} for i in range(args.clients)]
    body_file = Path(tempfile.mkdtemp(prefix="bench-probe-")) / "predict.json"
    body_file.write_text(json.dumps({"inputs": [images[0]]}))
    probe_body = {
        "inputs": [png_b64(rng, size) for _ in range(args.probe_inputs)],
        "attacks": [{"name": "pgd", "eps": 0.1, "steps": 20, "eot": 16}],
        "judge_samples": 64,
        "seed": 0,
    }
    phases: list[Phase] = []
    if not args.skip_http:
        servers = [("", {}), (" (MFDV_ATTACK_NICE=0)", {"MFDV_ATTACK_NICE": "0"})]
        for suffix, extra in servers[: 2 if args.compare_nice else 1]:
            env = {"MFDV_LOG_LEVEL": "warning", "MFDV_DRAIN_SECONDS": "0", **extra}
            log.info(
                "serving %s%s; %d predict clients, %d probers", args.checkpoint, suffix, args.clients, args.probers
            )
            with ServerProcess(args.checkpoint, env=env, args=["--no-access-log"]) as server:
                warm = argparse.Namespace(**{**vars(args), "duration": 2.0})
                measure("warm-up", server.url, warm, body_file, bodies, None)
                if not suffix:
                    phases.append(measure("idle", server.url, args, body_file, bodies, None))
                phases.append(measure(f"probes running{suffix}", server.url, args, body_file, bodies, probe_body))

    costs = unit_costs(args.checkpoint)

    print(f"\n## Predictions while attack probes run ({args.checkpoint.name})\n")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"{args.clients} predict clients ({'hey' if args.hey else 'httpx'}, 1 PNG each, default T), "
        f"{args.probers} probe clients (PGD eps 0.1, 20 steps, EOT 16, {args.probe_inputs} inputs, judge 64), "
        f"{args.duration:.0f} s per phase; client and server share the machine\n"
    )
    if phases:
        idle = phases[0]
        print(
            "| phase | predict 200s | req/s | vs idle | p50 ms | p99 ms | p99 vs idle | other answers | probes done | mean probe s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for ph in phases:
            probe_s = f"{np.mean(ph.probes):.2f}" if ph.probes else "-"
            print(
                f"| {ph.name} | {ph.latencies.size} | {ph.rps:.1f} | {ph.rps / idle.rps:.2f}x | {ph.p(50):.2f} | "
                f"{ph.p(99):.2f} | {ph.p(99) / idle.p(99):.2f}x | {ph.errors} | {len(ph.probes)} | {probe_s} |"
            )
        busy = phases[1]
        print(
            f"\n- throughput while probes run: {busy.rps / idle.rps:.2f}x idle (target >= 0.80x): "
            f"{'met' if busy.rps >= 0.8 * idle.rps else 'NOT met'}"
        )
        print(
            f"- p99 while probes run: {busy.p(99) / idle.p(99):.2f}x idle (target <= 2x): "
            f"{'met' if busy.p(99) <= 2 * idle.p(99) else 'NOT met'}"
        )

    print(f"\n## Worst-case cost units on this machine (one attack thread) and the caps for {args.limit:g} s\n")
    print("| attack | unit | CPU ms per unit | units in the limit |")
    print("|---|---|---:|---:|")
    for what, kind, sec in costs:
        print(f"| {what} | {kind} | {sec * 1e3:.3f} | {int(args.limit / sec):,} |")
    worst = {kind: max(sec for _, k, sec in costs if k == kind) for kind in ("gradient", "score")}
    s = Settings()
    print(
        f"\n- MFDV_MAX_PROBE_GRADIENT_BUDGET for {args.limit:g} s: {int(args.limit / worst['gradient']):,} "
        f"(default {s.max_probe_gradient_budget:,})"
    )
    print(
        f"- MFDV_MAX_PROBE_QUERIES for {args.limit:g} s: {int(args.limit / worst['score']):,} "
        f"(default {s.max_probe_queries:,})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

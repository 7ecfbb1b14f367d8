"""Benchmark: overload with Debian's ``hey``: how fast the 503s come, and what the 200s keep, at 32 and 2,000 clients.

    python -m benchmarks.bench_overload                    # default checkpoint; 32 and 2000 clients
    python -m benchmarks.bench_overload --clients 32 500 2000 --per-client 10 --no-compare
    python -m benchmarks.bench_overload --clients 2000 --no-compare --pin   # server and hey on their own cores

Starts a real ``python -m service`` on the checkpoint (loopback, access log off) and drives
``POST /v1/predict`` (JSON, one base64 28x28 PNG, the default T) with ``hey`` at each
concurrency in ``--clients``, closed loop: every client sends its next request when its last
one is answered, ``--per-client`` requests each (at least ``--min-requests`` in all). ``hey``
is a compiled client: a Python client would saturate two cores before the server does.

For each run it prints the 200s (count, rate, p50/p99 latency), the 503s (count, p50/p99
latency, when the first arrived), the tail of every answer (p99, the longest, the share over
1 s: a client starved while others are served shows there) and what else happened (other
statuses, connection errors).
The goal: at 2,000 clients the 503s have p99 <= 100 ms, and the 200s keep the latency of the
32-client case. With ``--compare`` (default) the same runs go against a second server with
admission control off (``MFDV_MAX_INFLIGHT`` = 1,000,000, ``MFDV_MAX_QUEUE_DELAY_MS`` = 0:
only the 1,024-request batcher queue, checked after parsing and decoding, sheds load), so the
two are side by side in one run. Needs ``hey`` (``apt-get install hey``) and raises the
open-file limit for itself, the server and hey (2,000 connections).

This is a benchmark, not a test: it prints tables (markdown) and asserts nothing. The test
suite's overload checks are ``tests/integration/test_overload.py``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from service.config import DEFAULT_MODEL_DIR
from tests.support.server import ServerProcess

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench_overload")

ADMISSION_OFF = {"MFDV_MAX_INFLIGHT": "1000000", "MFDV_MAX_QUEUE_DELAY_MS": "0"}


@dataclass(frozen=True)
class Run:
    """One ``hey`` run, summarized."""

    clients: int
    sent: int
    wall_s: float
    ok: np.ndarray  # latencies (s) of the 200s
    refused: np.ndarray  # latencies (s) of the 503s
    first_refusal_s: float  # from the start of the run to the first 503's arrival
    other: dict[str, int]  # other statuses, and "connection errors"


def raise_open_files() -> None:
    """Lift this process's soft open-file limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def request_body(path: Path, size: int) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    path.write_text(json.dumps({"inputs": [base64.b64encode(buf.getvalue()).decode()]}))


def split_cores() -> tuple[set[int], set[int]]:
    """The cores this process may use, split in two: the server's (the first half) and the client's (the rest)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin needs at least two cores")
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


@contextmanager
def on_cores(cores: set[int] | None) -> Iterator[None]:
    """Run the block (and the processes it starts, which inherit the mask) on ``cores``; None: unchanged."""
    before = os.sched_getaffinity(0)
    if cores is not None:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_hey(
    hey: str, url: str, body: Path, clients: int, requests: int, timeout_s: int, cores: set[int] | None = None
) -> Run:
    cmd = [hey, "-n", str(requests), "-c", str(clients), "-t", str(timeout_s), "-m", "POST"]
    cmd += ["-T", "application/json", "-D", str(body), "-o", "csv", f"{url}/v1/predict"]
    with on_cores(cores):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    ok, refused, other = [], [], {}
    first = float("inf")
    end = 0.0
    for row in rows:
        latency, offset, status = float(row["response-time"]), float(row["offset"]), row["status-code"]
        end = max(end, offset + latency)
        if status == "200":
            ok.append(latency)
        elif status == "503":
            refused.append(latency)
            first = min(first, offset + latency)
        else:
            other[status] = other.get(status, 0) + 1
    if len(rows) < requests:  # hey's CSV lists answered requests only
        other["connection errors"] = requests - len(rows)
    return Run(clients, requests, end, np.array(ok), np.array(refused), first, other)


def ms(values: np.ndarray, q: float) -> str:
    return f"{np.percentile(values, q) * 1e3:.1f}" if values.size else "-"


def table(title: str, runs: list[Run]) -> None:
    print(f"\n### {title}\n")
    print(
        "| clients | requests | 200s | 200/s | 200 p50 ms | 200 p99 ms | 503s | 503 p50 ms | 503 p99 ms "
        "| first 503 after s | all p99 ms | all max s | over 1 s | other |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        first = f"{r.first_refusal_s:.2f}" if r.refused.size else "-"
        other = ", ".join(f"{k}: {v}" for k, v in r.other.items()) or "none"
        every = np.concatenate([r.ok, r.refused])
        slow = f"{(every > 1.0).mean():.2%}" if every.size else "-"
        worst = f"{every.max():.2f}" if every.size else "-"
        print(
            f"| {r.clients} | {r.sent} | {r.ok.size} | {r.ok.size / r.wall_s:.1f} | {ms(r.ok, 50)} | {ms(r.ok, 99)} "
            f"| {r.refused.size} | {ms(r.refused, 50)} | {ms(r.refused, 99)} | {first} | {ms(every, 99)} | {worst} "
            f"| {slow} | {other} |"
        )


def verdict(runs: list[Run]) -> None:
    small, big = min(runs, key=lambda r: r.clients), max(runs, key=lambda r: r.clients)
    if small is big:
        return
    print()
    if big.refused.size:
        p99 = np.percentile(big.refused, 99) * 1e3
        print(
            f"- 503 p99 at {big.clients} clients: {p99:.1f} ms (goal <= 100 ms): {'met' if p99 <= 100 else 'NOT met'}"
        )
    if small.ok.size and big.ok.size:
        for q in (50, 99):
            a, b = np.percentile(small.ok, q) * 1e3, np.percentile(big.ok, q) * 1e3
            print(f"- 200 p{q}: {b:.1f} ms at {big.clients} clients vs {a:.1f} ms at {small.clients} ({b / a:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / DEFAULT_MODEL_DIR)
    p.add_argument("--clients", type=int, nargs="+", default=[32, 2000], help="concurrency of each run")
    p.add_argument("--per-client", type=int, default=10, help="requests per client in a run")
    p.add_argument("--min-requests", type=int, default=3000, help="fewest requests in a run")
    p.add_argument("--timeout", type=int, default=60, help="hey's per-request timeout (s)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True, help="also admission off")
    p.add_argument("--hey", default=shutil.which("hey") or "hey")
    p.add_argument(
        "--workers", type=int, default=1, help="MFDV_WORKERS of the server (the service's own default: one per core)"
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="run the server on the first half of the cores and hey on the rest (on 2 cores: one each), so that "
        "the load generator cannot take the server's CPU, as if they ran on two machines",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if shutil.which(args.hey) is None:
        print("hey is missing: apt-get install hey (Debian), or pass --hey PATH", file=sys.stderr)
        return 2
    raise_open_files()
    body = Path(tempfile.mkdtemp(prefix="bench-overload-")) / "predict.json"
    request_body(body, 28)

    server_cores, client_cores = split_cores() if args.pin else (None, None)
    configs = [("admission on (the defaults)", {})]
    if args.compare:
        configs.append(("admission off (1,024-request batcher queue only)", ADMISSION_OFF))
    results = []
    for name, env in configs:
        log.info("%s: serving %s", name, args.checkpoint)
        env = {"MFDV_LOG_LEVEL": "warning", "MFDV_DRAIN_SECONDS": "0", "MFDV_WORKERS": str(args.workers), **env}
        # the server's processes and threads inherit the mask; run_hey moves hey to the client's cores
        with on_cores(server_cores), ServerProcess(args.checkpoint, env=env, args=["--no-access-log"]) as server:
            run_hey(args.hey, server.url, body, 8, 400, args.timeout, client_cores)  # warm-up
            runs = []
            for c in args.clients:
                n = max(c * args.per_client, args.min_requests)
                n += -n % c  # hey sends n // c per client: a remainder would be counted as lost
                log.info("%s: %d clients, %d requests", name, c, n)
                runs.append(run_hey(args.hey, server.url, body, c, n, args.timeout, client_cores))
        results.append((name, runs))

    print(f"\n## Overload: /v1/predict under hey ({args.checkpoint.name})\n")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"hey closed loop, {args.per_client} requests per client (at least {args.min_requests} per run), "
        f"one 28x28 PNG per request (JSON, base64), default T, {args.workers} worker(s); "
        + (
            f"server pinned to cores {sorted(server_cores)}, hey to {sorted(client_cores)}"
            if server_cores and client_cores
            else "client and server share the machine's cores"
        )
    )
    for name, runs in results:
        table(name, runs)
        verdict(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

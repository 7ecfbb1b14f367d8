"""Benchmark: what a second loaded model costs the one that gets the traffic (issue 18's goal: within 10%).

    python -m benchmarks.bench_repository                     # 3 rounds x 10 s, 32 clients, 1 worker
    python -m benchmarks.bench_repository --rounds 5 --duration 15 --workers 2

Side by side, in interleaved rounds (one server at a time, started afresh for each run), with Debian's
``hey`` posting one multipart PNG (T = 32) closed loop:

- ``one model``: ``--model-dir checkpoints/fashion_mnist_mfdv``, traffic on ``/v1/predict``;
- ``two loaded, default route``: ``--model-repository checkpoints`` (both committed checkpoints
  loaded), the same traffic on ``/v1/predict`` (the default model);
- ``two loaded, named route``: the same repository, traffic on ``/v1/models/fashion_mnist_mfdv/predict``;
- ``two loaded, traffic on both``: half the clients on each model (their sum is the throughput).

It prints each configuration's median req/s over the rounds, the latency of the 200s, anything but
200, the ratio to ``one model`` measured in the same run, and the server's resident memory after
its run (what the second loaded model costs). A benchmark, not a test: it asserts
nothing. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.bench_service import multipart_body, run_hey
from tests.support.process import proc_status
from tests.support.server import REPO, ServerProcess

MODEL = "fashion_mnist_mfdv"


@dataclass
class Config:
    name: str
    repository: bool
    paths: list[str]  # one hey per path, the clients split between them
    rps: list[float] = field(default_factory=list)
    latencies: list[np.ndarray] = field(default_factory=list)
    errors: int = 0
    rss_mb: list[float] = field(default_factory=list)


def measure(args: argparse.Namespace, cfg: Config, body: Path, ctype: str) -> None:
    target = REPO / "checkpoints" if cfg.repository else REPO / "checkpoints" / MODEL
    env = {"MFDV_LOG_LEVEL": "warning", "MFDV_MAX_QUEUE_DELAY_MS": "0", "MFDV_WORKERS": str(args.workers)}
    with ServerProcess(target, repository=cfg.repository, env=env, args=["--no-access-log", "--device", "cpu"]) as s:
        share = max(1, args.clients // len(cfg.paths))

        def load(seconds: float) -> list[tuple[int, np.ndarray, int]]:
            with concurrent.futures.ThreadPoolExecutor(len(cfg.paths)) as pool:
                runs = [pool.submit(run_hey, args.hey, s.url + p, body, ctype, share, seconds) for p in cfg.paths]
                return [r.result() for r in runs]

        load(args.warmup)
        results = load(args.duration)
        assert s.proc is not None
        cfg.rss_mb.append(proc_status(s.proc.pid, "VmRSS") / 2**20)
    cfg.rps.append(sum(n for n, _, _ in results) / args.duration)
    cfg.latencies.append(np.concatenate([lat for _, lat, _ in results]))
    cfg.errors += sum(e for _, _, e in results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="MFDV_WORKERS of every server")
    ap.add_argument("--hey", default=shutil.which("hey") or "hey")
    args = ap.parse_args(argv)
    if not shutil.which(args.hey):
        print("needs hey: apt-get install hey", file=sys.stderr)
        return 2
    configs = [
        Config("one model", False, ["/v1/predict"]),
        Config("two loaded, default route", True, ["/v1/predict"]),
        Config("two loaded, named route", True, [f"/v1/models/{MODEL}/predict"]),
        Config(
            "two loaded, traffic on both",
            True,
            [f"/v1/models/{MODEL}/predict", "/v1/models/fashion_mnist_vanilla/predict"],
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        ctype = multipart_body(body, (1, 28, 28))
        for r in range(args.rounds):
            for cfg in configs if r % 2 == 0 else configs[::-1]:  # alternate the order: no position bias
                measure(args, cfg, body, ctype)
                print(f"round {r + 1}: {cfg.name}: {cfg.rps[-1]:.0f} req/s", file=sys.stderr)
    base = float(np.median(configs[0].rps))
    print(
        f"\n{platform.node()}: {args.rounds} rounds x {args.duration:g} s, {args.clients} clients (hey), "
        f"{args.workers} worker(s), multipart PNG, T = 32\n"
    )
    print("| configuration | req/s (median) | per round | p50 ms | p99 ms | non-200 | vs one model | RSS MB after |")
    print("|---|---|---|---|---|---|---|---|")
    for cfg in configs:
        lat = np.concatenate(cfg.latencies) * 1e3
        rps = float(np.median(cfg.rps))
        print(
            f"| {cfg.name} | {rps:.0f} | {' / '.join(f'{x:.0f}' for x in cfg.rps)} | {np.percentile(lat, 50):.1f} | "
            f"{np.percentile(lat, 99):.1f} | {cfg.errors} | {rps / base:.3f} | {np.median(cfg.rss_mb):.0f} |"
        )
    worst = min(float(np.median(c.rps)) / base for c in configs[1:3])
    print(f"\nTwo models loaded, traffic on one: {worst:.3f} x one model alone (goal: >= 0.90).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``MFDV_WORKERS=2``: every scrape of ``/metrics`` adds up both workers' counts.

Each request goes on a new connection, so the kernel hands them to either worker; the test
sends until both workers have served some (read from each worker's value file), then checks
that every scrape, whichever worker answers it, shows the total.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.multiprocess import MultiProcessCollector

from tests.support.server import ServerProcess

IMG = np.full((14, 14), 0.5).tolist()
PREDICT_200 = re.compile(r'^mfdv_requests_total\{method="POST",route="/v1/predict",status="200"\} (\S+)$', re.M)


def per_worker(metrics_dir: Path) -> list[float]:
    """Predict 200s counted by each worker, from its own value file."""
    counts = []
    for path in sorted(metrics_dir.glob("counter_*.db")):
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                labels = sample.labels
                if sample.name == "mfdv_requests_total" and labels.get("route") == "/v1/predict":
                    total += sample.value if labels.get("status") == "200" else 0.0
        counts.append(total)
    return counts


def test_two_workers_counts_add_up(hand_checkpoint: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"MFDV_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with ServerProcess(hand_checkpoint, env=env, args=["--device", "cpu", "--no-access-log"]) as server:
        sent = 0
        for _ in range(20):  # at most 400 requests: until both workers have served some
            for _ in range(20):
                r = httpx.post(f"{server.url}/v1/predict", json={"inputs": [IMG], "samples": 2}, timeout=60)
                assert r.status_code == 200, r.text
                sent += 1
            workers = per_worker(metrics_dir)
            if len(workers) == 2 and min(workers) > 0:
                break
        assert len(workers) == 2 and min(workers) > 0, f"one worker served everything: {workers}"
        assert sum(workers) == sent
        for _ in range(10):  # every scrape, whichever worker answers it, shows the sum
            text = httpx.get(f"{server.url}/metrics", timeout=30).text
            (value,) = PREDICT_200.findall(text)
            assert float(value) == sent, text[:2000]
            assert len(re.findall(r"^mfdv_model_info\{", text, re.M)) == 1
            assert "mfdv_inflight_requests 1.0" in text  # the scrape itself, summed over live workers

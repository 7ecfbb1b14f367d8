"""Overload against a real server: refusals are JSON 503s with Retry-After; only whole requests hold places.

Requests whose headers have arrived but whose bodies have not hold no place in flight (a client
that stalls its body cannot fill the server); a busy attack pool refuses after the API key; a
bounded burst of concurrent clients gets only 200s and 503s. The figures under real load (2,000 clients, latency of the 503s and
of the 200s) come from ``benchmarks/bench_overload.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.raw_http import in_flight, read_response, wait_for
from tests.support.server import ServerProcess

MAX_INFLIGHT = 4
KEY = "k"
IMG = np.full((14, 14), 0.5).tolist()


def answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """The response on ``sock``: status, headers and its JSON body."""
    status, headers, body = read_response(sock)
    return status, headers, json.loads(body)


@pytest.fixture(scope="module")
def server(hand_checkpoint: Path) -> Iterator[ServerProcess]:
    env = {
        "MFDV_WORKERS": "1",  # one process: its admission places and attack pool are the ones filled
        "MFDV_MAX_INFLIGHT": str(MAX_INFLIGHT),
        "MFDV_MAX_QUEUE_DELAY_MS": "0",  # only the in-flight bound: the test fills it exactly
        "MFDV_ATTACK_WORKERS": "1",
        "MFDV_ATTACK_QUEUE_SIZE": "0",
        "MFDV_API_KEY": KEY,
        "MFDV_BODY_TIMEOUT_SECONDS": "120",
        "MFDV_BODY_MIN_RATE": "0",
        "MFDV_MAX_PROBE_GRADIENT_BUDGET": "2000000",
        "MFDV_MAX_PROBE_SECONDS": "120",
    }
    with ServerProcess(hand_checkpoint, env=env, args=["--device", "cpu", "--no-access-log"]) as s:
        yield s


def headers_only(server: ServerProcess, path: str, *extra: str) -> socket.socket:
    """A connection that sent a request's headers announcing a 100-byte body, and no body."""
    sock = socket.create_connection((server.host, server.port), timeout=60)
    head = "\r\n".join([f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", "Content-Length: 100"])
    sock.sendall(("\r\n".join([head, *extra]) + "\r\n\r\n").encode())
    return sock


def test_requests_whose_bodies_have_not_arrived_hold_no_place(server: ServerProcess) -> None:
    """More headers-only requests than places: predictions are still admitted (before, each held a place).
    (The refusal from the headers of a full server is tested in tests/unit/test_service_admission.py,
    where batches can be held.)"""
    with ExitStack() as stack:
        for _ in range(MAX_INFLIGHT + 2):
            stack.enter_context(headers_only(server, "/v1/predict"))
        for _ in range(MAX_INFLIGHT):
            r = httpx.post(f"{server.url}/v1/predict", json={"inputs": [IMG]}, timeout=60)
            assert r.status_code == 200, r.text


def long_probe(server: ServerProcess) -> socket.socket:
    """A connection whose probe (64 inputs x 20,000 PGD steps, about a minute here) holds the attack pool."""
    body = json.dumps({"inputs": [IMG] * 64, "attacks": [{"name": "pgd", "eps": 0.1, "steps": 20_000}]}).encode()
    sock = socket.create_connection((server.host, server.port), timeout=60)
    head = (
        f"POST /v1/attack-probe HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_a_busy_attack_pool_refuses_after_the_key(server: ServerProcess) -> None:
    with long_probe(server):  # holds the only attack place; closing the connection cancels it
        wait_for(lambda: in_flight(server.url) > 1, "the long probe to be in flight")  # + this scrape
        with headers_only(server, "/v1/attack-probe", f"X-API-Key: {KEY}") as sock:
            sock.sendall(b" " * 100)  # the whole body: only then is a place asked for
            status, headers, body = answer(sock)
        assert status == 503 and headers["retry-after"] and "attack pool is busy" in body["error"]
        with headers_only(server, "/v1/attack-probe") as sock:  # no key: told so, not whether the pool is busy
            sock.sendall(b" " * 100)
            status, headers, body = answer(sock)
        assert status == 401 and "www-authenticate" in headers


def counted_503s(server: ServerProcess, route: str) -> float:
    """``mfdv_requests_total`` of ``POST route`` answered 503, from ``/metrics``."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    series = f'mfdv_requests_total{{method="POST",route="{route}",status="503"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(series))


def test_a_burst_gets_only_200s_and_json_503s(server: ServerProcess) -> None:
    """Every 503 is counted in /metrics, whether the protocol answered it from the head (no ASGI task) or the
    middleware did (once the body was in)."""
    before = counted_503s(server, "/v1/predict")

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            bodies = [{"inputs": [IMG], "samples": 8, "seed": i} for i in range(200)]
            return await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies))

    responses = asyncio.run(burst())
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "200 concurrent requests against 4 places: some must be refused"
    assert all(r.headers["retry-after"] and set(r.json()) == {"error"} for r in refused)
    assert counted_503s(server, "/v1/predict") - before == len(refused)
    ok = [r for r in responses if r.status_code == 200]
    assert ok and all(r.json()["predictions"][0]["label"] in range(4) for r in ok)

"""SIGTERM to a real ``python -m service``: drain while listening, answer what is cut, never outlive the grace period.

Judged by what clients see and by the process exiting, not by clocks: during the drain window a
new connection gets 503 from the readiness routes and 200 from predictions; a request still
waiting at the end of the grace period gets a JSON 503 with ``Retry-After``; a probe whose own
work would take hours ends with partial results and lets the process exit.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.raw_http import in_flight, read_response, wait_for
from tests.support.server import ServerProcess

IMG = np.full((14, 14), 0.5).tolist()
TOP = np.where(np.arange(14)[:, None] < 7, 200 / 255, 20 / 255).repeat(14, 1).tolist()  # class 0: bright top half
EXIT_S = 60  # the process must be gone this long after its last signal (its own limits are far shorter)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """The response on ``sock``: status, headers and its JSON body."""
    status, headers, body = read_response(sock)
    return status, headers, json.loads(body)


def exited(server: ServerProcess) -> int:
    assert server.proc is not None
    try:
        code = server.proc.wait(timeout=EXIT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit:\n{server.log_tail()}") from None
    assert code in (0, -signal.SIGTERM), server.log_tail()  # uvicorn re-raises SIGTERM after a clean exit
    return code


def start(hand_checkpoint: Path, env: dict[str, str]) -> ServerProcess:
    return ServerProcess(hand_checkpoint, env=env, args=["--device", "cpu", "--no-access-log"]).start()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_with_readiness_503_while_still_serving(hand_checkpoint: Path, workers: str) -> None:
    server = start(hand_checkpoint, {"MFDV_DRAIN_SECONDS": "600", "MFDV_WORKERS": workers})
    try:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503, "/readyz to answer 503")
        r = httpx.get(f"{server.url}/readyz", timeout=30)  # a new connection: the listener is still open
        assert r.status_code == 503 and r.headers["retry-after"] and "shutting down" in r.json()["error"]
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 503
        assert httpx.get(f"{server.url}/v2/models/tiny_mfdv/ready", timeout=30).status_code == 503
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200  # alive: do not restart it
        p = httpx.post(f"{server.url}/v1/predict", json={"inputs": [IMG], "samples": 4}, timeout=60)
        assert p.status_code == 200 and p.headers["connection"] == "close"  # served, and told to go elsewhere
        assert server.proc.poll() is None  # the window is 600 s: still running
        server.proc.send_signal(signal.SIGTERM)  # a second SIGTERM ends the window
        exited(server)
        log = server.log_tail(100_000)
        assert log.count("draining for 600 s") == int(workers), log  # every worker drained
        assert log.count("Application shutdown complete") == int(workers), log
    finally:
        server.stop()
        server.close()


def test_the_drain_window_ends_by_itself(hand_checkpoint: Path) -> None:
    server = start(hand_checkpoint, {"MFDV_DRAIN_SECONDS": "1"})
    try:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        exited(server)
    finally:
        server.stop()
        server.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_request_cut_at_the_grace_deadline_gets_a_json_503(hand_checkpoint: Path, workers: str) -> None:
    env = {
        "MFDV_DRAIN_SECONDS": "0",
        "MFDV_GRACEFUL_SECONDS": "1",
        "MFDV_BODY_TIMEOUT_SECONDS": "600",
        "MFDV_BODY_MIN_RATE": "0",  # the body never comes: only the grace period ends its wait
        "MFDV_WORKERS": workers,
    }
    server = start(hand_checkpoint, env)
    try:
        assert server.proc is not None
        with socket.create_connection((server.host, server.port), timeout=EXIT_S) as sock:
            # The headers of a request whose body never comes: it is in flight until the grace period ends.
            sock.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            wait_for(lambda: in_flight(server.url) > 1, "the request to be in flight")  # it and this scrape
            server.proc.send_signal(signal.SIGTERM)
            status, headers, body = answer(sock)
        assert status == 503 and headers["retry-after"] == "1", body
        assert headers["content-type"] == "application/json" and "MFDV_GRACEFUL_SECONDS" in body["error"]
        exited(server)
        assert "Exception in ASGI application" not in server.log_tail(100_000)
    finally:
        server.stop()
        server.close()


def test_a_running_attack_ends_with_partial_results_and_the_process_exits(hand_checkpoint: Path) -> None:
    env = {
        "MFDV_DRAIN_SECONDS": "0",
        "MFDV_GRACEFUL_SECONDS": "4",
        "MFDV_MAX_PROBE_SECONDS": "3600",
        "MFDV_MAX_PROBE_QUERIES": str(10**8),
    }
    server = start(hand_checkpoint, env)
    try:
        assert server.proc is not None
        # Hours of work: 1,000,000 queries of 16 draws, eps so small that nothing flips.
        body = {
            "inputs": [TOP],
            "labels": [0],
            "attacks": [{"name": "square", "eps": 1e-4, "queries": 1_000_000, "samples": 16}],
            "judge_samples": 8,
        }
        result: dict[str, httpx.Response] = {}
        client = threading.Thread(
            target=lambda: result.setdefault(
                "r", httpx.post(f"{server.url}/v1/attack-probe", json=body, timeout=EXIT_S * 2)
            )
        )
        client.start()
        wait_for(lambda: in_flight(server.url) > 1, "the probe to be in flight")
        server.proc.send_signal(signal.SIGTERM)
        exited(server)
        client.join(EXIT_S)
        r = result["r"]
        if r.status_code == 200:  # stopped before the grace period ended, with what it had
            d = r.json()
            assert d["partial"] is True and "shutting down" in d["partial_reason"], d["partial_reason"]
            assert "shutting down" in d["attacks"][0]["info"]["stopped"]  # not "wall-time limit": the stop's reason
        else:  # or cut at its end: still a JSON answer
            assert r.status_code == 503 and r.headers["retry-after"] and set(r.json()) == {"error"}, r.text
    finally:
        server.stop()
        server.close()

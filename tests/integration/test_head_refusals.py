"""Admission's refusals answered by the HTTP protocol from a request's head, against a real uvicorn server of the
real app: ``create_app`` behind ``python -m service``'s protocol (``service.edge.server.http_protocol``), raw sockets.

The server runs in this process, so a batch can be held in the compute thread and the one place in flight
(``max_inflight=1``) stays taken: every prediction after it is refused, deterministically. A refused request
on a kept-alive connection gets the JSON 503 with ``Retry-After``, and the connection serves the next request;
the refusals are counted in ``/metrics`` under their route templates, and the middleware refused none of them
(the protocol answered first, before any ASGI task existed).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn

from service.app import create_app
from service.config import Settings
from service.edge.middleware import EdgeMiddleware
from service.edge.server import ConnectionLimits, http_protocol
from tests.support.raw_http import read_response
from tests.support.server import free_port, uvicorn_thread

IMG = np.full((14, 14), 0.5).tolist()


@pytest.fixture
def middleware_refusals(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each of ``EdgeMiddleware``'s admission checks decided (True: it refused the request)."""
    decided: list[bool] = []
    real = EdgeMiddleware._refused

    async def spy(*args: Any, **kwargs: Any) -> bool:
        refused = await real(*args, **kwargs)
        decided.append(refused)
        return refused

    monkeypatch.setattr(EdgeMiddleware, "_refused", staticmethod(spy))
    return decided


@contextlib.contextmanager
def serve(app: Any) -> Iterator[int]:
    """uvicorn serving ``app`` as ``python -m service`` does (its protocol, asyncio's loop), on a free port."""
    port = free_port()
    http = http_protocol(ConnectionLimits())
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=http, loop="asyncio", log_level="warning")
    with uvicorn_thread(config):
        yield port


def post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_a_refused_prediction_keeps_its_connection_and_is_counted(
    hand_checkpoint: Path, held_batches: tuple[threading.Event, threading.Event], middleware_refusals: list[bool]
) -> None:
    computing, release = held_batches
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu", max_inflight=1, max_wait_ms=0))
    release.set()  # the warm-up batch runs in the lifespan
    prediction = json.dumps({"inputs": [IMG], "samples": 4, "seed": 0}).encode()
    with serve(app) as port:
        computing.clear()  # hold the next batch: its request keeps the one place
        release.clear()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=60) as holder,
            socket.create_connection(("127.0.0.1", port), timeout=60) as sock,
        ):
            holder.sendall(post("/v1/predict", prediction))
            assert computing.wait(60)
            # Garbage bodies that would be 400s if they were read: the refusals come first, from the heads.
            for path in ("/v1/predict", "/v2/models/tiny_mfdv/infer", "/v1/predict"):
                sock.sendall(post(path, b"not json"))
                status, headers, body = read_response(sock)
                assert status == 503, body
                assert headers["retry-after"] == "1" and headers["content-type"] == "application/json"
                assert "connection" not in headers  # kept alive
                error = json.loads(body)
                assert set(error) == {"error"} and "MFDV_MAX_INFLIGHT" in error["error"], error
            sock.sendall(get("/healthz"))  # the next request on the same connection
            assert read_response(sock)[::2] == (200, b'{"status":"ok"}')
            release.set()
            assert read_response(holder)[0] == 200
            sock.sendall(post("/v1/predict", prediction))  # the place was given back: admitted
            status, _, body = read_response(sock)
            assert status == 200, body
            sock.sendall(get("/metrics"))
            status, _, metrics = read_response(sock)
    assert status == 200
    counted = {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in metrics.decode().splitlines()
        if line.startswith("mfdv_requests_total{")
    }
    assert counted['mfdv_requests_total{method="POST",route="/v1/predict",status="503"}'] == 2
    assert counted['mfdv_requests_total{method="POST",route="/v2/models/{name}/infer",status="503"}'] == 1
    assert counted['mfdv_requests_total{method="POST",route="/v1/predict",status="200"}'] == 2
    assert app.state.mfdv.admission.refused == 3
    assert not any(middleware_refusals), "the protocol answers refusals from the head, not the middleware"

"""A real uvicorn process (``python -m service``) on a free port, called over HTTP with httpx."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.server import ServerProcess

SIZE = 14
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def server(hand_checkpoint: Path) -> Iterator[ServerProcess]:
    env = {"MFDV_MAX_BATCH": "16", "MFDV_MAX_WAIT_MS": "20", "MFDV_MAX_BODY_BYTES": str(MAX_BODY)}
    env["MFDV_MAX_QUEUE_DELAY_MS"] = "0"  # a burst must be batched, not shed, however slow this machine is
    with ServerProcess(hand_checkpoint, env=env, args=["--device", "cpu"]) as s:
        yield s


def image(value: float) -> list:
    return np.full((SIZE, SIZE), value).tolist()


def test_health_readiness_and_models(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "tiny_mfdv"
    assert httpx.get(f"{server.url}/v1/models").json()["models"][0]["class_names"] == ["top", "bottom", "left", "right"]


def test_predict_json_and_multipart(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v1/predict", json={"inputs": [image(0.2)], "samples": 8, "seed": 1})
    assert r.status_code == 200, r.text
    buf = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE), 51, np.uint8)).save(buf, "PNG")  # 51/255 = 0.2
    r2 = httpx.post(
        f"{server.url}/v1/predict",
        files={"file": ("x.png", buf.getvalue(), "image/png")},
        data={"samples": 8, "seed": 1},
    )
    assert r2.status_code == 200, r2.text
    assert r2.json()["predictions"][0]["probs"] == pytest.approx(r.json()["predictions"][0]["probs"], abs=1e-6)


def test_concurrent_requests_are_batched_and_answers_stay_reproducible(server: ServerProcess) -> None:
    target = {"inputs": [image(0.6)], "samples": 16, "seed": 2024}
    alone = httpx.post(f"{server.url}/v1/predict", json=target)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            bodies = [{"inputs": [image(i / 40)], "samples": 4 + i % 5, "seed": i} for i in range(24)]
            bodies.insert(12, target)
            return await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 25
    assert max(r.json()["timing"]["batch_size"] for r in responses) > 1
    assert responses[12].content.partition(b',"timing":')[0] == alone.content.partition(b',"timing":')[0]
    metrics = httpx.get(f"{server.url}/metrics").text
    count = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("mfdv_batch_size_count")))
    total = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("mfdv_batch_size_sum")))
    assert total / count > 1.0  # on average, more than one image per backbone pass
    assert 'mfdv_requests_total{method="POST",route="/v1/predict",status="200"}' in metrics


def _raw_exchange(server: ServerProcess, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request head and some body bytes, never finish the body; return the response."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_oversized_body_is_rejected_before_it_is_read(server: ServerProcess) -> None:
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n"
    ).encode()
    data = _raw_exchange(server, head, [b'{"inputs": ['])  # 1 GB announced, a dozen bytes sent
    assert data.startswith(b"HTTP/1.1 413"), data[:200]  # answered although the body never ends
    assert b"over the limit" in data


def test_chunked_body_is_cut_off_at_the_limit(server: ServerProcess) -> None:
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"0," * 32768
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    parts = [chunk] * (MAX_BODY // len(piece) + 2)  # past the limit, and no terminating chunk
    data = _raw_exchange(server, head, parts)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]


def test_bad_input_over_http_is_a_4xx(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v1/predict", json={"inputs": [image(2.0)]})
    assert r.status_code == 400 and "must be in [0, 1]" in r.json()["error"]


def test_sigterm_shuts_down_gracefully(hand_checkpoint: Path) -> None:
    server = ServerProcess(hand_checkpoint, args=["--device", "cpu", "--no-access-log"]).start()
    try:
        assert httpx.post(f"{server.url}/v1/predict", json={"inputs": [image(0.5)], "samples": 2}).status_code == 200
        code = server.stop()
        log = server.log_tail()
        assert code in (0, -signal.SIGTERM), log  # uvicorn may re-raise SIGTERM after a clean shutdown
        assert "Application shutdown complete" in log and "stopped" in log
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz")
    finally:
        server.stop()
        server.close()

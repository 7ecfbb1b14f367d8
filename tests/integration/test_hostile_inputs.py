"""Hostile clients against a real ``python -m service``: every request below is a 4xx with a JSON body.

The list is what a hostile client (and a fuzzer) tries: malformed HTTP that only the server's
parser sees, numbers no field can take, pathological JSON, images that are not what they claim,
decompression bombs, forms with surprises, v2 tensors that lie about their size. Each case names
the status it must get; every answer must be ``{"error": "..."}`` and the server must log no
traceback and stay healthy.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.server import ServerProcess

SIZE = 14
KEY = "s3cret"
MAX_BODY = 1024 * 1024
HUGE = "9" * 5000  # over Python's int-string limit of 4300 digits
IMG = np.full((SIZE, SIZE), 0.5).tolist()
IMG_JSON = json.dumps([IMG])
V2 = "/v2/models/tiny_mfdv/infer"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height`` (8-bit grey), then nothing: a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def big_png16(side: int) -> bytes:
    """A 16-bit grey PNG of ``side`` x ``side`` pixels that compresses to a few tens of KB."""
    a = np.zeros((side, side), np.uint16)
    a[::7, ::5] = 60000
    return png(a)


@dataclass(frozen=True)
class Raw:
    """Bytes sent as they are over a fresh connection (what only the HTTP parser sees)."""

    data: bytes


@dataclass(frozen=True)
class Call:
    """A request made with httpx."""

    path: str
    json: Any = None
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def head(request_line: str, *headers: str, body: bytes = b"") -> Raw:
    text = "\r\n".join([request_line, "Host: x", "Connection: close", *headers]) + "\r\n\r\n"
    return Raw(text.encode("latin-1") + body)


GOOD_PNG = png(np.full((SIZE, SIZE), 128, np.uint8))
FILE = [("file", ("a.png", GOOD_PNG, "image/png"))]
PROBE = {"X-API-Key": KEY}

# (id, request, status): the hostile-input list.
CASES: list[tuple[str, Raw | Call, int]] = [
    # -- HTTP framing: answered by the server's parser, before the app --------------------------------
    ("content-length-not-a-number", head("POST /v1/predict HTTP/1.1", "Content-Length: abc", body=b"{}"), 400),
    ("content-length-negative", head("POST /v1/predict HTTP/1.1", "Content-Length: -5"), 400),
    ("content-length-twice", head("POST /v1/predict HTTP/1.1", "Content-Length: 2", "Content-Length: 3"), 400),
    ("header-with-control-byte", head("GET /healthz HTTP/1.1", "X-Bad: a\x01b"), 400),
    ("bad-request-line", Raw(b"GARBAGE\r\n\r\n"), 400),
    (
        "bad-chunk-size",
        head("POST /v1/predict HTTP/1.1", "Transfer-Encoding: chunked", body=b"zz\r\n{}\r\n0\r\n\r\n"),
        400,
    ),
    ("content-length-over-limit", head("POST /v1/predict HTTP/1.1", f"Content-Length: {10**9}"), 413),
    # -- numbers no field can take -----------------------------------------------------------------------
    (
        "predict-samples-5000-digits",
        Call("/v1/predict", content=f'{{"inputs":{IMG_JSON},"samples":{HUGE}}}'.encode()),
        400,
    ),
    ("predict-seed-5000-digits", Call("/v1/predict", content=f'{{"inputs":{IMG_JSON},"seed":-{HUGE}}}'.encode()), 400),
    (
        "probe-labels-5000-digits",
        Call("/v1/attack-probe", content=f'{{"inputs":{IMG_JSON},"labels":[{HUGE}]}}'.encode(), headers=PROBE),
        400,
    ),
    (
        "probe-steps-5000-digits",
        Call(
            "/v1/attack-probe",
            content=f'{{"inputs":{IMG_JSON},"attacks":[{{"name":"pgd","steps":{HUGE}}}]}}'.encode(),
            headers=PROBE,
        ),
        400,
    ),
    ("probe-form-labels-5000-digits", Call("/v1/attack-probe", files=FILE, data={"labels": HUGE}, headers=PROBE), 400),
    (
        "probe-form-steps-5000-digits",
        Call("/v1/attack-probe", files=FILE, data={"attacks": f'[{{"name":"pgd","steps":{HUGE}}}]'}, headers=PROBE),
        400,
    ),
    ("predict-form-samples-5000-digits", Call("/v1/predict", files=FILE, data={"samples": HUGE}), 400),
    (
        "v2-data-5000-digits",
        Call(
            V2,
            content=f'{{"inputs":[{{"name":"image","shape":[1,1,{SIZE},{SIZE}],"datatype":"FP32","data":[{HUGE}]}}]}}'.encode(),
        ),
        400,
    ),
    ("predict-samples-1e999", Call("/v1/predict", content=f'{{"inputs":{IMG_JSON},"samples":1e999}}'.encode()), 422),
    ("predict-samples-NaN", Call("/v1/predict", content=f'{{"inputs":{IMG_JSON},"samples":NaN}}'.encode()), 422),
    ("predict-pixel-1e999", Call("/v1/predict", content=b'{"inputs":[[[1e999]]]}'), 400),
    ("predict-pixel-NaN", Call("/v1/predict", content=b'{"inputs":[[[NaN]]]}'), 400),
    ("predict-samples-2**64", Call("/v1/predict", json={"inputs": [IMG], "samples": 2**64}), 400),
    (
        "probe-eps-over-cap",
        Call("/v1/attack-probe", json={"inputs": [IMG], "attacks": [{"name": "pgd", "eps": 1e308}]}, headers=PROBE),
        422,
    ),
    # -- pathological JSON ------------------------------------------------------------------------------
    (
        "predict-deep-nesting",
        Call("/v1/predict", content=b'{"inputs":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}"),
        400,
    ),
    ("v2-deep-nesting", Call(V2, content=b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400),
    ("predict-invalid-utf8", Call("/v1/predict", content=b'{"inputs": ["\xff\xfe"]}'), 400),
    ("predict-body-not-an-object", Call("/v1/predict", content=b"[1, 2, 3]"), 422),
    ("predict-empty-body", Call("/v1/predict", content=b""), 400),
    ("predict-ragged-pixels", Call("/v1/predict", json={"inputs": [[[0.5] * SIZE] * (SIZE - 1) + [[0.5]]]}), 400),
    ("predict-strings-as-pixels", Call("/v1/predict", json={"inputs": [[["0.5"] * SIZE] * SIZE]}), 400),
    ("predict-too-many-inputs", Call("/v1/predict", json={"inputs": [IMG] * 65}), 400),
    ("predict-unknown-field", Call("/v1/predict", json={"inputs": [IMG], "__proto__": {}}), 422),
    # -- images that are not what they claim --------------------------------------------------------------
    ("predict-base64-garbage", Call("/v1/predict", json={"inputs": ["!!!not base64!!!"]}), 400),
    (
        "predict-bomb-header",
        Call("/v1/predict", files=[("file", ("b.png", png_claiming(100_000, 100_000), "image/png"))]),
        400,
    ),
    (
        "predict-truncated-png",
        Call("/v1/predict", files=[("file", ("t.png", GOOD_PNG[: len(GOOD_PNG) // 2], "image/png"))]),
        400,
    ),
    ("predict-gif", Call("/v1/predict", files=[("file", ("g.gif", b"GIF89a" + b"\x00" * 20, "image/gif"))]), 400),
    ("predict-empty-file", Call("/v1/predict", files=[("file", ("e.png", b"", "image/png"))]), 400),
    (
        "predict-wrong-size-without-resize",
        Call("/v1/predict", files=[("file", ("w.png", png(np.zeros((56, 56), np.uint8)), "image/png"))]),
        400,
    ),
    (
        "predict-16bit-4096px-x8-over-pixel-budget",
        Call(
            "/v1/predict",
            files=[("file", (f"{i}.png", big_png16(4096), "image/png")) for i in range(8)],
            data={"resize": "true"},
        ),
        400,
    ),
    # -- forms with surprises -----------------------------------------------------------------------------
    ("form-too-many-files", Call("/v1/predict", files=FILE * 65), 400),
    ("form-unknown-field", Call("/v1/predict", files=FILE, data={"evil": "1"}), 400),
    ("form-field-twice", Call("/v1/predict", files=FILE, content=None, data={"samples": ["4", "5"]}), 400),
    ("form-file-as-text", Call("/v1/predict", data={"file": "not a file"}), 400),
    ("form-no-boundary", Call("/v1/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 400),
    ("wrong-content-type", Call("/v1/predict", content=b"<xml/>", headers={"content-type": "application/xml"}), 415),
    # -- v2 tensors that lie --------------------------------------------------------------------------------
    (
        "v2-gzip-bomb",
        Call(V2, content=gzip.compress(b"[" * (MAX_BODY + 10)), headers={"content-encoding": "gzip"}),
        413,
    ),
    ("v2-unknown-encoding", Call(V2, content=b"{}", headers={"content-encoding": "br"}), 400),
    (
        "v2-header-length-not-a-number",
        Call(V2, content=b"{}", headers={"inference-header-content-length": HUGE[:100]}),
        400,
    ),
    ("v2-header-length-past-the-body", Call(V2, content=b"{}", headers={"inference-header-content-length": "99"}), 400),
    (
        "v2-binary-size-lies",
        Call(
            V2,
            content=b'{"inputs":[{"name":"image","shape":[1,1,14,14],"datatype":"FP32","parameters":{"binary_data_size":4}}]}',
        ),
        400,
    ),
    (
        "v2-huge-shape",
        Call(
            V2, json={"inputs": [{"name": "image", "shape": [2**62, 2**62, 1, 1], "datatype": "FP32", "data": [0.5]}]}
        ),
        400,
    ),
    (
        "v2-negative-shape",
        Call(V2, json={"inputs": [{"name": "image", "shape": [-1, 1, SIZE, SIZE], "datatype": "FP32", "data": []}]}),
        400,
    ),
    (
        "v2-zero-batch",
        Call(V2, json={"inputs": [{"name": "image", "shape": [0, 1, SIZE, SIZE], "datatype": "FP32", "data": []}]}),
        400,
    ),
    # -- the probe ----------------------------------------------------------------------------------------
    ("probe-without-key", Call("/v1/attack-probe", json={"inputs": [IMG]}), 401),
    (
        "probe-unknown-attack",
        Call("/v1/attack-probe", json={"inputs": [IMG], "attacks": [{"name": "cw"}]}, headers=PROBE),
        422,
    ),
    (
        "probe-over-gradient-budget",
        Call("/v1/attack-probe", json={"inputs": [IMG], "attacks": [{"name": "pgd", "steps": 10**6}]}, headers=PROBE),
        422,
    ),
    (
        "probe-over-query-budget",
        Call(
            "/v1/attack-probe", json={"inputs": [IMG], "attacks": [{"name": "square", "queries": 10**7}]}, headers=PROBE
        ),
        422,
    ),
]


@pytest.fixture(scope="module")
def server(hand_checkpoint: Path) -> Iterator[ServerProcess]:
    env = {"MFDV_API_KEY": KEY, "MFDV_MAX_BODY_BYTES": str(MAX_BODY)}
    with ServerProcess(hand_checkpoint, env=env, args=["--device", "cpu", "--no-access-log"]) as s:
        yield s


def exchange(server: ServerProcess, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` on a fresh connection; the status, headers and body of the answer."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(data)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        top, _, body = raw.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:]))
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def send(server: ServerProcess, request: Raw | Call) -> tuple[int, dict[str, str], bytes]:
    if isinstance(request, Raw):
        return exchange(server, request.data)
    headers = dict(request.headers)
    if request.content is not None and "content-type" not in headers:
        headers["content-type"] = "application/json"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post(
            request.path,
            json=request.json,
            content=request.content,
            files=request.files,
            data=request.data,
            headers=headers,
        )
    return r.status_code, dict(r.headers), r.content


@pytest.mark.parametrize(("request_", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_hostile_request_gets_a_json_4xx(server: ServerProcess, request_: Raw | Call, status: int) -> None:
    got, headers, body = send(server, request_)
    assert got == status, body[:300]
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:300])
    assert set(json.loads(body)) == {"error"}
    if got == 401:
        assert "www-authenticate" in headers


def test_the_server_stays_healthy_and_logged_no_traceback(server: ServerProcess) -> None:
    """Run after the list (same module): no request above got past the error mapping."""
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
    r = httpx.post(f"{server.url}/v1/predict", json={"inputs": [IMG], "samples": 4, "seed": 0}, timeout=60)
    assert r.status_code == 200, r.text
    log = server.log_tail(200_000)
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert not [line for line in metrics.splitlines() if line.startswith("mfdv_requests_total") and 'status="5' in line]

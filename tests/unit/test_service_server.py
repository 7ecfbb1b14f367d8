"""The uvicorn protocol classes of ``service.edge.server``: a request the parser rejects gets a JSON 400, the
connection guards, and admission's refusals answered from the head (httptools) with the connection kept."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.edge import server as service_server
from service.edge.admission import Admission, admission_controlled
from service.edge.middleware import BodyLimits, EdgeMiddleware
from service.metrics import Metrics
from tests.support.raw_http import read_response
from tests.support.server import free_port, uvicorn_thread


async def app(scope: dict, receive: object, send: object) -> None:  # never reached by a malformed request
    raise AssertionError("the app must not see a request the parser rejected")


PROTOCOLS = [service_server.JsonErrorsH11Protocol]
if service_server.HttpToolsProtocol is not None:
    PROTOCOLS.append(service_server.JsonErrorsHttpToolsProtocol)


@pytest.fixture(params=PROTOCOLS, ids=lambda p: p.__name__)
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    with guarded_server(request.param, app, service_server.ConnectionLimits()) as port:
        yield port


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"GARBAGE\r\n\r\n",
    ],
)
def test_a_request_the_parser_rejects_gets_a_json_400(port: int, head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        raw = b""
        while chunk := sock.recv(65536):  # the server closes the connection after the 400
            raw += chunk
    top, _, body = raw.partition(b"\r\n\r\n")
    assert top.startswith(b"HTTP/1.1 400"), raw[:200]
    assert b"content-type: application/json" in top.lower()
    assert json.loads(body) == {"error": service_server.PARSE_ERROR}


def test_the_protocol_matches_the_installed_parser() -> None:
    expected = PROTOCOLS[-1]
    assert service_server.protocol_class() is expected
    assert service_server.http_protocol().func is expected  # type: ignore[attr-defined]


async def answer_unread(scope: dict, receive: Any, send: Any) -> None:
    """Answers at once with ``Connection: close``, never reading the body (as a refusal does)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 503, "headers": [(b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b'{"error": "busy"}'})


@contextlib.contextmanager
def guarded_server(
    protocol: type, app: Any, limits: service_server.ConnectionLimits, lifespan: str = "off"
) -> Iterator[int]:
    port = free_port()
    http = functools.partial(protocol, limits=limits)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=http, lifespan=lifespan, log_level="error")
    with uvicorn_thread(config, start_timeout=15):
        yield port


def read_all(sock: socket.socket) -> bytes:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    return raw


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_half_a_request_line_is_answered_408_and_closed_at_the_header_timeout(protocol: type) -> None:
    limits = service_server.ConnectionLimits(header_timeout_s=0.5)
    with (
        guarded_server(protocol, answer_unread, limits) as port,
        socket.create_connection(("127.0.0.1", port), timeout=20) as slow,
    ):
        slow.sendall(b"POST /v1/pre")
        raw = read_all(slow)  # returns when the server closes (the socket's 20 s timeout raises otherwise)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as other:  # others are still served
            other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_all(other).startswith(b"HTTP/1.1 503")
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert "MFDV_HEADER_TIMEOUT_SECONDS" in json.loads(raw.partition(b"\r\n\r\n")[2])["error"]


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_a_silent_connection_is_closed_at_the_header_timeout(protocol: type) -> None:
    limits = service_server.ConnectionLimits(header_timeout_s=0.5)
    with (
        guarded_server(protocol, answer_unread, limits) as port,
        socket.create_connection(("127.0.0.1", port), timeout=20) as silent,
    ):
        assert read_all(silent) == b""  # closed without an answer: nothing was asked


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_a_connection_over_the_cap_gets_a_json_503_and_the_others_are_served(protocol: type) -> None:
    limits = service_server.ConnectionLimits(max_connections=2)
    with guarded_server(protocol, answer_unread, limits) as port:
        held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as third:
                third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                raw = read_all(third)
            assert raw.startswith(b"HTTP/1.1 503"), raw[:200]
            assert "MFDV_MAX_CONNECTIONS" in json.loads(raw.partition(b"\r\n\r\n")[2])["error"]
            held[0].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # within the cap: reaches the app
            assert read_all(held[0]).startswith(b"HTTP/1.1 503") is True
        finally:
            for s in held:
                s.close()


async def answer_ok(scope: dict, receive: Any, send: Any) -> None:
    """Answers 200 and keeps the connection open."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_half_a_second_request_on_a_kept_alive_connection_is_answered_408(protocol: type) -> None:
    limits = service_server.ConnectionLimits(header_timeout_s=0.5)
    with (
        guarded_server(protocol, answer_ok, limits) as port,
        socket.create_connection(("127.0.0.1", port), timeout=20) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"ok"):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        sock.sendall(b"GET /sec")  # the next request's head never completes
        raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]


# Admission's refusals from the head: the real EdgeMiddleware and Admission in front of two routes.


@admission_controlled
async def predict(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"read {len(await request.body())}")


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


class Edge:
    """``EdgeMiddleware`` (metrics, admission, body limits) before ``/predict`` (admission-controlled) and ``/ok``;
    ``http_calls`` counts the requests that reached it as ASGI calls (a refusal from the head does not)."""

    def __init__(self, max_inflight: int) -> None:
        routes = [Route("/predict", predict, methods=["POST"]), Route("/ok", ok, methods=["GET"])]
        self.metrics = Metrics()
        self.admission = Admission(max_inflight, 0.0)  # max_inflight=0: refuse every prediction
        self.edge = EdgeMiddleware(
            Starlette(routes=routes),
            metrics=self.metrics,
            routes=routes,
            admission=self.admission,
            body=BodyLimits(max_bytes=1 << 20, timeout_s=30),
        )
        self.http_calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.http_calls += scope["type"] == "http"
        await self.edge(scope, receive, send)

    def counted(self, route: str, method: str, status: int) -> float:
        labels = {"route": route, "method": method, "status": str(status)}
        return self.metrics.registry.get_sample_value("mfdv_requests_total", labels) or 0.0


PREDICT = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8\r\n"
OK = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD_REFUSING = [p for p in PROTOCOLS if p is not service_server.JsonErrorsH11Protocol]
"""The protocols that answer admission's refusals from the head (h11: the middleware refuses them)."""


@contextlib.contextmanager
def edge_server(protocol: type, edge: Edge, header_timeout_s: float = 10.0) -> Iterator[socket.socket]:
    """A connection to a server of ``edge`` (lifespan on: the protocol finds the middleware there)."""
    limits = service_server.ConnectionLimits(header_timeout_s=header_timeout_s)
    with (
        guarded_server(protocol, edge, limits, lifespan="on") as port,
        socket.create_connection(("127.0.0.1", port), timeout=20) as sock,
    ):
        yield sock


def assert_refused(answer: tuple[int, dict[str, str], bytes], close: bool = False) -> None:
    status, headers, body = answer
    assert status == 503, (status, body)
    assert headers["retry-after"] == "1" and headers["content-type"] == "application/json"
    assert set(json.loads(body)) == {"error"} and "MFDV_MAX_INFLIGHT" in json.loads(body)["error"]
    assert (headers.get("connection") == "close") is close, headers


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_a_refusal_keeps_the_connection_for_the_next_request_and_is_counted(protocol: type) -> None:
    """On one kept-alive connection: a refused prediction (JSON 503, Retry-After), then a GET and an admitted
    prediction are answered. With httptools the refusal never became an ASGI call; either way it is counted."""
    edge = Edge(max_inflight=0)
    with edge_server(protocol, edge) as sock:
        sock.sendall(PREDICT + b"\r\n" + b'{"x": 1}')
        assert_refused(read_response(sock))
        sock.sendall(OK)
        assert read_response(sock)[::2] == (200, b"ok")
        edge.admission.max_inflight = 4
        sock.sendall(PREDICT + b"\r\n" + b'{"x": 2}')
        assert read_response(sock)[::2] == (200, b"read 8")
        refused_by_protocol = protocol in HEAD_REFUSING
        assert edge.http_calls == (2 if refused_by_protocol else 3)
    assert edge.counted("/predict", "POST", 503) == 1
    assert edge.counted("/predict", "POST", 200) == 1 and edge.counted("/ok", "GET", 200) == 1
    assert edge.admission.refused == 1 and edge.admission.inflight == 0


@pytest.mark.parametrize("protocol", HEAD_REFUSING, ids=lambda p: p.__name__)
def test_a_refused_body_arriving_later_is_dropped_and_the_connection_stays_usable(protocol: type) -> None:
    """The 503 goes out on the head; the body comes after it, in pieces: dropped, not read as a request.
    The idle connection then outlives the header timeout (no 408) and serves the next request."""
    edge = Edge(max_inflight=0)
    with edge_server(protocol, edge, header_timeout_s=0.5) as sock:
        sock.sendall(PREDICT + b"\r\n")
        assert_refused(read_response(sock))
        sock.sendall(b'{"x"')
        threading.Event().wait(0.2)
        sock.sendall(b": 1}")
        threading.Event().wait(1.0)  # twice the header timeout, under uvicorn's keep-alive timeout (5 s)
        sock.sendall(OK)
        assert read_response(sock)[::2] == (200, b"ok")
    assert edge.http_calls == 1 and edge.counted("/predict", "POST", 503) == 1


def split_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in ``raw``, one after the other (each with a Content-Length)."""
    answers = []
    while raw:
        top, _, rest = raw.partition(b"\r\n\r\n")
        lines = top.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        size = int(headers["content-length"])
        answers.append((int(lines[0].split()[1]), headers, rest[:size]))
        raw = rest[size:]
    return answers


@pytest.mark.parametrize("protocol", HEAD_REFUSING, ids=lambda p: p.__name__)
def test_pipelined_requests_after_a_refusal_are_answered_in_order(protocol: type) -> None:
    """A refusal, a GET, a prediction and a GET in one write: four answers in order, the body of each
    refused prediction dropped, not read as a request."""
    edge = Edge(max_inflight=0)
    last = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    with edge_server(protocol, edge) as sock:
        sock.sendall(PREDICT + b"\r\n" + b'{"x": 1}' + OK + PREDICT + b"\r\n" + b'{"x": 2}' + last)
        answers = split_responses(read_all(sock))
    assert [a[0] for a in answers] == [503, 200, 503, 200]
    for a in answers[::2]:
        assert_refused(a)
    # The first refusal is the protocol's; the second prediction waited behind the GET: the middleware refused it.
    assert edge.http_calls == 3
    assert edge.counted("/predict", "POST", 503) == 2 and edge.counted("/ok", "GET", 200) == 2


@pytest.mark.parametrize("protocol", HEAD_REFUSING, ids=lambda p: p.__name__)
@pytest.mark.parametrize(
    "head",
    [
        PREDICT.replace(b"HTTP/1.1", b"HTTP/1.0"),
        PREDICT + b"Connection: close\r\n",
        PREDICT + b"Expect: 100-continue\r\n",  # the client may hold its body back: it is not read
    ],
    ids=["http/1.0", "connection-close", "expect-100-continue"],
)
def test_a_refusal_closes_the_connection_when_it_cannot_be_kept(protocol: type, head: bytes) -> None:
    edge = Edge(max_inflight=0)
    with edge_server(protocol, edge) as sock:
        sock.sendall(head + b"\r\n")
        assert_refused(read_response(sock), close=True)
        assert sock.recv(65536) == b""  # the server closed (lingering: no reset, though the body never came)
    assert edge.http_calls == 0 and edge.counted("/predict", "POST", 503) == 1

"""The uvicorn protocol classes of ``service.edge.server``: a request the parser rejects gets a JSON 400."""

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

from service.edge import server as service_server
from tests.support.server import free_port


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
def guarded_server(protocol: type, app: Any, limits: service_server.ConnectionLimits) -> Iterator[int]:
    port = free_port()
    http = functools.partial(protocol, limits=limits)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=http, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(300):
            if server.started:
                break
            threading.Event().wait(0.05)
        assert server.started, "uvicorn did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


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

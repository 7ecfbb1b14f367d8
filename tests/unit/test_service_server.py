"""The uvicorn protocol classes of ``service.server``: a request the parser rejects gets a JSON 400."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from service import server as service_server
from tests.support.server import free_port


async def app(scope: dict, receive: object, send: object) -> None:  # never reached by a malformed request
    raise AssertionError("the app must not see a request the parser rejected")


PROTOCOLS = [service_server.JsonErrorsH11Protocol]
if service_server.HttpToolsProtocol is not None:
    PROTOCOLS.append(service_server.JsonErrorsHttpToolsProtocol)


@pytest.fixture(params=PROTOCOLS, ids=lambda p: p.__name__)
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=request.param, lifespan="off", log_level="error")
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
    assert service_server.http_protocol() is expected

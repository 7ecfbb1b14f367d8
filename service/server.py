"""What ``python -m service`` gives uvicorn besides the app: an HTTP protocol whose parse errors are JSON.

uvicorn answers a request it cannot parse (a non-integer ``Content-Length``, a bad request
line, a header with a control character) itself, before the app sees it, with a plain-text
400. The protocol classes here answer the same 400 in the service's one error shape,
``{"error": "..."}``, and close the connection as uvicorn does. ``http_protocol()`` picks the
one for the parser uvicorn would use (httptools when installed, else h11); both are
module-level classes, so a config naming them can be sent to worker processes.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn uses h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

PARSE_ERROR = (
    "invalid HTTP request: the request line, a header or the Content-Length could not be parsed; "
    "send HTTP/1.1 with an integer Content-Length (or chunked transfer encoding)"
)


def _json_400() -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = error_body(PARSE_ERROR)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


class JsonErrorsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; an unparseable request gets a JSON 400."""

    def send_400_response(self, msg: str) -> None:
        headers, body = _json_400()
        for event in (h11.Response(status_code=400, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


if HttpToolsProtocol is not None:

    class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol; an unparseable request gets a JSON 400."""

        def send_400_response(self, msg: str) -> None:
            headers, body = _json_400()
            lines = [b"HTTP/1.1 400 Bad Request\r\n"]
            lines += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            lines += [name + b": " + value + b"\r\n" for name, value in headers]
            self.transport.write(b"".join([*lines, b"\r\n", body]))
            self.transport.close()


def http_protocol() -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.run(http=...)``: httptools when installed (uvicorn's own choice), else h11."""
    if HttpToolsProtocol is not None:
        return JsonErrorsHttpToolsProtocol
    return JsonErrorsH11Protocol

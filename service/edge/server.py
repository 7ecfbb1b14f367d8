"""What ``python -m service`` gives uvicorn besides the app: an HTTP protocol that guards the connection.

uvicorn's protocols parse HTTP and run the app; the subclasses here add what a server facing
hostile or careless clients needs before any request reaches the app:

- **JSON parse errors.** A request uvicorn cannot parse (a non-integer ``Content-Length``, a bad
  request line, a header with a control character) gets the service's one error shape,
  ``{"error": "..."}``, as a 400, not uvicorn's plain text.
- **A header timeout** (``MFDV_HEADER_TIMEOUT_SECONDS``, nginx's ``client_header_timeout``,
  Kestrel's ``RequestHeadersTimeout``): a connection must deliver a complete request line and
  headers within it, from when it opens or the first bytes of a later request arrive (an idle
  keep-alive connection is closed by uvicorn's keep-alive timeout); past it the server
  answers a JSON 408 (when part of a request came) and closes. Half a request line held open
  costs a socket for at most that long.
- **A cap on open connections** (``MFDV_MAX_CONNECTIONS``): a connection over it is answered a
  JSON 503 with ``Retry-After`` on its first request and closed, before the app sees it.
- **Closing without resets** ("lingering close", as nginx's ``lingering_close``): when the server
  closes a connection it first sends what it has and a FIN, then reads and drops what the client
  still sends, until the client closes or ``LINGER_SECONDS`` pass. A plain close with unread
  bytes in the socket (a body the server answered without reading, a request that crossed the
  close) makes the kernel send a reset, which destroys the answer on its way to the client.
- **Shutdown answers what comes** (``shutdown``): a connection with no request in progress when
  uvicorn shuts down is not cut: a request arriving on it within ``SHUTDOWN_IDLE_SECONDS`` gets a
  JSON 503 with ``Retry-After``, then it closes (lingering).
- **Admission refusals from the head** (httptools): when a request's headers are complete and the
  app's admission refuses it (``EdgeMiddleware.head_refusal``, which the app leaves in the lifespan
  state under ``HEAD_REFUSER``), the protocol writes the JSON 503 with ``Retry-After`` itself, in one
  write, before any ASGI task exists, and counts it in the metrics (``EdgeMiddleware.record``). Its
  body, if any, is read and dropped and the connection stays open for the next request
  (``Connection: close`` while draining, for HTTP/1.0 or ``Expect: 100-continue``). Under 2,000
  clients nearly every answer is such a refusal: a task, the middleware stack and two sends each made
  the event loop the bottleneck. With h11 the middleware refuses them, as without this protocol.

``http_protocol(settings)`` gives uvicorn the class for the parser it would pick (httptools when
installed, else h11) with these limits bound; a ``functools.partial`` of a module-level class,
so a config naming it can be sent to worker processes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from ..errors import error_body, error_response
from .admission import HEAD_REFUSER, HeadRefusal

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn uses h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)

PARSE_ERROR = (
    "invalid HTTP request: the request line, a header or the Content-Length could not be parsed; "
    "send HTTP/1.1 with an integer Content-Length (or chunked transfer encoding)"
)
LINGER_SECONDS = 2.0
"""Longest a closing connection waits for the client's FIN (reading and dropping its bytes)."""
SHUTDOWN_IDLE_SECONDS = 1.0
"""How long an idle connection stays open after shutdown begins, to answer a request on its way."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection-level guards of one process (from ``Settings``).

    Attributes:
        header_timeout_s: seconds a connection has to deliver a request's line and headers.
        max_connections: most open connections; one more is answered 503 and closed.
    """

    header_timeout_s: float = 10.0
    max_connections: int = 2048


def _json_response(status: int, reason: str, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A complete HTTP/1.1 response with the service's error body and ``Connection: close``."""
    body = error_body(message)
    head = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    head += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join([*head, b"\r\n", body])


REFUSED = b"HTTP/1.1 503 Service Unavailable\r\n"


@functools.lru_cache(maxsize=512)
def _refusal_rest(message: str, retry_after: int, close: bool) -> bytes:
    """A refusal's headers after uvicorn's own (``date``, ``server``) and its JSON body: rendered once per
    message, since under overload the same few repeat."""
    body = error_body(message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
        *([(b"connection", b"close")] if close else []),
    ]
    return b"".join([*(name + b": " + value + b"\r\n" for name, value in headers), b"\r\n", body])


def _refusal_app(status: int, message: str, retry_after: int = 1) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app that answers every request with ``status`` and ``message`` (JSON) and closes."""
    response = error_response(status, message, {"Retry-After": str(retry_after), "Connection": "close"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await response(scope, receive, send)

    return app


class HeadRefuser(Protocol):
    """What the protocol asks about a request whose headers are complete (``EdgeMiddleware``)."""

    def head_refusal(self, scope: Scope) -> HeadRefusal | None: ...

    def record(self, scope: Scope, status: int, seconds: float) -> None: ...


OVER_CAP = (
    "the server has {n} open connections, its limit (MFDV_MAX_CONNECTIONS); "
    "retry after a second, reuse a connection, or use another replica"
)
SHUTTING_DOWN = "the service is shutting down; retry on another replica"


class _LingeringTransport:
    """A transport whose ``close()`` is a lingering close: flush, FIN, drop what comes, then close."""

    def __init__(self, transport: asyncio.Transport, protocol: _GuardMixin) -> None:
        self._t = transport
        self.write = transport.write  # every answer's path: no __getattr__
        self._protocol = protocol
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    def is_closing(self) -> bool:
        return self._closing or self._t.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        t = self._t
        if t.is_closing():
            return
        try:
            if not t.can_write_eof():
                t.close()
                return
            t.write_eof()  # the answer, then FIN: the client reads it and closes its side
            t.resume_reading()  # read (and drop) what the client still sends, so the kernel never resets
        except (OSError, RuntimeError):
            t.close()
            return
        self._protocol._lingering = True
        self._timer = self._protocol.loop.call_later(LINGER_SECONDS, t.close)

    def abort(self) -> None:
        self._closing = True
        self.cancel_timer()
        self._t.abort()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _GuardMixin:
    """Header timeout, connection cap, lingering close and shutdown answers for a uvicorn protocol."""

    # Set by uvicorn's protocol classes.
    loop: asyncio.AbstractEventLoop
    transport: Any
    cycle: Any
    connections: set[Any]
    app: Any
    app_state: dict[str, Any]
    timeout_keep_alive_task: asyncio.TimerHandle | None

    def _init_guards(self, limits: ConnectionLimits | None) -> None:
        self.limits = limits or ConnectionLimits()
        self._lingering = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial_request = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # bytes after a complete request are a new request's head (h11: always assumed)
        self._head_refuser: HeadRefuser | None = None

    def _idle(self) -> bool:
        """No request being handled: the connection is between requests (or before its first)."""
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self, partial: bool = False) -> None:
        self._cancel_header_timer()
        self._partial_request = partial
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._idle() or self.transport.is_closing():
            return
        if self._partial_request:
            message = (
                f"the request line and headers did not arrive within {self.limits.header_timeout_s:g} s "
                "(MFDV_HEADER_TIMEOUT_SECONDS); send the request at once"
            )
            self.transport.write(_json_response(408, "Request Timeout", message))
        self.transport.close()

    def _guard_connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = _LingeringTransport(transport, self)
        self._arm_header_timer()
        if len(self.connections) > self.limits.max_connections:
            self.app = _refusal_app(503, OVER_CAP.format(n=len(self.connections) - 1))
        else:
            self._head_refuser = self.app_state.get(HEAD_REFUSER)

    def _guard_data_received(self, data: bytes) -> bool:
        """Whether to parse ``data`` (False: the connection is closing; its bytes are dropped)."""
        if self._lingering or self.transport.is_closing():
            return False
        if self._idle():
            self._partial_request = self._in_head  # (not: the rest of a body answered before it arrived)
        return True

    def _guard_connection_lost(self) -> None:
        self._cancel_header_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if isinstance(self.transport, _LingeringTransport):
            self.transport.cancel_timer()

    def _guard_shutdown(self) -> bool:
        """Shutdown of an idle connection: answer a request on its way, then close. False: not idle."""
        if not self._idle():
            return False
        self.app = _refusal_app(503, SHUTTING_DOWN)
        self._head_refuser = None
        if not self.transport.is_closing():
            self._idle_timer = self.loop.call_later(SHUTDOWN_IDLE_SECONDS, self._close_if_idle)
        return True

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self._idle() and not self.transport.is_closing():
            self.transport.close()


class _GuardedProtocol(_GuardMixin):
    """The overrides both parsers' protocols share (placed before uvicorn's class in the bases)."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_guards(limits)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._guard_connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard_connection_lost()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._guard_data_received(data):
            super().data_received(data)  # type: ignore[misc]
            # Part of a request's head is in and the rest is not: its clock starts (an idle keep-alive
            # connection is uvicorn's keep-alive timeout's; a whole head costs no timer at all). The rest of
            # the body of a request answered before it arrived (uvicorn drops it) gets as long, then a close.
            idle = self._idle() and self.timeout_keep_alive_task is None
            if idle and self._header_timer is None and not self.transport.is_closing():
                self._arm_header_timer(partial=self._in_head)

    def shutdown(self) -> None:
        if not self._guard_shutdown():
            super().shutdown()  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_json_response(400, "Bad Request", PARSE_ERROR))
        self.transport.close()


class JsonErrorsH11Protocol(_GuardedProtocol, H11Protocol):
    """uvicorn's h11 protocol with the guards of this module; an unparseable request gets a JSON 400."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._idle():
            self._cancel_header_timer()  # a request's headers are in: the body has its own limits


if HttpToolsProtocol is not None:

    class JsonErrorsHttpToolsProtocol(_GuardedProtocol, HttpToolsProtocol):
        """uvicorn's httptools protocol with the guards of this module; an unparseable request gets a JSON 400."""

        def on_message_begin(self) -> None:
            self._in_head = True
            self._unset_keepalive_if_required()  # armed in this same read by a refusal's answer: the head's timer now
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_header_timer()  # the body has its own limits
            self._head_complete = True  # for _start_asgi_task: a request started now, not a pipelined one
            try:
                super().on_headers_complete()
            finally:
                self._head_complete = False

        def on_message_complete(self) -> None:
            super().on_message_complete()
            cycle = self.cycle
            answered = cycle is not None and cycle.response_complete
            if answered and self.timeout_keep_alive_task is None and not self.transport.is_closing():
                # Answered before the rest of its body came (dropped): the connection waits for its next request.
                self._cancel_header_timer()
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

        _head_complete = False

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            """uvicorn starts a request's ASGI task: unless admission refuses it now, answered here
            (``_answer_head_refusal``). Only as its head completes on an idle connection: a pipelined request,
            started as the one before it finishes (still holding its place), goes to the middleware's admission,
            as does one whose connection has answers waiting to be written (the task waits for them to drain)."""
            refuser = self._head_refuser
            if refuser is not None and self._head_complete and app is self.app and not self.flow.write_paused:
                started = time.perf_counter()
                refusal = refuser.head_refusal(cycle.scope)
                if refusal is not None:
                    self._answer_head_refusal(cycle, refusal, refuser, started)
                    return
            super()._start_asgi_task(cycle, app)

        def _answer_head_refusal(self, cycle: Any, refusal: HeadRefusal, refuser: HeadRefuser, started: float) -> None:
            """The refusal's 503 in one write, and what uvicorn does once a response is complete: the body that
            follows is dropped (``on_body``: the response is complete), and the connection is kept alive for
            the next request (its keep-alive timer; a pipelined request starts) or closed (lingering)."""
            keep_alive = cycle.keep_alive and not refusal.close and not cycle.waiting_for_100_continue
            head = [REFUSED]
            for name, value in self.server_state.default_headers:  # uvicorn's date and server, as on its answers
                head += [name, b": ", value, b"\r\n"]
            head.append(_refusal_rest(refusal.message, refusal.retry_after, not keep_alive))
            self.transport.write(b"".join(head))
            cycle.response_started = cycle.response_complete = True
            cycle.waiting_for_100_continue = False
            cycle.keep_alive = keep_alive
            scope = cycle.scope
            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(scope),
                    scope["method"],
                    get_path_with_query_string(scope),
                    scope["http_version"],
                    503,
                )
            refuser.record(scope, 503, time.perf_counter() - started)
            if not keep_alive:
                self.transport.close()
            self.on_response_complete()


def protocol_class() -> type[asyncio.Protocol]:
    """The protocol class for the parser uvicorn would use: httptools when installed, else h11."""
    if HttpToolsProtocol is not None:
        return JsonErrorsHttpToolsProtocol
    return JsonErrorsH11Protocol


def http_protocol(limits: ConnectionLimits | None = None) -> Callable[..., asyncio.Protocol]:
    """What ``uvicorn.run(http=...)`` takes: ``protocol_class()`` with ``limits`` bound."""
    return functools.partial(protocol_class(), limits=limits or ConnectionLimits())

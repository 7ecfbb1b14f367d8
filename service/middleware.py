"""ASGI middleware: the request body read whole within its size and pace limits, and per-route Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import ROUTE_LABEL
from .errors import CLIENT_CLOSED, error_response
from .metrics import Metrics

logger = logging.getLogger(__name__)


class RequestBodyMiddleware:
    """Read a request's whole body before the app runs, within bounds on its size and its pace.

    Nothing past this middleware (admission's place and throughput estimate, a probe-pool place,
    the routes) is held by a request whose body is still on its way: a client that stalls or
    trickles its body holds only its connection, for a bounded time.

    - a ``Content-Length`` that is not an integer is a 400, and one over ``max_bytes`` a 413,
      before any byte of the body is read; a chunked body is cut at ``max_bytes`` (413);
    - the body must arrive at ``min_rate`` bytes per second on average once ``grace_s`` seconds
      have passed (Kestrel's ``MinRequestBodyDataRate``, nginx's ``client_body_timeout``), and
      whole within ``timeout_s``: otherwise 408;
    - a client that leaves mid-body is recorded as 499 (nginx's convention; nobody receives it) and nothing runs.

    The app then receives the body as one message (and the real ``receive`` after it, for
    disconnect notices). Refusals carry ``Connection: close``: the rest of the body is not read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, min_rate: float = 0.0, grace_s: float = 0.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.grace_s = grace_s

    def _too_large(self, got: str) -> str:
        return (
            f"request body is {got}, over the limit of {self.max_bytes} bytes; "
            "send fewer or smaller inputs per request (or raise MFDV_MAX_BODY_BYTES)"
        )

    def _deadline(self, start: float, received: int) -> tuple[float, str]:
        """When the wait for more of the body ends, and the message for a 408 then."""
        total = start + self.timeout_s
        if self.min_rate > 0:
            slow = start + max(self.grace_s, received / self.min_rate)
            if slow < total:
                return slow, (
                    f"the request body arrived at under {self.min_rate:g} bytes/s ({received} bytes after "
                    f"{slow - start:.1f} s; MFDV_BODY_MIN_RATE after MFDV_BODY_GRACE_SECONDS); send it at once"
                )
        return total, (
            f"the request body did not arrive within {self.timeout_s:g} s (MFDV_BODY_TIMEOUT_SECONDS); send it at once"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _refuse(400, "Content-Length is not an integer", scope, receive, send)
                    return
                if declared > self.max_bytes:
                    await _refuse(413, self._too_large(f"{declared} bytes"), scope, receive, send)
                    return
        loop = asyncio.get_running_loop()
        start = loop.time()
        chunks: list[bytes] = []
        size = 0
        while True:
            deadline, late = self._deadline(start, size)
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                await _refuse(408, late, scope, receive, send)
                return
            if message["type"] != "http.request":  # the client went away mid-body: nobody receives the answer
                logger.debug("%s %s: the client left before its body arrived", scope["method"], scope["path"])
                # recorded under nginx's 499, as the routes record a client gone mid-read (service.errors)
                await error_response(
                    CLIENT_CLOSED, "the client closed the connection before its request body was received"
                )(scope, receive, send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(413, self._too_large(f"more than {self.max_bytes} bytes"), scope, receive, send)
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnect notices

        scope[BODY_READ] = True
        await self.app(scope, replay, send)


BODY_READ = "mfdv.body_read"
"""Scope key set once the whole body has arrived (``RequestBodyMiddleware``)."""


async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(status, message, {"Connection": "close"})(scope, receive, send)


class MetricsMiddleware:
    """Count requests and time them by route template (``/v2/models/{name}/infer``), method and status.

    A request the router handled is labelled with its route. One answered before routing (413,
    an admission 503) is matched against ``routes``, the app's routes; paths that match none
    are labelled ``unmatched`` so random URLs cannot grow the label set.
    """

    MAX_CACHED = 1024
    """Label sets whose metric children are kept (``labels()`` costs a lock and a tuple per call)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = list(routes)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _observers(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The latency histogram's and the request counter's children for these labels."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = (
                m.latency.labels(route=route),
                m.requests.labels(route=route, method=method, status=str(status)),
            )
            if len(self._children) < self.MAX_CACHED:  # methods come from clients: the cache stays bounded
                self._children[key] = children
        return children

    def _route_label(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return route.path
        if ROUTE_LABEL in scope:  # refused by admission, labelled there: no route matching per refusal
            return scope[ROUTE_LABEL]
        for candidate in self.routes:
            match, _ = candidate.matches({**scope, "type": "http"})
            if match == Match.FULL and hasattr(candidate, "path"):
                return candidate.path
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            latency, count = self._observers(self._route_label(scope), scope["method"], status)
            latency.observe(time.perf_counter() - start)
            count.inc()

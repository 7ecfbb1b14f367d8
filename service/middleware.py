"""ASGI middleware: request-body size and time limits, and per-route Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import ROUTE_LABEL
from .errors import PayloadTooLarge, RequestTimeout, error_response
from .metrics import Metrics


class BodySizeLimitMiddleware:
    """Bound what reading a request body may cost: its size and how long it may take to arrive.

    A ``Content-Length`` over ``max_bytes`` is refused (413) before any byte of the body is read.
    Otherwise the app reads the body when it needs it (so a request refused earlier, e.g. by
    admission or an API key, never costs its body), and the read that passes ``max_bytes``, or
    that is still waiting ``timeout_s`` after the request arrived, raises ``PayloadTooLarge``
    (413) or ``RequestTimeout`` (408): a client trickling its body cannot hold a place for long.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self, got: str) -> str:
        return (
            f"request body is {got}, over the limit of {self.max_bytes} bytes; "
            "send fewer or smaller inputs per request (or raise MFDV_MAX_BODY_BYTES)"
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
                    await error_response(400, "Content-Length is not an integer")(scope, receive, send)
                    return
                if declared > self.max_bytes:
                    await error_response(413, self._too_large(f"{declared} bytes"))(scope, receive, send)
                    return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        size = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal size, complete
            if complete:  # after the body: disconnect notices, unbounded
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s (MFDV_BODY_TIMEOUT_SECONDS); "
                    "send it at once"
                ) from None
            if message["type"] != "http.request":
                complete = True  # the client went away
                return message
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                raise PayloadTooLarge(self._too_large(f"more than {self.max_bytes} bytes"))
            complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


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

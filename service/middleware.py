"""ASGI middleware: request-body size limit and per-route Prometheus metrics."""

from __future__ import annotations

import time

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .metrics import Metrics


class BodySizeLimitMiddleware:
    """Reject bodies over ``max_bytes`` with 413 before they are read in full.

    A ``Content-Length`` over the limit is rejected before any byte of the body is
    read. A chunked body is read at most until it passes the limit. Bodies under the
    limit are buffered and replayed to the app, so the app never sees a partial body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # client went away: let the app see the disconnect
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await error_response(413, self._too_large(f"more than {self.max_bytes} bytes"))(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
        if messages and messages[-1]["type"] != "http.request":
            replay.append(messages[-1])

        async def replay_receive() -> Message:
            if replay:
                return replay.pop(0)
            return await receive()

        await self.app(scope, replay_receive, send)


class MetricsMiddleware:
    """Count requests and time them by route template (``/v2/models/{name}/infer``), method and status.

    Paths that match no route are labelled ``unmatched`` so random URLs cannot grow
    the label set.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    def _route_label(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return route.path
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", []):
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
            route = self._route_label(scope)
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()

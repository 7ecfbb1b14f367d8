"""The HTTP edge as one ASGI wrapper: metrics, shutdown answers, the catch-all 500, admission, and the
request body read whole within its size and pace limits (``EdgeMiddleware``).

These were five middlewares, each wrapping ``send`` to see whether the response had started; one
wrapper does it once per message and keeps every guard and its order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CLIENT_CLOSED, error_response
from ..metrics import Metrics
from .admission import HEAD_REFUSER, ROUTE_LABEL, Admission, AdmittedRoutes, HeadRefusal
from .lifecycle import Lifecycle, cut_response

logger = logging.getLogger(__name__)

BODY_READ = "mfdv.body_read"
"""Scope key set once the whole body has arrived (``BodyLimits.read``, before the app runs)."""

NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyLimits:
    """Read a request's whole body before the app runs, within bounds on its size and its pace.

    Nothing past this read (admission's place and throughput estimate, a probe-pool place, the
    routes) is held by a request whose body is still on its way: a client that stalls or trickles
    its body holds only its connection, for a bounded time.

    - a ``Content-Length`` that is not an integer is a 400, and one over ``max_bytes`` a 413,
      before any byte of the body is read; a chunked body is cut at ``max_bytes`` (413);
    - the body must arrive at ``min_rate`` bytes per second on average once ``grace_s`` seconds
      have passed (Kestrel's ``MinRequestBodyDataRate``, nginx's ``client_body_timeout``), and
      whole within ``timeout_s``: otherwise 408;
    - a client that leaves mid-body is recorded as 499 (nginx's convention; nobody receives it) and nothing runs.

    ``read`` returns the body, or None once it has answered the refusal. Refusals carry
    ``Connection: close``: the rest of the body is not read.
    """

    def __init__(self, max_bytes: int, timeout_s: float, min_rate: float = 0.0, grace_s: float = 0.0) -> None:
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

    async def read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None when the request was refused (answered through ``send``)."""
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _refuse(400, "Content-Length is not an integer", scope, receive, send)
                    return None
                if declared > self.max_bytes:
                    await _refuse(413, self._too_large(f"{declared} bytes"), scope, receive, send)
                    return None
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
                return None
            if message["type"] != "http.request":  # the client went away mid-body: nobody receives the answer
                logger.debug("%s %s: the client left before its body arrived", scope["method"], scope["path"])
                # recorded under nginx's 499, as the routes record a client gone mid-read (service.errors)
                await error_response(
                    CLIENT_CLOSED, "the client closed the connection before its request body was received"
                )(scope, receive, send)
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(413, self._too_large(f"more than {self.max_bytes} bytes"), scope, receive, send)
                return None
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(status, message, {"Connection": "close"})(scope, receive, send)


class RouteLabels:
    """The route template a request is counted under (``/v2/models/{name}/infer``).

    A request the router handled is labelled with its route. One answered before routing (413,
    an admission 503) is matched against ``routes``, the app's routes; paths that match none are
    labelled ``unmatched`` so random URLs cannot grow the label set.
    """

    MAX_CACHED = 1024
    """Label sets whose metric children are kept (``labels()`` costs a lock and a tuple per call)."""

    def __init__(self, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.metrics = metrics
        self.routes = list(routes)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observers(self, scope: Scope, status: int) -> tuple[Any, Any]:
        """The latency histogram's and the request counter's children for this request's labels."""
        route, method = self.label(scope), scope["method"]
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

    def label(self, scope: Scope) -> str:
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


class EdgeMiddleware:
    """Every HTTP request's way in and out, in this order (each part optional, for tests):

    1. **metrics** (``metrics``): requests in flight, and per route template, method and status the
       count and latency of every answer, refusals included (``RouteLabels``);
    2. **shutdown** (``lifecycle``): while draining, every response carries ``Connection: close``; a
       request cancelled at the end of the grace period that has not started its response gets a
       JSON 503 with ``Retry-After`` (``service.edge.lifecycle.cut_response``); other cancellations propagate;
    3. **catch-all**: an unhandled exception is logged with its traceback and answered with a
       generic JSON 500 (no internals), unless the response had started;
    4. **admission from the headers** (``admission``, for the routes among ``routes`` marked
       ``service.edge.admission.admission_controlled``: ``AdmittedRoutes``): a request that would be refused
       now is refused before its body is read (503 + ``Retry-After`` and the reason), holding nothing.
       Under ``python -m service`` the HTTP protocol asks first (``head_refusal``; it finds this middleware
       in the lifespan state) and answers such a refusal itself, before any ASGI task exists;
    5. **the body** (``body``, every method but GET/HEAD/OPTIONS): read whole within its size, pace
       and time limits (``BodyLimits``); the app then receives it as one message, and the real
       ``receive`` after it (disconnect notices);
    6. **admission once the body is in**: decided again, and the request counts in flight until
       the app returns. A request whose body is on its way is not in flight, so a client that
       stalls its body takes no place and does not slow the throughput estimate.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None = None,
        routes: Sequence[BaseRoute] = (),
        lifecycle: Lifecycle | None = None,
        admission: Admission | None = None,
        body: BodyLimits | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.labels = RouteLabels(metrics, routes) if metrics is not None else None
        self.lifecycle = lifecycle
        self.admission = admission
        self.admitted = AdmittedRoutes(routes)
        self.body = body
        self._heads = 0  # admitted by head_refusal in this turn of the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and "state" in scope:
                scope["state"][HEAD_REFUSER] = self  # for the protocol of service.edge.server (head_refusal)
            await self.app(scope, receive, send)
            return
        status = 500
        started = False
        lifecycle = self.lifecycle

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                if lifecycle is not None and lifecycle.draining:  # clients reconnect, to a replica staying up
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        metrics = self.metrics
        start = time.perf_counter()
        if metrics is not None:
            metrics.inflight.inc()
        try:
            await self._handle(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if started or lifecycle is None or not lifecycle.draining:
                raise
            logger.warning("%s %s was cut at the end of the grace period: answered 503", scope["method"], scope["path"])
            status = 503
            await cut_response()(scope, receive, send)  # the answer is out: the cancelled task ends here
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(500, "internal server error; the incident was logged")(scope, receive, send_wrapper)
        finally:
            if metrics is not None:
                metrics.inflight.dec()
                self.record(scope, status, time.perf_counter() - start)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        """Count an answer and its latency under its route template, method and status (``RouteLabels``)."""
        if self.labels is not None:
            latency, count = self.labels.observers(scope, status)
            latency.observe(seconds)
            count.inc()

    def head_refusal(self, scope: Scope) -> HeadRefusal | None:
        """Admission's refusal of a request from its head alone, or None: run it (``__call__``).

        The HTTP protocol (``service.edge.server``) asks when a request's headers are complete, answers
        a refusal itself (the same 503, ``Retry-After`` and reason as ``__call__``'s) and counts it with
        ``record``: a refusal leaves its route template in ``scope``, as ``__call__``'s does.

        The heads admitted in one turn of the event loop count as in flight for the others of that turn:
        their tasks run on the next turn, before any new request is read, and take their places once their
        bodies are in (a burst of heads shares the free places, rather than each seeing all of them and the
        rest being refused by ``__call__`` after all).
        """
        admission = self.admission
        if admission is None:
            return None
        template = self.admitted.template(scope)
        if template is None:
            return None
        reason = admission.refusal(take=False, pending=self._heads)
        if reason is None:
            if not self._heads:
                asyncio.get_running_loop().call_soon(self._forget_heads)
            self._heads += 1
            return None
        scope[ROUTE_LABEL] = template
        draining = self.lifecycle is not None and self.lifecycle.draining
        return HeadRefusal(template, reason, admission.retry_after(), close=draining)

    def _forget_heads(self) -> None:
        self._heads = 0

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        admission = self.admission
        template = self.admitted.template(scope) if admission is not None else None
        admitted = template is not None
        if admitted and await self._refused(admission, template, scope, receive, send, take=False):  # type: ignore[arg-type]
            return
        if self.body is not None and method not in NO_BODY_METHODS:
            body = await self.body.read(scope, receive, send)
            if body is None:
                return
            receive = _replay(body, receive)
            scope[BODY_READ] = True
        if not admitted:
            await self.app(scope, receive, send)
            return
        if await self._refused(admission, template, scope, receive, send, take=True):  # type: ignore[arg-type]
            return
        try:
            await self.app(scope, receive, send)
        finally:
            admission.finished()  # type: ignore[union-attr]

    @staticmethod
    async def _refused(
        admission: Admission, template: str, scope: Scope, receive: Receive, send: Send, take: bool
    ) -> bool:
        """Refuse the request now if admission says so (503 + ``Retry-After``); ``take``: count it if admitted;
        ``template``: its route's, the label its refusal is counted under."""
        reason = admission.refusal(take=take)
        if reason is None:
            return False
        scope[ROUTE_LABEL] = template
        await error_response(503, reason, {"Retry-After": str(admission.retry_after())})(scope, receive, send)
        return True


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the whole body as one message, then the real ``receive``'s (disconnect notices)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

"""Admission of prediction requests: shed load early and fast, count only what has fully arrived.

A request that will wait longer than it is worth waiting should hear so at once, not after its
body has been parsed and decoded. ``Admission`` decides for the ``POST`` routes whose endpoint is
marked ``@admission_controlled`` (``/v1/predict`` and the v2 ``infer`` routes; ``AdmittedRoutes``
finds them among the app's routes when the app is built, so a renamed route keeps its admission);
``service.edge.middleware.EdgeMiddleware`` asks, first from the headers (a refusal then costs no body)
and again once the whole body has arrived, when an admitted request starts to count:

- at most ``MFDV_MAX_INFLIGHT`` such requests are being handled at once (reading, parsing,
  decoding, queued for the batcher, computing, rendering); one more gets 503 + ``Retry-After``;
- a request is admitted only when its expected wait is within ``MFDV_MAX_QUEUE_DELAY_MS``
  (as Triton's ``max_queue_delay``): the requests in flight divided by the rate at which this
  process completes them while busy (``ThroughputEstimator``); a request is always admitted
  when none is in flight.

Every refusal costs one header scan and one small JSON response on the event loop, so under
any load the 503s come back fast and the requests admitted keep the latency they would have
at the load the server can carry. Attack probes are admitted by their own pool (the route
reserves a slot once the body has arrived and the API key is checked).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from re import Pattern
from typing import Any, TypeVar

from starlette.routing import BaseRoute
from starlette.types import Scope

ROUTE_LABEL = "mfdv.route"
"""Scope key where a refusal leaves its route template, for the metrics (no router has run)."""

HEAD_REFUSER = "mfdv.head_refuser"
"""Lifespan-state key where ``EdgeMiddleware`` leaves itself for the HTTP protocol (``service.edge.server``),
which asks it for admission's refusals from a request's head and answers them before any ASGI task exists."""

MARKER = "__mfdv_admission_controlled__"
"""The endpoint attribute ``admission_controlled`` sets."""

EndpointT = TypeVar("EndpointT", bound=Callable[..., Any])


def admission_controlled(endpoint: EndpointT) -> EndpointT:
    """Mark a ``POST`` route's endpoint as admission-controlled; put it under the route decorator::

    @router.post("/predict", ...)
    @admission_controlled
    async def predict(request: Request) -> Response: ...
    """
    setattr(endpoint, MARKER, True)
    return endpoint


def is_admission_controlled(route: BaseRoute) -> bool:
    """Whether ``route``'s endpoint is marked ``admission_controlled``."""
    return bool(getattr(getattr(route, "endpoint", None), MARKER, False))


class AdmittedRoutes:
    """Which requests admission decides for, found among an app's routes when the app is built.

    A ``POST`` request is admission-controlled when the first ``POST`` route whose path matches it,
    in the app's order (the route the router will pick), is marked ``admission_controlled``. Before
    routing (the body is not read yet) this costs one path match per ``POST`` route.

    Args:
        routes: the app's routes, in order.

    Raises:
        ValueError: a marked route that does not take ``POST`` (admission would never see it).
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._post: list[tuple[Pattern[str], str | None]] = []
        for route in routes:
            methods = getattr(route, "methods", None) or ()
            controlled = is_admission_controlled(route)
            if controlled and "POST" not in methods:
                raise ValueError(
                    f"route {getattr(route, 'path', route)!r} is marked admission_controlled but takes no POST"
                )
            if "POST" in methods:
                self._post.append((route.path_regex, route.path if controlled else None))  # type: ignore[attr-defined]

    @property
    def templates(self) -> list[str]:
        """The admission-controlled routes' templates (``/v2/models/{name}/infer``), in order."""
        return [template for _, template in self._post if template is not None]

    def template(self, scope: Scope) -> str | None:
        """The route template of an admission-controlled request (the label metrics count it
        under), or None: not admission-controlled."""
        if scope["method"] != "POST":
            return None
        path = scope["path"]
        for regex, template in self._post:
            if regex.match(path) is not None:
                return template
        return None


@dataclass(frozen=True)
class HeadRefusal:
    """Admission's refusal of a request from its head alone: a 503 with ``Retry-After``.

    Attributes:
        route: the route template the refusal is counted under.
        message: the reason (the ``{"error": ...}`` body).
        retry_after: seconds for ``Retry-After``.
        close: answer with ``Connection: close`` (the service is draining).
    """

    route: str
    message: str
    retry_after: int
    close: bool = False


class ThroughputEstimator:
    """Completions per second while busy: an EWMA over windows of ``window_s`` busy seconds.

    Busy means at least one admitted request is in flight. Measuring per busy second (not per
    wall-clock second) makes the rate what the server does when it has work, whatever the load:
    at one request at a time it is one over the latency, under saturation it is the throughput.

    Args:
        window_s: busy seconds per sample.
        min_completions: completions a window needs to give a sample.
        weight: EWMA weight of a new sample.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        window_s: float = 0.5,
        min_completions: int = 4,
        weight: float = 0.3,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.window_s = window_s
        self.min_completions = min_completions
        self.weight = weight
        self.clock = clock
        self.rate: float | None = None  # completions per busy second; None until the first window
        self.inflight = 0
        self._busy_since = 0.0
        self._busy = 0.0  # closed busy time in this window
        self._completed = 0

    def started(self) -> None:
        if self.inflight == 0:
            self._busy_since = self.clock()
        self.inflight += 1

    def finished(self) -> None:
        now = self.clock()
        self.inflight -= 1
        self._completed += 1
        busy = self._busy + (now - self._busy_since)
        if self.inflight == 0:
            self._busy, self._busy_since = busy, now
        if busy >= self.window_s and self._completed >= self.min_completions:
            sample = self._completed / busy
            self.rate = sample if self.rate is None else (1 - self.weight) * self.rate + self.weight * sample
            self._busy, self._completed, self._busy_since = 0.0, 0, now

    def expected_wait(self, pending: int = 0) -> float:
        """Seconds a request arriving now would wait for those in flight and ``pending`` more (0 before any
        estimate)."""
        if self.rate is None or self.inflight + pending == 0:
            return 0.0
        return (self.inflight + pending) / self.rate


class Admission:
    """The admission decision for prediction requests.

    Args:
        max_inflight: most prediction requests handled at once.
        max_queue_delay_s: the longest expected wait a request is admitted with (0: no limit).
        estimator: how throughput is measured (default: ``ThroughputEstimator()``).
    """

    def __init__(
        self, max_inflight: int, max_queue_delay_s: float, estimator: ThroughputEstimator | None = None
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queue_delay_s = max_queue_delay_s
        self.estimator = estimator or ThroughputEstimator()
        self.refused = 0

    @property
    def inflight(self) -> int:
        return self.estimator.inflight

    def refusal(self, take: bool = True, pending: int = 0) -> str | None:
        """Why a request arriving now is refused, or None: admit it.

        Args:
            take: count an admitted request in flight (its body has arrived); False only looks
                (a request whose body is still on its way holds nothing).
            pending: requests admitted from their heads a moment ago and not counted yet (they will be
                once their bodies are in, a moment later): counted as in flight for this decision.
        """
        est = self.estimator
        inflight = est.inflight + pending
        if inflight >= self.max_inflight:
            reason = (
                f"the server is handling {inflight} prediction requests, its limit (MFDV_MAX_INFLIGHT); "
                "retry after a second or on another replica"
            )
        elif self.max_queue_delay_s > 0 and (wait := est.expected_wait(pending)) > self.max_queue_delay_s:
            reason = (
                f"a request arriving now would wait about {wait * 1e3:.0f} ms behind {inflight} in flight, "
                f"over the limit of {self.max_queue_delay_s * 1e3:.0f} ms (MFDV_MAX_QUEUE_DELAY_MS); "
                "retry after a second or on another replica"
            )
        else:
            if take:
                est.started()
            return None
        self.refused += 1
        return reason

    def finished(self) -> None:
        self.estimator.finished()

    def retry_after(self) -> int:
        """Seconds a refused client is told to wait: the expected wait, at least 1."""
        return max(1, math.ceil(self.estimator.expected_wait()))

"""Application state and the FastAPI dependencies routes use to reach it."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from models import StochasticClassifier

from .compute.engine import InferenceEngine
from .compute.inputs import InputSpec
from .compute.pool import BoundedPool
from .config import Settings
from .edge.admission import Admission
from .edge.lifecycle import Lifecycle
from .errors import ModelNotReady, Unauthorized
from .metrics import Metrics
from .schemas.limits import validation_context


@dataclass(frozen=True)
class Serving:
    """What the routes that use the model serve with, complete: built by the lifespan once the model
    is loaded, verified and warmed up (``AppState.serving``). Routes reach it through ``ServingDep``
    (or ``AppState.ready()`` on the hot path), which answer 503 ``ModelNotReady`` before it exists.

    Attributes:
        engine: the loaded model and its batcher.
        decode_pool: ``Settings.decode_threads()`` threads for the requests' CPU work (parsing, decoding,
            rendering responses).
        attack_pool: bounded threads for attack probes.
        probe_model: the torch model attack probes differentiate (a frozen copy of the checkpoint's,
            whatever the backend).
        input_spec: what an input must be for this model and these settings (``service.compute.inputs``).
    """

    engine: InferenceEngine
    decode_pool: BoundedPool
    attack_pool: BoundedPool
    probe_model: StochasticClassifier
    input_spec: InputSpec


@dataclass
class AppState:
    """Everything one app serves with; lives on ``app.state.mfdv``.

    Attributes:
        settings: the app's settings.
        metrics: its Prometheus metrics (own registry).
        admission: the admission decision for prediction requests (``service.edge.admission``).
        lifecycle: where the process stands in its shutdown (``service.edge.lifecycle``).
        validation: the request models' validation context (``service.schemas.limits.validation_context``:
            the settings the request limits read), passed to ``service.edge.transport.read_body``.
        serving: the model and its pools (``Serving``), set by the lifespan once they are ready;
            routes get it through ``ready()``/``ServingDep``, never None.
        load_error: why loading failed, if it did.
    """

    settings: Settings
    metrics: Metrics
    admission: Admission
    lifecycle: Lifecycle
    validation: dict[str, Any] = field(init=False, repr=False)
    serving: Serving | None = None
    load_error: str | None = None

    def __post_init__(self) -> None:
        self.validation = validation_context(self.settings)

    def ready(self) -> Serving:
        """The model and its pools if they serve now.

        Raises:
            ModelNotReady: not loaded yet, failed to load, or stopped.
        """
        serving = self.serving
        if serving is None or not serving.engine.ready:
            if self.load_error:
                raise ModelNotReady(f"the model failed to load: {self.load_error}", retry_after=30)
            raise ModelNotReady()
        return serving

    def readiness(self) -> Serving:
        """The model and its pools if this replica should get traffic: ready and not shutting down.

        Raises:
            ModelNotReady: not ready (see ``ready``), or draining before shutdown.
        """
        serving = self.ready()
        if self.lifecycle.draining:
            raise ModelNotReady("the service is shutting down; send requests to another replica")
        return serving


def app_state(request: Request) -> AppState:
    """The app's state, reached directly: what the prediction routes use (with ``AppState.ready()``)
    instead of ``StateDep`` and ``ServingDep``, whose resolution by FastAPI costs about 40 us of
    event-loop CPU per request."""
    return request.app.state.mfdv


async def get_state(request: Request) -> AppState:  # async: no thread-pool hop per request
    return request.app.state.mfdv


StateDep = Annotated[AppState, Depends(get_state)]


async def get_serving(state: StateDep) -> Serving:
    return state.ready()


ServingDep = Annotated[Serving, Depends(get_serving)]
"""The model and its pools; 503 ``ModelNotReady`` until the lifespan has built them."""


async def get_engine(serving: ServingDep) -> InferenceEngine:
    return serving.engine


EngineDep = Annotated[InferenceEngine, Depends(get_engine)]


API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required on protected routes when the server sets MFDV_API_KEY (otherwise they are open).",
)


async def require_api_key(state: StateDep, given: Annotated[str | None, Depends(API_KEY_HEADER)]) -> None:
    """Check ``X-API-Key`` against ``MFDV_API_KEY`` (no key configured: open).

    Raises:
        Unauthorized: a key is configured and the header is missing or wrong.
    """
    expected = state.settings.api_key
    if expected is None:
        return
    if not hmac.compare_digest((given or "").encode(), expected.get_secret_value().encode()):
        raise Unauthorized("this endpoint needs a valid X-API-Key header (MFDV_API_KEY)")


ApiKeyDep = Annotated[None, Depends(require_api_key)]

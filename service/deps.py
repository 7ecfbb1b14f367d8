"""Application state and the FastAPI dependencies routes use to reach it."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from models import StochasticClassifier

from .admission import Admission
from .config import Settings
from .engine import InferenceEngine
from .errors import ModelNotReady, Unauthorized
from .inputs import InputSpec
from .lifecycle import Lifecycle
from .metrics import Metrics
from .pool import BoundedPool
from .schemas.limits import validation_context


@dataclass
class AppState:
    """Everything one app serves with; lives on ``app.state.mfdv``.

    Attributes:
        settings: the app's settings.
        metrics: its Prometheus metrics (own registry).
        admission: the admission decision for prediction requests (``service.admission``).
        lifecycle: where the process stands in its shutdown (``service.lifecycle``).
        engine: the loaded model and its batcher; None until the lifespan has loaded it.
        attack_pool: bounded threads for attack probes; None until loaded.
        probe_model: the torch model attack probes differentiate (a frozen copy of the
            checkpoint's, whatever the backend); None until loaded.
        decode_pool: ``Settings.decode_threads()`` threads for the requests' CPU work (parsing, decoding,
            rendering responses); None until loaded.
        load_error: why loading failed, if it did.
        validation: the request models' validation context (``service.schemas.limits.validation_context``:
            the settings the request limits read), passed to ``service.transport.read_body``.
    """

    settings: Settings
    metrics: Metrics
    admission: Admission
    lifecycle: Lifecycle
    engine: InferenceEngine | None = None
    attack_pool: BoundedPool | None = None
    probe_model: StochasticClassifier | None = None
    decode_pool: BoundedPool | None = None
    load_error: str | None = None
    validation: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.validation = validation_context(self.settings)

    def ready_engine(self) -> InferenceEngine:
        """The engine if it serves now.

        Raises:
            ModelNotReady: not loaded yet, failed to load, or shutting down.
        """
        engine = self.engine
        if engine is None or not engine.ready:
            if self.load_error:
                raise ModelNotReady(f"the model failed to load: {self.load_error}", retry_after=30)
            raise ModelNotReady()
        return engine

    def readiness(self) -> InferenceEngine:
        """The engine if this replica should get traffic: ready and not shutting down.

        Raises:
            ModelNotReady: not ready (see ``ready_engine``), or draining before shutdown.
        """
        engine = self.ready_engine()
        if self.lifecycle.draining:
            raise ModelNotReady("the service is shutting down; send requests to another replica")
        return engine

    def cpu_pool(self) -> BoundedPool:
        """The decode pool (parse, decode, render).

        Raises:
            ModelNotReady: not started yet, or stopped.
        """
        if self.decode_pool is None:
            raise ModelNotReady()
        return self.decode_pool

    def input_spec(self, engine: InferenceEngine) -> InputSpec:
        s = self.settings
        return InputSpec(engine.input_shape, s.max_image_pixels, s.max_request_pixels)


def app_state(request: Request) -> AppState:
    """The app's state, reached directly: what the prediction routes use instead of ``StateDep`` and
    ``EngineDep``, whose resolution by FastAPI costs about 40 us of event-loop CPU per request."""
    return request.app.state.mfdv


async def get_state(request: Request) -> AppState:  # async: no thread-pool hop per request
    return request.app.state.mfdv


StateDep = Annotated[AppState, Depends(get_state)]


async def get_engine(state: StateDep) -> InferenceEngine:
    return state.ready_engine()


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

"""Application state and the FastAPI dependencies routes use to reach it."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from .compute.control import RepositoryControl
from .compute.repository import Repository, Serving
from .config import Settings
from .edge.admission import Admission
from .edge.lifecycle import Lifecycle
from .errors import ModelNotReady, Unauthorized
from .metrics import Metrics
from .schemas.limits import validation_context


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
        repository: the models (``service.compute.repository.Repository``), set by the lifespan once
            the default model is loaded; routes get a model version through ``serve()``/``ServingDep``.
        control: with several worker processes, what keeps their repositories in step
            (``service.compute.control``); routes load and unload through it when it is set.
        load_error: why the start failed, if it did.
    """

    settings: Settings
    metrics: Metrics
    admission: Admission
    lifecycle: Lifecycle
    validation: dict[str, Any] = field(init=False, repr=False)
    repository: Repository | None = None
    control: RepositoryControl | None = None
    load_error: str | None = None

    def __post_init__(self) -> None:
        self.validation = validation_context(self.settings)

    def models(self) -> Repository:
        """The repository, once the lifespan has loaded it.

        Raises:
            ModelNotReady: the models are not loaded yet, or failed to load.
        """
        repository = self.repository
        if repository is None:
            if self.load_error:
                raise ModelNotReady(f"the model failed to load: {self.load_error}", retry_after=30)
            raise ModelNotReady()
        return repository

    def ready(self, name: str | None = None, version: str | None = None) -> Serving:
        """The version that serves model ``name`` (None: the default model) if it serves now.

        Raises:
            ModelNotReady: the models are not loaded yet, failed to load, or stopped.
            NotFound: no model ``name`` is loaded (``Repository.get``).
        """
        return self.models().get(name, version)

    def serve(self, name: str | None = None, version: str | None = None) -> contextlib.AbstractContextManager[Serving]:
        """``ready(name, version)``, held while the request is answered (``Serving.use``): a version that is
        replaced or unloaded meanwhile finishes this request first."""
        return self.ready(name, version).use()

    def accepting(self) -> Repository:
        """The repository if this replica should get traffic: loaded, and the process not shutting down.

        Raises:
            ModelNotReady: not loaded yet, failed to load, or draining before shutdown.
        """
        repository = self.models()
        if self.lifecycle.draining:
            raise ModelNotReady("the service is shutting down; send requests to another replica")
        return repository

    def readiness(self, name: str | None = None, version: str | None = None) -> Serving:
        """Model ``name``'s version (None: the default model) if this replica should get traffic for it: it
        serves and the process is not shutting down (``accepting``).

        Raises:
            ModelNotReady: not ready (see ``ready``), or draining before shutdown.
            NotFound: the model is not loaded (the default model unloaded, for ``/readyz``).
        """
        return self.accepting().get(name, version)


def app_state(request: Request) -> AppState:
    """The app's state, reached directly: what the prediction routes use (with ``AppState.serve()``)
    instead of ``StateDep`` and ``ServingDep``, whose resolution by FastAPI costs about 40 us of
    event-loop CPU per request."""
    return request.app.state.mfdv


async def get_state(request: Request) -> AppState:  # async: no thread-pool hop per request
    return request.app.state.mfdv


StateDep = Annotated[AppState, Depends(get_state)]


async def get_serving(request: Request, state: StateDep) -> AsyncIterator[Serving]:
    """The version of the model the path names (``{name}``, ``{version}``; none: the default model), held
    until the request is answered."""
    params = request.path_params
    with state.serve(params.get("name"), params.get("version")) as serving:
        yield serving


ServingDep = Annotated[Serving, Depends(get_serving)]
"""The model version a route serves with; 503 ``ModelNotReady`` until the lifespan has loaded the models,
404 for a model that is not loaded."""


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

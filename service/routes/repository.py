"""The Open Inference Protocol's model repository extension (Triton's): the index, load and unload.

``tritonclient``'s ``get_model_repository_index``, ``load_model`` and ``unload_model`` work against
these routes. They change what the server serves, so they need the API key (``MFDV_API_KEY``), as
the attack probe does. A load verifies and warms up the new version before it takes traffic; a
failed load answers 400 with the reason and leaves what was serving as it was. Requests in flight
on a replaced or unloaded version finish on it.
"""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError

from ..compute.control import RepositoryControl
from ..compute.repository import Repository
from ..deps import ApiKeyDep, AppState, StateDep
from ..errors import InvalidInput, describe_validation_errors
from ..schemas import error_responses
from ..schemas.v2 import LoadRequest, RepositoryIndexEntry, RepositoryIndexRequest, UnloadRequest

router = APIRouter(prefix="/v2/repository", tags=["v2 repository (Open Inference Protocol extension)"])

BodyT = TypeVar("BodyT", bound=BaseModel)

_ERRORS = {
    400: "the body is not the extension's JSON, or the model's new version failed to load (the message says why; "
    "what was serving keeps serving)",
    401: "MFDV_API_KEY is set and X-API-Key is missing or wrong",
}


async def _body(request: Request, model: type[BodyT]) -> BodyT:
    """The optional JSON body (tritonclient sends it without a Content-Type; empty means the defaults)."""
    raw = await request.body()
    if not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise InvalidInput(f"{model.__doc__ or 'the body'}: {describe_validation_errors(e.errors())}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # pragma: no cover - pydantic reports these itself
        raise InvalidInput(f"the body is not JSON: {e}") from None


def _manager(state: AppState) -> Repository | RepositoryControl:
    """What loads and unloads: the control that keeps every worker in step, or this process's repository."""
    return state.control or state.models()


@router.post(
    "/index",
    summary="The repository's models: name, version, state (READY or UNAVAILABLE) and why",
    responses=error_responses({**_ERRORS, 503: "models not loaded yet (Retry-After)"}),
)
async def index(request: Request, state: StateDep, _: ApiKeyDep) -> list[RepositoryIndexEntry]:
    repository = state.models()
    body = await _body(request, RepositoryIndexRequest)
    repository.rescan()  # models added to the folder since the start show up
    entries = [RepositoryIndexEntry.model_validate(e, from_attributes=True) for e in repository.index()]
    return [e for e in entries if e.state == "READY"] if body.ready else entries


@router.post(
    "/models/{name}/load",
    summary="Load (or reload) a model: its newest version, or `parameters.version`; verified and warmed up first",
    responses=error_responses(
        {
            **_ERRORS,
            404: "no such model (or version) in the repository",
            409: "MFDV_MAX_LOADED_MODELS models are loaded already; unload one first",
            503: "models not loaded yet, or another worker process did not apply the load (Retry-After)",
        }
    ),
)
async def load(name: str, request: Request, state: StateDep, _: ApiKeyDep) -> RepositoryIndexEntry:
    state.models()  # 503 before the start has loaded the repository
    body = await _body(request, LoadRequest)
    serving = await _manager(state).load(name, body.parameters.version)
    return RepositoryIndexEntry(name=serving.name, version=serving.version, state="READY")


@router.post(
    "/models/{name}/unload",
    summary="Unload a model: new requests get 404; those in flight finish on it",
    responses=error_responses(
        {
            **_ERRORS,
            404: "no such model in the repository",
            503: "models not loaded yet, or another worker process did not apply the unload (Retry-After)",
        }
    ),
)
async def unload(name: str, request: Request, state: StateDep, _: ApiKeyDep) -> RepositoryIndexEntry:
    repository = state.models()
    await _body(request, UnloadRequest)
    await _manager(state).unload(name)
    version = repository.sources[name].latest if name in repository.sources else ""
    return RepositoryIndexEntry(name=name, version=version, state="UNAVAILABLE", reason="unloaded")

"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import StateDep
from ..schemas import error_responses
from ..schemas.predict import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])

METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the default model is loaded and warmed up",
    responses=error_responses(
        {
            404: "the default model is unloaded (POST /v2/repository/models/NAME/load)",
            503: "loading, failed to load, or shutting down: from SIGTERM on (Retry-After)",
        }
    ),
)
async def readyz(state: StateDep) -> ReadyResponse:
    serving = state.readiness()
    return ReadyResponse(status="ready", model=serving.name, model_id=serving.engine.model_id)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {METRICS_MEDIA_TYPE: {"schema": {"type": "string"}}}}
    },
)
async def metrics(state: StateDep) -> Response:
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)

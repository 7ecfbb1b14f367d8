"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import StateDep
from ..schemas import ErrorResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the model is loaded and warmed up",
    responses={503: {"model": ErrorResponse, "description": "loading, failed to load, or shutting down"}},
)
async def readyz(state: StateDep) -> dict[str, str]:
    engine = state.ready_engine()
    return {"status": "ready", "model": engine.name, "model_id": engine.model_id}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)

"""``/v1``: stochastic prediction with uncertainty, and the served model's metadata."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response

from ..config import Settings
from ..deps import EngineDep, StateDep
from ..engine import InferenceEngine, PredictJob, random_seed
from ..errors import InvalidInput
from ..inputs import InputSpec, decode_inputs
from ..openapi import request_body
from ..schemas import (
    ModelsResponse,
    PredictForm,
    PredictRequest,
    PredictResponse,
    dump_response,
    error_responses,
    floats,
)
from ..schemas.predict import PredictOptions
from ..transport import Body, BodyReader, read_body

router = APIRouter(prefix="/v1", tags=["v1"])

PREDICT_BODY: BodyReader[PredictOptions] = BodyReader(
    json_model=PredictRequest, form_model=PredictForm, example='{"inputs": [...], "samples": 32}'
)


def check_samples(samples: int | None, settings: Settings) -> int:
    """The request's T, or the default; out of range is an ``InvalidInput``."""
    limit = settings.max_samples
    if samples is None:
        return settings.default_samples
    if not 1 <= samples <= limit:
        raise InvalidInput(f"samples must be between 1 and {limit} (MFDV_MAX_SAMPLES); got {samples}")
    return samples


def prepare_job(body: Body[PredictOptions], settings: Settings, spec: InputSpec) -> PredictJob:
    """Check the options and decode the inputs: the CPU part, run in the decode pool."""
    req = body.options
    samples = check_samples(req.samples, settings)
    images = decode_inputs(body.inputs, spec, max_inputs=settings.max_inputs, resize=req.resize, name=body.source)
    seed = req.seed if req.seed is not None else random_seed()
    return PredictJob(images, samples, seed, keep_draws=req.return_samples)


def prediction_body(
    engine: InferenceEngine, job: PredictJob, output: Any, timing: dict[str, float | int]
) -> dict[str, Any]:
    """The ``/v1/predict`` response; every field but ``timing`` is deterministic."""
    u = output.result.uncertainty
    labels = u.label.tolist()
    probs = floats(u.mean_probs)
    pe, ee, mi = floats(u.predictive_entropy), floats(u.expected_entropy), floats(u.mutual_information)
    va, se = floats(u.vote_agreement), floats(u.top_prob_stderr)
    draws = floats(output.result.draws.transpose(0, 1)) if output.result.draws is not None else None
    threshold = engine.mi_threshold
    predictions = []
    for i, label in enumerate(labels):
        p: dict[str, Any] = {
            "label": label,
            "class_name": engine.class_names[label],
            "probs": probs[i],
            "uncertainty": {
                "predictive_entropy": pe[i],
                "expected_entropy": ee[i],
                "mutual_information": mi[i],
                "vote_agreement": va[i],
                "top_prob_stderr": se[i],
            },
            "flagged": bool(u.mutual_information[i] > threshold),
        }
        if draws is not None:
            p["draws"] = draws[i]
        predictions.append(p)
    return {
        "model": engine.name,
        "model_id": engine.model_id,
        "samples": job.samples,
        "seed": job.seed,
        "predictions": predictions,
        "timing": timing,
    }


@router.post(
    "/predict",
    summary="Predict with T noise draws: mean probabilities and uncertainty per input",
    response_model=PredictResponse,
    response_model_exclude_unset=True,
    responses=error_responses(
        {
            400: "bad input (the message says what to fix)",
            408: "the body did not arrive within MFDV_BODY_TIMEOUT_SECONDS",
            413: "body over MFDV_MAX_BODY_BYTES",
            415: "not JSON or multipart",
            422: "body does not match the schema",
            503: "model not ready, refused by admission before the body was read (MFDV_MAX_INFLIGHT, "
            "MFDV_MAX_QUEUE_DELAY_MS), queue full, or cut at the end of the shutdown grace period (Retry-After)",
        }
    ),
    openapi_extra=request_body(PredictRequest, PredictForm),
)
async def predict(request: Request, state: StateDep, engine: EngineDep) -> Response:
    """JSON ``{"inputs": [...], "samples": T, "seed": S}`` or multipart ``file`` uploads.

    The same seed gives the same bytes (``timing`` aside), whatever else is batched with it.
    The response (megabytes with ``return_samples``) is built in a worker thread, not on the event loop.
    """
    arrived = time.perf_counter()
    s = state.settings
    prepare = partial(prepare_job, settings=s, spec=state.input_spec(engine))
    pool = state.cpu_pool()
    job = await read_body(request, PREDICT_BODY, max_files=s.max_inputs, then=prepare, pool=pool)
    output = await engine.predict(job)
    metrics = state.metrics
    metrics.samples.observe(job.samples)
    for v in output.result.uncertainty.mutual_information.tolist():
        metrics.mutual_information.observe(v)
    timing = {
        "queue_ms": round(output.queue_seconds * 1e3, 3),
        "compute_ms": round(output.compute_seconds * 1e3, 3),
        "total_ms": round((time.perf_counter() - arrived) * 1e3, 3),
        "batch_size": output.batch_size,
    }
    content = await pool.run(lambda: dump_response(PredictResponse, prediction_body(engine, job, output, timing)))
    return Response(content, media_type="application/json")


@router.get(
    "/models",
    summary="The served model: classes, input shape, metrics, sigma, threshold",
    responses=error_responses({503: "model not ready (Retry-After)"}),
)
async def models(state: StateDep, engine: EngineDep) -> ModelsResponse:
    m = engine.manifest
    info = {
        "name": engine.name,
        "id": engine.model_id,
        "method": m.get("method", ""),
        "arch": m.get("arch", ""),
        "dataset": m.get("dataset", ""),
        "class_names": engine.class_names,
        "input_shape": list(engine.input_shape),
        "feature_dim": engine.feature_dim,
        "mi_threshold": engine.mi_threshold,
        "sigma": m.get("sigma", {}),
        "metrics": m.get("metrics", {}),
        "lambda": m.get("lambda"),
        "backend": engine.backend.name,
        "device": engine.backend.device,
        "samples": {"default": state.settings.default_samples, "max": state.settings.max_samples},
    }
    return ModelsResponse.model_validate({"models": [info]})

"""``/v1``: stochastic prediction with uncertainty, and the served model's metadata."""

from __future__ import annotations

import time
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..deps import AppState, EngineDep, StateDep
from ..engine import InferenceEngine, PredictJob, random_seed
from ..errors import InvalidInput, UnsupportedMediaType
from ..inputs import decode_inputs
from ..schemas import (
    ErrorResponse,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    floats,
    parse_json_body,
    validate_request,
)

router = APIRouter(prefix="/v1", tags=["v1"])

FORM_OPTIONS = ("samples", "seed", "return_samples", "resize")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "bad input (the message says what to fix)",
        413: "body over MFDV_MAX_BODY_BYTES",
        415: "not JSON or multipart",
        422: "body does not match the schema",
        503: "model not ready, or queue full (Retry-After)",
    }.items()
}

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "samples": {"type": "integer"},
                        "seed": {"type": "integer"},
                        "return_samples": {"type": "boolean"},
                        "resize": {"type": "boolean"},
                    },
                }
            },
        },
    }
}


def check_samples(samples: int | None, state: AppState) -> int:
    """The request's T, or the default; out of range is an ``InvalidInput``."""
    limit = state.settings.max_samples
    if samples is None:
        return state.settings.default_samples
    if not 1 <= samples <= limit:
        raise InvalidInput(f"samples must be between 1 and {limit} (MFDV_MAX_SAMPLES); got {samples}")
    return samples


def parse_json_request(body: bytes) -> PredictRequest:
    """Parse and validate a JSON body (CPU work: called in the thread pool)."""
    return parse_json_body(body, PredictRequest, '{"inputs": [...], "samples": 32}')


async def read_form_request(request: Request, state: AppState) -> PredictRequest:
    """Multipart: ``file`` parts (one image each) and the options as form fields."""
    max_inputs = state.settings.max_inputs
    async with request.form(max_files=max_inputs + 1, max_fields=len(FORM_OPTIONS) + 8) as form:
        unknown = sorted(set(form.keys()) - {"file", *FORM_OPTIONS})
        if unknown:
            raise InvalidInput(
                f"unknown form field(s) {unknown}; send images as `file` parts and options among {list(FORM_OPTIONS)}"
            )
        files = form.getlist("file")
        if not files:
            raise InvalidInput("no `file` part; upload images as `-F file=@image.png` (several allowed)")
        if len(files) > max_inputs:
            raise InvalidInput(
                f"{len(files)} files in one request; at most {max_inputs} are allowed, split the request"
            )
        data: list[bytes] = []
        for i, f in enumerate(files):
            if not isinstance(f, UploadFile):
                raise InvalidInput(f"file[{i}] is a text field, not a file; upload it with `-F file=@image.png`")
            data.append(await f.read())
        options: dict[str, Any] = {}
        for key in FORM_OPTIONS:
            values = form.getlist(key)
            if len(values) > 1:
                raise InvalidInput(f"form field {key!r} is given {len(values)} times; give it once")
            if values:
                if not isinstance(values[0], str):
                    raise InvalidInput(f"form field {key!r} must be a value, not a file")
                options[key] = values[0]
    return validate_request(PredictRequest, {"inputs": data, **options})


def prepare_request(
    raw: bytes | PredictRequest, source: str, state: AppState, engine: InferenceEngine
) -> tuple[PredictRequest, int, torch.Tensor]:
    """Parse (JSON bytes), check the options and decode the inputs: the CPU part, run in the thread pool.

    Returns:
        The request, its number of draws T, and its images [N, C, H, W].
    """
    req = parse_json_request(raw) if isinstance(raw, bytes) else raw
    samples = check_samples(req.samples, state)
    images = decode_inputs(
        req.inputs, state.input_spec(engine), max_inputs=state.settings.max_inputs, resize=req.resize, name=source
    )
    return req, samples, images


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
    responses=_ERRORS,
    openapi_extra=_PREDICT_BODY,
)
async def predict(request: Request, state: StateDep, engine: EngineDep) -> JSONResponse:
    """JSON ``{"inputs": [...], "samples": T, "seed": S}`` or multipart ``file`` uploads.

    The same seed gives the same bytes (``timing`` aside), whatever else is batched with it.
    """
    arrived = time.perf_counter()
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype in ("application/json", ""):
        body = await request.body()
        req, samples, images = await run_in_threadpool(prepare_request, body, "inputs", state, engine)
    elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await read_form_request(request, state)
        req, samples, images = await run_in_threadpool(prepare_request, form, "file", state, engine)
    else:
        raise UnsupportedMediaType(
            f"content type {ctype!r} is not supported; send application/json or multipart/form-data"
        )
    seed = req.seed if req.seed is not None else random_seed()
    job = PredictJob(images, samples, seed, keep_draws=req.return_samples)
    output = await engine.predict(job)
    metrics = state.metrics
    metrics.samples.observe(samples)
    for v in output.result.uncertainty.mutual_information.tolist():
        metrics.mutual_information.observe(v)
    timing = {
        "queue_ms": round(output.queue_seconds * 1e3, 3),
        "compute_ms": round(output.compute_seconds * 1e3, 3),
        "total_ms": round((time.perf_counter() - arrived) * 1e3, 3),
        "batch_size": output.batch_size,
    }
    return JSONResponse(prediction_body(engine, job, output, timing))


@router.get("/models", summary="The served model: classes, input shape, metrics, sigma, threshold")
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

"""``/v1``: stochastic prediction with uncertainty, and the served model's metadata."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response

from ..compute.engine import InferenceEngine, PredictJob, PredictOutput, random_seed
from ..compute.inputs import InputSpec, decode_inputs
from ..compute.repository import Serving
from ..config import Settings
from ..deps import ServingDep, StateDep, app_state
from ..edge.admission import admission_controlled
from ..edge.openapi import request_body
from ..edge.transport import Body, BodyReader, read_body
from ..schemas import (
    ModelDetail,
    ModelsResponse,
    PredictForm,
    PredictRequest,
    PredictResponse,
    error_responses,
    json_bytes,
)
from ..schemas.limits import INPUTS, SAMPLES
from ..schemas.predict import PredictOptions

router = APIRouter(prefix="/v1", tags=["v1"])

PREDICT_BODY: BodyReader[PredictOptions] = BodyReader(
    json_model=PredictRequest, form_model=PredictForm, example='{"inputs": [...], "samples": 32}'
)


def prepare_job(
    body: Body[PredictOptions], settings: Settings, spec: InputSpec, engine: InferenceEngine, on_loop: bool = False
) -> PredictJob:
    """Decode the inputs of validated options (on the event loop only while that is cheap: ``on_loop``).

    The job renders its own response in the compute thread (``render_prediction``).

    Raises:
        InvalidInput: bad inputs.
        service.compute.inputs.Offload: ``on_loop`` and too much to decode there.
    """
    req = body.options
    assert req.samples is not None  # filled in by validation (service.schemas.limits.Samples)
    images = decode_inputs(
        body.inputs, spec, max_inputs=INPUTS.maximum(settings), resize=req.resize, name=body.source, on_loop=on_loop
    )
    seed = req.seed if req.seed is not None else random_seed()
    return PredictJob(
        images, req.samples, seed, keep_draws=req.return_samples, render=partial(render_prediction, engine)
    )


def render_prediction(engine: InferenceEngine, job: PredictJob, output: PredictOutput) -> bytes:
    """The ``/v1/predict`` response up to its ``timing``: ``{"model": ..., "predictions": [...]`` without the
    closing brace (the route adds ``timing``, the one non-deterministic field). Run by the compute thread.

    Every byte is a function of (checkpoint, inputs, samples, seed); floats are the shortest decimals
    that round-trip their float32 values (orjson's float32 writer). ``PredictResponse`` describes it.
    """
    u = output.uncertainty
    names = engine.class_names
    probs = u.mean_probs.numpy()
    pe, ee, mi = u.predictive_entropy.numpy(), u.expected_entropy.numpy(), u.mutual_information.numpy()
    va, se = u.vote_agreement.numpy(), u.top_prob_stderr.numpy()
    flagged = engine.flagged(u)
    draws = output.draws.transpose(0, 1).contiguous().numpy() if output.draws is not None else None  # (n, T, K)
    predictions = []
    for i, label in enumerate(u.label.tolist()):
        p: dict[str, Any] = {
            "label": label,
            "class_name": names[label],
            "probs": probs[i],
            "uncertainty": {
                "predictive_entropy": pe[i],
                "expected_entropy": ee[i],
                "mutual_information": mi[i],
                "vote_agreement": va[i],
                "top_prob_stderr": se[i],
            },
            "flagged": flagged[i],
        }
        if draws is not None:
            p["draws"] = draws[i]
        predictions.append(p)
    head = {
        "model": engine.name,
        "model_id": engine.model_id,
        "samples": job.samples,
        "seed": job.seed,
        "predictions": predictions,
    }
    return json_bytes(head)[:-1]


_PREDICT = {
    "response_model": PredictResponse,
    "response_model_exclude_unset": True,
    "responses": error_responses(
        {
            400: "bad input (the message says what to fix)",
            404: "the model is not loaded (unknown, unloaded, or failed to load: the message says which)",
            408: "the body did not arrive within MFDV_BODY_TIMEOUT_SECONDS",
            413: "body over MFDV_MAX_BODY_BYTES",
            415: "not JSON or multipart",
            422: "body does not match the schema",
            503: "model loading, refused by admission before the body was read (MFDV_MAX_INFLIGHT, "
            "MFDV_MAX_QUEUE_DELAY_MS), queue full, or cut at the end of the shutdown grace period (Retry-After)",
        }
    ),
    "openapi_extra": request_body(PredictRequest, PredictForm),
}


@router.post(
    "/predict", summary="Predict with the default model: mean probabilities and uncertainty per input", **_PREDICT
)
@admission_controlled
async def predict(request: Request) -> Response:
    """JSON ``{"inputs": [...], "samples": T, "seed": S}`` or multipart ``file`` uploads, to the default model.

    The same seed gives the same bytes (``timing`` aside), whatever else is batched with it.
    A small body is decoded on the event loop, a large one in the decode pool; the response
    (megabytes with ``return_samples``) is written by the compute thread with the batch's results.
    """
    return await _predict(request, None)


@router.post(
    "/models/{name}/predict",
    summary="Predict with the named model: mean probabilities and uncertainty per input",
    **_PREDICT,
)
@admission_controlled
async def predict_model(name: str, request: Request) -> Response:
    """As ``/v1/predict``, with the model ``name`` of the repository (``GET /v1/models`` lists them)."""
    return await _predict(request, name)


async def _predict(request: Request, name: str | None) -> Response:
    arrived = time.perf_counter()
    state = app_state(request)  # not StateDep/ServingDep: the hot path skips FastAPI's dependency resolution
    with state.serve(name) as serving:
        engine = serving.engine
        s = state.settings
        prepare = partial(prepare_job, settings=s, spec=serving.input_spec, engine=engine)
        job = await read_body(
            request,
            PREDICT_BODY,
            max_files=INPUTS.maximum(s),
            then=prepare,
            pool=serving.decode_pool,
            context=state.validation,
            on_loop=partial(prepare, on_loop=True),
        )
        output = await engine.predict(job)
    metrics = serving.metrics
    metrics.samples.observe(job.samples)
    for v in output.result.uncertainty.mutual_information.tolist():
        metrics.mutual_information.observe(v)
    timing = {
        "queue_ms": round(output.queue_seconds * 1e3, 3),
        "compute_ms": round(output.compute_seconds * 1e3, 3),
        "total_ms": round((time.perf_counter() - arrived) * 1e3, 3),
        "batch_size": output.batch_size,
    }
    return Response(output.result.body + b',"timing":' + json_bytes(timing) + b"}", media_type="application/json")


def flag_info(engine: InferenceEngine) -> dict[str, Any]:
    """The rule ``flagged`` follows, as ``/v1/models`` shows it: signal, threshold, the rule in words, and how the
    threshold was calibrated (the manifest's ``flag.calibration``; absent for an older manifest)."""
    calibration = (engine.manifest.get("flag") or {}).get("calibration")
    return {**engine.flag.describe(), **({"calibration": calibration} if calibration else {})}


def describe(serving: Serving, settings: Settings, *, default: bool) -> dict[str, Any]:
    """What ``/v1/models`` says about a loaded model version (``ModelInfo``)."""
    engine = serving.engine
    m = engine.checkpoint.info
    return {
        "name": serving.name,
        "version": serving.version,
        "default": default,
        "id": engine.model_id,
        "method": m.method,
        "arch": m.arch,
        "dataset": m.dataset,
        "class_names": engine.class_names,
        "input_shape": list(engine.input_shape),
        "feature_dim": engine.feature_dim,
        "mi_threshold": engine.mi_threshold,
        "flag": flag_info(engine),
        "sigma": m.sigma,
        "metrics": m.metrics,
        "lambda": m.lambda_,
        "backend": engine.backend.name,
        "device": engine.backend.device,
        "samples": {"default": SAMPLES.default(settings), "max": SAMPLES.maximum(settings)},
    }


@router.get(
    "/models",
    summary="The loaded models: classes, input shape, metrics, sigma, threshold; and the default",
    responses=error_responses({503: "models not loaded yet (Retry-After)"}),
)
async def models(state: StateDep) -> ModelsResponse:
    repository = state.models()
    return ModelsResponse.model_validate(
        {
            "default": repository.default,
            "models": [describe(s, state.settings, default=s.name == repository.default) for s in repository.loaded()],
        }
    )


@router.get(
    "/models/{name}",
    summary="One loaded model: what /v1/models says of it, and its whole manifest",
    responses=error_responses({404: "no such model loaded", 503: "models not loaded yet (Retry-After)"}),
)
async def model(name: str, state: StateDep, serving: ServingDep) -> ModelDetail:
    info = describe(serving, state.settings, default=name == state.models().default)
    return ModelDetail.model_validate({**info, "manifest": serving.engine.manifest})

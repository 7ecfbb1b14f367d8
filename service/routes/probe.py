"""``/v1/attack-probe``: attack the submitted inputs on the fly and report what happened.

The work is ``models.probe.probe`` on a frozen copy of the checkpoint's torch model
(whatever backend serves predictions), run in the bounded attack pool so that probes
never starve predictions. Requests are checked against the probe caps in ``Settings``
before anything runs: over a cap is a 422 that names the setting (a setting an attack
still rejects while running is a 422 too). The wall-time limit
(``MFDV_MAX_PROBE_SECONDS``) is checked after each attack; past it the remaining
attacks are skipped and the response says ``"partial": true`` with the reason.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from models import StochasticClassifier
from models.probe import DEFAULT_JUDGE_SAMPLES, AttackReport, ProbeItem, parse_items, probe

from ..deps import ApiKeyDep, AppState, EngineDep, StateDep
from ..engine import InferenceEngine, random_seed
from ..errors import InvalidInput, ModelNotReady, UnsupportedMediaType, ValidationFailed
from ..inputs import decode_inputs
from ..metrics import Metrics
from ..schemas import ErrorResponse, ProbeRequest, parse_json_body, validate_request

router = APIRouter(prefix="/v1", tags=["attack-probe"])

FORM_OPTIONS = ("labels", "attacks", "judge_samples", "seed", "return_adversarial", "resize")
DEFAULT_ATTACKS: tuple[dict[str, Any], ...] = ({"name": "fgsm"}, {"name": "pgd"}, {"name": "surrogate"})
"""Run when a request names no attacks (each with the default eps and the probe defaults)."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "bad input or label (the message says what to fix)",
        401: "MFDV_API_KEY is set and X-API-Key is missing or wrong",
        413: "body over MFDV_MAX_BODY_BYTES",
        415: "not JSON or multipart",
        422: "body does not match the schema, an unknown attack or setting, or a probe cap exceeded",
        503: "model not ready, or the attack pool is busy (Retry-After)",
    }.items()
}

_PROBE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ProbeRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "labels": {"type": "string", "description": "JSON list or comma-separated integers"},
                        "attacks": {"type": "string", "description": "JSON list of attack specs"},
                        "judge_samples": {"type": "integer"},
                        "seed": {"type": "integer"},
                        "return_adversarial": {"type": "boolean"},
                        "resize": {"type": "boolean"},
                    },
                }
            },
        },
    }
}


def probe_model(model: StochasticClassifier) -> StochasticClassifier:
    """A frozen copy of ``model`` for attack probes: eval mode, no parameter gradients.

    A copy, so that attack threads never touch the module the prediction batcher runs;
    frozen, so backward passes compute input gradients only.
    """
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


# -- checking a request against the caps --------------------------------------------------


def check_budget(requests: list[ProbeItem], inputs: int, state: AppState) -> dict[str, int]:
    """Check eps, gradient work and queries against the caps.

    Returns:
        The request's cost: ``gradient`` and ``queries`` (summed over attacks).

    Raises:
        ValidationFailed: a cap is exceeded (422); the message names the setting.
    """
    s = state.settings
    for i, req in enumerate(requests):
        draws = getattr(req, "samples", None)
        if isinstance(draws, int) and draws > s.max_samples:
            raise ValidationFailed(
                f"attacks[{i}] ({req.name}): samples={draws} is over the limit of {s.max_samples} "
                "(MFDV_MAX_SAMPLES); ask for fewer noise draws"
            )
        budgets = {"eps": float(req.eps or 0.0)}
        if hasattr(req, "hi"):
            budgets["hi"] = float(req.hi)
        for key, value in budgets.items():
            if value > s.max_probe_eps:
                raise ValidationFailed(
                    f"attacks[{i}] ({req.name}): {key}={value:g} is over the limit of {s.max_probe_eps:g} "
                    "(MFDV_MAX_PROBE_EPS); ask for a smaller budget"
                )
    costs = [r.cost(inputs) for r in requests]
    grad = sum(c.gradient for c in costs)
    if grad > s.max_probe_gradient_budget:
        parts = ", ".join(f"{r.name}: {c.gradient}" for r, c in zip(requests, costs, strict=True) if c.gradient)
        raise ValidationFailed(
            f"this probe needs {grad} gradient units (steps x eot x inputs, plus min_eps's judging draws, summed over "
            f"attacks: {parts}), over the "
            f"limit of {s.max_probe_gradient_budget} (MFDV_MAX_PROBE_GRADIENT_BUDGET); use fewer steps, eot draws, "
            "inputs or attacks"
        )
    queries = sum(c.queries for c in costs)
    if queries > s.max_probe_queries:
        raise ValidationFailed(
            f"this probe needs {queries} score units (queries x samples x inputs), over the limit of "
            f"{s.max_probe_queries} (MFDV_MAX_PROBE_QUERIES); use fewer queries, samples or inputs"
        )
    return {"gradient": grad, "queries": queries}


def check_judge_samples(value: int | None, state: AppState) -> int:
    """The request's judging draws, or the default (capped by ``MFDV_MAX_SAMPLES``)."""
    limit = state.settings.max_samples
    if value is None:
        return min(DEFAULT_JUDGE_SAMPLES, limit)
    if not 1 <= value <= limit:
        raise InvalidInput(f"judge_samples must be between 1 and {limit} (MFDV_MAX_SAMPLES); got {value}")
    return value


# -- parsing --------------------------------------------------------------------------------


def parse_json_request(body: bytes) -> ProbeRequest:
    """Parse and validate a JSON body."""
    return parse_json_body(body, ProbeRequest, '{"inputs": [...], "attacks": [{"name": "pgd"}]}')


def _form_value(key: str, text: str) -> Any:
    """A multipart field's text -> the JSON value (``labels`` may also be ``3`` or ``3,1,0``)."""
    if key == "labels" and not text.strip().startswith("["):
        try:
            return [int(v) for v in text.split(",")]
        except ValueError:
            raise InvalidInput(
                f"form field 'labels' must be integers like 3 or 3,1,0 or [3, 1, 0]; got {text!r}"
            ) from None
    if key == "attacks":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise InvalidInput('form field \'attacks\' must be JSON text like [{"name": "pgd", "eps": 0.1}]') from None
    if key == "labels":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise InvalidInput(f"form field 'labels' is not a JSON list: {text!r}") from None
    return text


async def read_form_request(request: Request, state: AppState) -> ProbeRequest:
    """Multipart: ``file`` parts (one image each) and the options as form fields."""
    max_inputs = state.settings.max_probe_inputs
    async with request.form(max_files=max_inputs + 1, max_fields=len(FORM_OPTIONS) + 8) as form:
        unknown = sorted(set(form.keys()) - {"file", *FORM_OPTIONS})
        if unknown:
            raise InvalidInput(
                f"unknown form field(s) {unknown}; send images as `file` parts and options among {list(FORM_OPTIONS)}"
            )
        files = form.getlist("file")
        if not files:
            raise InvalidInput("no `file` part; upload images as `-F file=@image.png` (several allowed)")
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
                options[key] = _form_value(key, values[0])
    return validate_request(ProbeRequest, {"inputs": data, **options})


@dataclass
class PreparedProbe:
    """A checked request, ready to run."""

    request: ProbeRequest
    images: torch.Tensor  # [N, C, H, W]
    labels: torch.Tensor | None  # [N], or None: the clean prediction
    attacks: list[ProbeItem]
    judge_samples: int
    seed: int
    cost: dict[str, int] = field(default_factory=dict)


def prepare_request(raw: bytes | ProbeRequest, source: str, state: AppState, engine: InferenceEngine) -> PreparedProbe:
    """Parse (JSON bytes), check options and caps, decode the inputs: the CPU part, in the thread pool.

    Raises:
        InvalidInput: bad inputs or labels (400).
        ValidationFailed: schema errors, unknown attacks or settings, caps exceeded (422).
    """
    req = parse_json_request(raw) if isinstance(raw, bytes) else raw
    s = state.settings
    n = len(req.inputs)
    if n > s.max_probe_inputs:
        raise ValidationFailed(
            f"{n} inputs in one probe; at most {s.max_probe_inputs} are allowed (MFDV_MAX_PROBE_INPUTS), split the request"
        )
    judge_samples = check_judge_samples(req.judge_samples, state)
    # Not exclude_none: a null setting must reach resolve_attacks (a 422 unless the default is null too).
    specs = [a.model_dump() for a in req.attacks] if req.attacks is not None else list(DEFAULT_ATTACKS)
    try:
        attacks = [a.resolve(engine.input_shape) for a in parse_items(specs)]
    except ValueError as e:
        raise ValidationFailed(str(e)) from None
    cost = check_budget(attacks, max(n, 1), state)
    if req.return_adversarial and engine.input_shape[0] not in (1, 3):
        raise InvalidInput(f"return_adversarial needs 1- or 3-channel inputs; this model takes {engine.input_shape[0]}")
    images = decode_inputs(
        req.inputs, state.input_spec(engine), max_inputs=s.max_probe_inputs, resize=req.resize, name=source
    )
    labels = None
    if req.labels is not None:
        k = len(engine.class_names)
        if len(req.labels) != n:
            raise InvalidInput(f"{len(req.labels)} labels for {n} inputs; give one label per input, or none")
        bad = [v for v in req.labels if not 0 <= v < k]
        if bad:
            raise InvalidInput(f"labels {bad} are not classes of this model; labels must be in [0, {k})")
        labels = torch.tensor(req.labels, dtype=torch.long)
    seed = req.seed if req.seed is not None else random_seed()
    return PreparedProbe(req, images, labels, attacks, judge_samples, seed, cost)


# -- running ----------------------------------------------------------------------------------


def png_base64(image: torch.Tensor) -> str:
    """Pixels [C, H, W] in [0, 1] (C = 1 or 3) -> base64 of an 8-bit PNG."""
    arr = np.round(image.detach().cpu().clamp(0, 1).numpy() * 255).astype(np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class ProbeRun:
    """What the worker thread gives back."""

    report: dict[str, Any]
    labels_given: bool
    partial_reason: str | None
    skipped: list[str]
    started: float  # perf_counter when the worker started
    finished: float


def run_probe(
    model: StochasticClassifier,
    job: PreparedProbe,
    mi_threshold: float,
    deadline: float,
    metrics: Metrics,
    threads: int,
) -> ProbeRun:
    """Run the probe (blocking; in the attack pool): labels, attacks, metrics, images, the deadline.

    ``threads`` sets this worker thread's intra-op CPU threads (OpenMP's setting is per thread,
    so the prediction batcher keeps its own).
    """
    started = time.perf_counter()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    x = job.images.to(model.proj.weight.device)
    y = job.labels  # None: probe() takes the clean majority vote
    images: list[list[str]] = []
    stop: dict[str, Any] = {}

    def after_attack(report: AttackReport, x_adv: torch.Tensor) -> bool:
        successes = sum(r.success for r in report.inputs)
        metrics.attacks.labels(attack=report.name).inc(len(report.inputs))
        metrics.attack_successes.labels(attack=report.name).inc(successes)
        metrics.attack_duration.labels(attack=report.name).observe(report.wall_time_s)
        if job.request.return_adversarial:
            images.append([png_base64(im) for im in x_adv])
        now = time.perf_counter()
        if now > deadline:
            stop["elapsed"] = now
            return True
        return False

    try:
        report = probe(
            model,
            x,
            y,
            job.attacks,
            judge_samples=job.judge_samples,
            seed=job.seed,
            mi_threshold=mi_threshold,
            after_attack=after_attack,
        ).to_dict()
    except ValueError as e:  # a setting the checks above let through: the caller's to fix, not a 500
        raise ValidationFailed(f"the probe rejected its settings: {e}") from None
    done = len(report["attacks"])
    skipped = [a.name for a in job.attacks[done:]]
    reason = None
    if skipped:
        reason = (
            f"wall-time limit reached after {done} of {len(job.attacks)} attacks "
            f"(MFDV_MAX_PROBE_SECONDS); skipped: {skipped}"
        )
    for attack, imgs in zip(report["attacks"], images, strict=False):
        for result, img in zip(attack["inputs"], imgs, strict=True):
            result["adversarial"] = img
    return ProbeRun(report, job.labels is not None, reason, skipped, started, time.perf_counter())


@router.post(
    "/attack-probe",
    summary="Attack the submitted inputs now and report, per input and attack, what happened",
    responses=_ERRORS,
    openapi_extra=_PROBE_BODY,
)
async def attack_probe(request: Request, state: StateDep, engine: EngineDep, _: ApiKeyDep) -> JSONResponse:
    """JSON ``{"inputs": [...], "labels": [...], "attacks": [{"name": "pgd", "eps": 0.1}]}`` or multipart.

    See docs/attack-probe.md for every field, the defaults and the caps.
    """
    arrived = time.perf_counter()
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype in ("application/json", ""):
        body = await request.body()
        job = await run_in_threadpool(prepare_request, body, "inputs", state, engine)
    elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await read_form_request(request, state)
        job = await run_in_threadpool(prepare_request, form, "file", state, engine)
    else:
        raise UnsupportedMediaType(
            f"content type {ctype!r} is not supported; send application/json or multipart/form-data"
        )
    model, pool = state.probe_model, state.attack_pool
    if model is None or pool is None:
        raise ModelNotReady()
    deadline = arrived + state.settings.max_probe_seconds
    run = await pool.run(
        run_probe, model, job, engine.mi_threshold, deadline, state.metrics, state.settings.attack_threads
    )
    report = run.report
    s = state.settings
    body = {
        "model": engine.name,
        "model_id": engine.model_id,
        "partial": run.partial_reason is not None,
        "partial_reason": run.partial_reason,
        "skipped_attacks": run.skipped,
        "request": {
            "inputs": int(job.images.shape[0]),
            "labels": "given" if run.labels_given else "clean_prediction",
            "attacks": [{"name": a.name, "kind": a.kind, "eps": a.eps, **a.settings()} for a in job.attacks],
            "judge_samples": job.judge_samples,
            "seed": job.seed,
            "return_adversarial": job.request.return_adversarial,
            "cost": {
                **job.cost,
                "max_gradient": s.max_probe_gradient_budget,
                "max_queries": s.max_probe_queries,
            },
        },
        **report,
        "timing": {
            "queue_ms": round((run.started - arrived) * 1e3, 3),
            "probe_ms": round((run.finished - run.started) * 1e3, 3),
            "total_ms": round((time.perf_counter() - arrived) * 1e3, 3),
            "limit_s": s.max_probe_seconds,
        },
    }
    return JSONResponse(body)

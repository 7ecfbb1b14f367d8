"""``POST /v1/attack-probe``: attack the submitted inputs on the fly and report what happened.

The route reads the body (``service.edge.transport``), prepares the job (``service.probe.prepare``:
caps checked before anything runs), runs it in the bounded attack pool
(``service.probe.runner``, on a frozen copy of the checkpoint's torch model) and renders
the ``ProbeResponse``.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from functools import partial
from typing import Any, get_args

from fastapi import APIRouter, Request, Response

from ..compute.repository import Serving
from ..deps import ApiKeyDep, AppState, ServingDep, StateDep
from ..edge.openapi import request_body
from ..edge.transport import BodyReader, json_text, read_body
from ..errors import InvalidInput
from ..probe.prepare import prepare_probe
from ..probe.runner import run_probe
from ..schemas import ProbeForm, ProbeRequest, ProbeResponse, error_responses
from ..schemas.limits import PROBE_INPUTS
from ..schemas.probe import ProbeCostOut, ProbeOptions, ProbeRequestOut, ProbeTimingOut, SuiteName

router = APIRouter(prefix="/v1", tags=["attack-probe"])

_INTEGERS = re.compile(r"\s*-?\d+(\s*,\s*-?\d+)*\s*")


def _labels_text(text: str) -> Any:
    """A ``labels`` form field: ``3``, ``3,1,0`` or JSON (``[3, 1, 0]``; ``null``: none)."""
    if _INTEGERS.fullmatch(text):
        try:
            return [int(v) for v in text.split(",")]
        except ValueError:  # a label over Python's int-string limit (4300 digits)
            raise InvalidInput(
                f"form field 'labels' holds an integer of more than {sys.get_int_max_str_digits()} digits; "
                "labels are class indices"
            ) from None
    return json_text("labels", "3 or 3,1,0 or [3, 1, 0]")(text)


def _attacks_text(text: str) -> Any:
    """An ``attacks`` form field: JSON (a list of specs, a suite name in quotes) or a bare suite name."""
    if text.strip() in get_args(SuiteName):
        return text.strip()
    return json_text("attacks", '[{"name": "pgd", "eps": 0.1}] or standard')(text)


PROBE_BODY: BodyReader[ProbeOptions] = BodyReader(
    json_model=ProbeRequest,
    form_model=ProbeForm,
    example='{"inputs": [...], "attacks": [{"name": "pgd"}]}',
    form_values={"labels": _labels_text, "attacks": _attacks_text},
)


_PROBE = dict(
    response_model=ProbeResponse,
    response_model_exclude_unset=True,
    responses=error_responses(
        {
            400: "bad input, label or judge_samples (the message says what to fix)",
            401: "MFDV_API_KEY is set and X-API-Key is missing or wrong",
            404: "the model is not loaded (unknown, unloaded, or failed to load: the message says which)",
            408: "the body did not arrive within MFDV_BODY_TIMEOUT_SECONDS",
            413: "body over MFDV_MAX_BODY_BYTES",
            415: "not JSON or multipart",
            422: "body does not match the schema, or a probe cap exceeded",
            503: "model loading, the attack pool is busy (a place is taken only once the whole body has "
            "arrived), or cut at the end of the shutdown grace period (Retry-After)",
        }
    ),
    openapi_extra=request_body(ProbeRequest, ProbeForm, json_fields=("labels", "attacks")),
)


@router.post(
    "/attack-probe",
    summary="Attack the submitted inputs now on the default model and report, per input and attack, what happened",
    **_PROBE,
)
async def attack_probe(request: Request, state: StateDep, serving: ServingDep, _: ApiKeyDep) -> Response:
    """JSON ``{"inputs": [...], "labels": [...], "attacks": [{"name": "pgd", "eps": 0.1}]}`` or multipart.

    ``attacks`` may also be a suite: ``"standard"``, ``"published"`` or ``"adaptive"``. See docs/attack-probe.md
    for every field, the defaults and the caps.
    """
    return await _probe(request, state, serving)


@router.post(
    "/models/{name}/attack-probe",
    summary="Attack the submitted inputs now on the named model and report, per input and attack, what happened",
    **_PROBE,
)
async def attack_probe_model(
    name: str, request: Request, state: StateDep, serving: ServingDep, _: ApiKeyDep
) -> Response:
    """As ``/v1/attack-probe``, on the model ``name`` of the repository (``GET /v1/models`` lists them)."""
    return await _probe(request, state, serving)


async def _probe(request: Request, state: AppState, serving: Serving) -> Response:
    arrived = time.perf_counter()
    s = state.settings
    engine, cpu, pool = serving.engine, serving.decode_pool, serving.attack_pool
    prepare = partial(prepare_probe, settings=s, spec=serving.input_spec, num_classes=len(engine.class_names))
    cancel = threading.Event()  # set when this request is cancelled (client gone, grace period over)
    # The whole body has arrived (the edge reads it first: middleware.BodyLimits) before this route runs: a client that stalls its
    # body never holds a pool place.
    with pool.reserve() as slot:
        job = await read_body(
            request,
            PROBE_BODY,
            max_files=PROBE_INPUTS.maximum(s),
            then=prepare,
            pool=cpu,
            context=state.validation,
        )
        run = await slot.run(
            run_probe,
            serving.probe_model,
            job,
            mi_threshold=engine.mi_threshold,
            flag=engine.flag,
            deadline=arrived + s.max_probe_seconds,
            limit_s=s.max_probe_seconds,
            metrics=state.metrics,
            model_name=serving.name,
            threads=s.attack_threads,
            cancelled=cancel,
            shutdown_deadline=state.lifecycle.answers_due,
            cancel=cancel,
        )
    report = run.report
    response = ProbeResponse(
        model=serving.name,
        model_id=engine.model_id,
        partial=run.partial_reason is not None,
        partial_reason=run.partial_reason,
        skipped_attacks=run.skipped,
        request=ProbeRequestOut(
            inputs=int(job.images.shape[0]),
            labels="given" if job.labels is not None else "clean_prediction",
            attacks=[{"name": a.name, "kind": a.kind, "eps": a.eps, **a.settings()} for a in job.items],
            judge_samples=job.judge_samples,
            seed=job.seed,
            return_adversarial=job.return_adversarial,
            cost=ProbeCostOut(
                gradient=job.cost.gradient,
                queries=job.cost.queries,
                max_gradient=s.max_probe_gradient_budget,
                max_queries=s.max_probe_queries,
            ),
        ),
        seed=report.seed,
        judge_samples=report.judge_samples,
        mi_threshold=report.mi_threshold,
        flag=report.flag,
        clean=report.clean,
        attacks=report.attacks,
        summary=report.summary,
        timing=ProbeTimingOut(
            queue_ms=round((run.started - arrived) * 1e3, 3),
            probe_ms=round((run.finished - run.started) * 1e3, 3),
            total_ms=round((time.perf_counter() - arrived) * 1e3, 3),
            limit_s=s.max_probe_seconds,
        ),
    )
    body = await cpu.run(response.model_dump_json, exclude_unset=True)  # images and reports: not on the loop
    return Response(body, media_type="application/json")

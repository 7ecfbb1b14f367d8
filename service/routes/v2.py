"""Open Inference Protocol v2 (KServe / Triton), with the binary tensor data extension.

Stock clients (``tritonclient.http``, KServe) work against these routes. The model
takes one input ``image`` ([B,C,H,W] FP32 pixels in [0, 1], or UINT8 0..255) and
answers ``probs``, ``label``, ``class_name``, ``predictive_entropy``,
``expected_entropy``, ``mutual_information``, ``vote_agreement``, ``top_prob_stderr``
and ``flagged``. Request ``parameters`` may carry ``samples`` and ``seed``; the
response's ``parameters`` say which were used. Errors are ``{"error": "..."}``.

Binary extension: with an ``Inference-Header-Content-Length`` header the body is that
many bytes of JSON followed by raw tensors (``parameters.binary_data_size`` each, in
input order); outputs asked for with ``binary_data`` (or all of them, with the
request parameter ``binary_data_output``) come back the same way.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from ..compute.engine import MAX_SEED, InferenceEngine, PredictJob, PredictOutput, random_seed
from ..compute.inputs import InputSpec, check_batch
from ..compute.repository import Serving
from ..config import Settings
from ..deps import AppState, ServingDep, StateDep, app_state
from ..edge.admission import admission_controlled
from ..edge.openapi import request_body
from ..edge.transport import holds_booleans, integral_numbers, loads_json
from ..errors import InvalidInput, PayloadTooLarge, describe_validation_errors
from ..schemas import error_responses, json_bytes
from ..schemas.limits import INPUTS, SAMPLES, OutOfRange, env_name, validation_context
from ..schemas.v2 import (
    DTYPES,
    INPUT_NAME,
    OUTPUTS,
    InferenceRequest,
    InferenceResponse,
    InferInput,
    ModelMetadata,
    ModelReady,
    RequestParameters,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from ..version import __version__

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

HEADER_LENGTH = "inference-header-content-length"
# integer datatypes: the inclusive range their JSON values must lie in
INT_RANGES: dict[str, tuple[int, int]] = {"UINT8": (0, 255)}
_NOT_READY = {503: "model not ready, or shutting down (Retry-After)"}
_UNKNOWN = {404: "unknown model or version"}
_INFER_ERRORS = {
    400: "bad request: tensor, datatype, shape, parameters or outputs (the message says what to fix)",
    408: "the body did not arrive within MFDV_BODY_TIMEOUT_SECONDS",
    413: "body over MFDV_MAX_BODY_BYTES (after decompression)",
}


@router.get("", summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="mfdv-snn", version=__version__, extensions=["binary_tensor_data", "model_repository"])


@router.get("/health/live", summary="Server live")
async def live() -> ServerLive:
    return ServerLive(live=True)


@router.get("/health/ready", summary="Server ready (else 503)", responses=error_responses(_NOT_READY))
async def ready(state: StateDep) -> ServerReady:
    """The server takes requests: its repository is loaded and it is not shutting down (each model's own
    readiness: ``/v2/models/{name}/ready``)."""
    state.accepting()
    return ServerReady(ready=True)


def model_metadata(serving: Serving) -> dict[str, Any]:
    engine = serving.engine
    c, h, w = engine.input_shape
    k = len(engine.class_names)
    return {
        "name": serving.name,
        "versions": [serving.version],
        "platform": "onnxruntime_onnx" if engine.backend.name == "onnx" else "pytorch_libtorch",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [
            {"name": n, "datatype": dt, "shape": [-1, k] if per_class else [-1]}
            for n, (dt, per_class) in OUTPUTS.items()
        ],
        "parameters": {"model_id": engine.model_id, "class_names": engine.class_names},
    }


@router.get("/models/{name}", summary="Model metadata", responses=error_responses({**_UNKNOWN, **_NOT_READY}))
async def metadata(name: str, serving: ServingDep) -> ModelMetadata:
    return ModelMetadata.model_validate(model_metadata(serving))


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata",
    responses=error_responses({**_UNKNOWN, **_NOT_READY}),
)
async def metadata_version(name: str, version: str, serving: ServingDep) -> ModelMetadata:
    return ModelMetadata.model_validate(model_metadata(serving))


@router.get(
    "/models/{name}/ready",
    summary="Model ready (else 503, or 404 when not loaded)",
    responses=error_responses({**_UNKNOWN, **_NOT_READY}),
)
async def model_ready(name: str, state: StateDep) -> ModelReady:
    return ModelReady(name=state.readiness(name).name, ready=True)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model ready (else 503, or 404 when not loaded)",
    responses=error_responses({**_UNKNOWN, **_NOT_READY}),
)
async def model_version_ready(name: str, version: str, state: StateDep) -> ModelReady:
    return ModelReady(name=state.readiness(name, version).name, ready=True)


# -- inference ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferRequest:
    """A parsed v2 inference request."""

    images: np.ndarray  # (B, C, H, W) float32
    samples: int
    seed: int
    outputs: list[tuple[str, bool]]  # (name, binary)
    request_id: str | None


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip/deflate bodies (tritonclient's request compression), bounded by ``limit`` bytes."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidInput(f"the {encoding} body cannot be decompressed: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes; send fewer inputs")
    return out


def _json_values(data: Any, dtype_name: str, dtype: np.dtype[Any]) -> np.ndarray:
    """``data`` (nested JSON numbers) -> a flat array of ``dtype``; integer types are range-checked."""
    what = f"input {INPUT_NAME!r}: `data`"
    try:
        raw = np.asarray(data)
        if raw.dtype.kind not in "iuf" or holds_booleans(data):  # strings, objects, ragged, booleans
            raise ValueError
        wide = raw.astype(np.float64).ravel()
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(f"{what} must be numbers (nested lists allowed) of datatype {dtype_name}") from None
    if dtype_name not in INT_RANGES:
        return wide.astype(dtype)
    lo, hi = INT_RANGES[dtype_name]
    if not np.all(np.isfinite(wide)) or np.any(wide != np.floor(wide)):
        raise InvalidInput(f"{what} must be whole numbers for datatype {dtype_name} (in {lo}..{hi})")
    if wide.size and (wide.min() < lo or wide.max() > hi):
        raise InvalidInput(
            f"{what} has values in [{wide.min():g}, {wide.max():g}] but {dtype_name} must be in {lo}..{hi}"
        )
    # exact: every integer in range of UINT8 (and up to 2**53) is exact in float64
    return wide.astype(dtype)


def _tensor(spec: InferInput, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One validated input tensor -> (array, new binary offset): its values, from ``data`` or the binary part."""
    shape, dtype_name = spec.shape, spec.datatype
    dtype = DTYPES[dtype_name]
    count = math.prod(shape)  # exact Python ints: no wrap-around (math.prod([]) == 1)
    size = spec.parameters.binary_data_size if spec.parameters is not None else None
    if size is not None:
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"input {INPUT_NAME!r}: binary_data_size is {size} bytes but shape {shape} of {dtype_name} "
                f"needs {count * dtype.itemsize}"
            )
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {INPUT_NAME!r} declares {size} binary bytes but only {len(binary) - offset} follow the "
                "JSON header; check Inference-Header-Content-Length"
            )
        arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
        offset += size
    else:
        if "data" not in spec.model_fields_set:
            raise InvalidInput(f"input {INPUT_NAME!r} has neither `data` nor parameters.binary_data_size")
        arr = _json_values(spec.data, dtype_name, dtype)
        if arr.size != count:
            raise InvalidInput(f"input {INPUT_NAME!r}: `data` has {arr.size} values but shape {shape} needs {count}")
    try:
        arr = arr.reshape(shape)
    except ValueError as e:  # e.g. a zero-sized shape with a dimension too large for numpy
        raise InvalidInput(f"input {INPUT_NAME!r}: shape {shape} is not usable ({e}); send [B, C, H, W]") from None
    if dtype_name == "UINT8":
        return arr.astype(np.float32) / 255.0, offset
    return arr, offset


def _integral_header(req: dict[str, Any]) -> dict[str, Any]:
    """The header with integral floats as ints (``shape: [1.0, 1, 14, 14]`` is a shape), tensor data aside."""
    out = {k: v if k == "inputs" else integral_numbers(v) for k, v in req.items()}
    inputs = req.get("inputs")
    if isinstance(inputs, list):
        out["inputs"] = [
            {k: v if k == "data" else integral_numbers(v) for k, v in t.items()} if isinstance(t, dict) else t
            for t in inputs
        ]
    return out


def _item(req: dict[str, Any], key: str, index: int) -> dict[str, Any]:
    """``req[key][index]`` if it is an object, else ``{}`` (for messages)."""
    items = req.get(key)
    item = items[index] if isinstance(items, list) and index < len(items) else None
    return item if isinstance(item, dict) else {}


def protocol_message(error: dict[str, Any], req: dict[str, Any], settings: Settings) -> str:
    """An ``InferenceRequest`` validation error in the protocol's words: what to send instead."""
    loc, kind = error["loc"], error["type"]
    if loc[0] == "inputs":
        spec = _item(req, "inputs", 0)
        field = loc[2] if len(loc) > 2 else None
        if field == "name":
            return f"unknown input {spec.get('name')!r}; this model's only input is {INPUT_NAME!r}"
        if field == "shape":
            shape = spec.get("shape")
            if kind == "too_long" and isinstance(shape, list):
                return f"input {INPUT_NAME!r} has {len(shape)} dimensions; send [B, C, H, W]"
            return f"input {INPUT_NAME!r} needs a shape: a list of non-negative integers; got {shape!r}"
        if field == "datatype":
            return (
                f"input {INPUT_NAME!r} has datatype {spec.get('datatype')!r}; send FP32 pixels in [0, 1] "
                f"(or UINT8 0..255; one of {sorted(DTYPES)}, as a string)"
            )
        if field == "parameters":
            size = (spec.get("parameters") or {}).get("binary_data_size")
            return f"binary_data_size must be a non-negative integer; got {size!r}"
        return f"send exactly one input, named {INPUT_NAME!r}"
    if loc[0] == "parameters":
        if len(loc) == 1:
            return "`parameters` must be a JSON object"
        key = str(loc[1])
        value = req["parameters"].get(key)
        if key == "binary_data_output":
            return f"parameter {key!r} must be a JSON boolean (true or false); got {value!r}"
        lo, hi = (0, MAX_SEED) if key == "seed" else (SAMPLES.minimum, SAMPLES.maximum(settings))
        if kind in ("greater_than_equal", "less_than_equal"):
            return f"parameter {key!r} must be in [{lo}, {hi}]; got {value!r}"
        return f"parameter {key!r} must be an integer in [{lo}, {hi}]; got {value!r}"
    if loc[0] == "outputs":
        if len(loc) < 3:
            return '`outputs` must be a list of {"name": ...} objects'
        output = _item(req, "outputs", int(loc[1]))
        name = output.get("name")
        if loc[2] == "name":
            return f"unknown output {name!r}; give a name string among {list(OUTPUTS)}"
        if len(loc) == 3:
            return f"output {name!r}: `parameters` must be a JSON object; got {output.get('parameters')!r}"
        value = (output.get("parameters") or {}).get("binary_data")
        return f"output {name!r} parameter 'binary_data' must be a JSON boolean (true or false); got {value!r}"
    if loc[0] == "id":
        return f"`id` must be a string; got {req.get('id')!r}"
    return describe_validation_errors([error])


def parse_header(head: bytes, settings: Settings) -> InferenceRequest:
    """The inference header (the JSON body, or the JSON before binary tensors), validated.

    Raises:
        InvalidInput: not JSON, not the contract, or a parameter out of range (400, the protocol's words).
    """
    try:
        req = loads_json(head, "the inference header")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the inference header is not valid JSON ({e})") from None
    except RecursionError:
        raise InvalidInput("the inference header nests JSON too deeply; send flat or [B, C, H, W] data") from None
    if not isinstance(req, dict):
        raise InvalidInput('the inference request must be a JSON object with "inputs"')
    req = _integral_header(req)
    if not req.get("parameters"):  # absent, null or empty: no parameters (as the protocol's clients send them)
        req.pop("parameters", None)
    try:
        return InferenceRequest.model_validate(req, strict=True, context=validation_context(settings))
    except OutOfRange as e:
        raise InvalidInput(
            f"parameter {e.limit.name!r} must be in [{e.limit.minimum}, {e.maximum}] "
            f"({env_name(e.limit.setting)}); got {e.value}"
        ) from None
    except ValidationError as e:
        raise InvalidInput(protocol_message(e.errors()[0], req, settings)) from None


def parse_infer(body: bytes, header_length: str | None, state: AppState, spec: InputSpec) -> InferRequest:
    """Parse and validate a v2 inference body (JSON, or JSON + binary tensors)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"Inference-Header-Content-Length must be an integer; got {header_length[:40]!r}"
            ) from None
        if not 0 < n <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    req = parse_header(head, state.settings)
    arr, used = _tensor(req.inputs[0], binary, 0)
    if used != len(binary):
        raise InvalidInput(f"{len(binary) - used} binary bytes follow the header but no input declares them")
    images = check_batch(arr, spec, f"input {INPUT_NAME!r}", INPUTS.maximum(state.settings))
    params = req.parameters or RequestParameters.model_validate({}, context=state.validation)
    binary_default = bool(params.binary_data_output)
    if req.outputs is None:
        outputs = [(name, binary_default) for name in OUTPUTS]
    else:
        outputs = [
            (
                o.name,
                binary_default
                if o.parameters is None or o.parameters.binary_data is None
                else o.parameters.binary_data,
            )
            for o in req.outputs
        ]
    assert params.samples is not None  # filled in by validation (service.schemas.limits.Samples)
    return InferRequest(
        images=images,
        samples=params.samples,
        seed=params.seed if params.seed is not None else random_seed(),
        outputs=outputs,
        request_id=req.id,
    )


def _output_values(name: str, engine: InferenceEngine, u: Any) -> np.ndarray:
    if name == "probs":
        return u.mean_probs.numpy().astype(np.float32)
    if name == "label":
        return u.label.numpy().astype(np.int64)
    if name == "class_name":
        return np.array([engine.class_names[i] for i in u.label.tolist()], dtype=object)
    if name == "flagged":
        return np.array(engine.flagged(u), dtype=np.bool_)
    return getattr(u, name).numpy().astype(np.float32)


def _binary(values: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (str(s).encode() for s in values.ravel()))
    if datatype == "BOOL":
        return values.astype(np.bool_).tobytes()
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()


def _json_data(values: np.ndarray, datatype: str) -> Any:
    """Flat JSON data: numbers as a numpy array (``json_bytes`` writes it), strings as a list."""
    flat = np.ascontiguousarray(values.ravel())
    if datatype == "BYTES":
        return [str(s) for s in flat]
    return flat


_INFER = {
    "summary": "Inference (JSON, or JSON + binary tensors)",
    "description": "The body is `InferenceRequest` as JSON. Binary tensor extension: with the header "
    "`Inference-Header-Content-Length: N` the body is N bytes of that JSON followed by the raw little-endian "
    "tensors (each input declares `parameters.binary_data_size`); outputs asked for with `binary_data` "
    "come back the same way (`application/octet-stream`, same header).",
    "response_class": Response,
    "responses": {
        200: {
            "description": "The outputs: JSON, or JSON + binary tensors when any output is binary",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(
            {
                **_INFER_ERRORS,
                **_UNKNOWN,
                503: "model not ready, refused by admission before the body was read (MFDV_MAX_INFLIGHT, "
                "MFDV_MAX_QUEUE_DELAY_MS), queue full, or cut at the end of the shutdown grace period (Retry-After)",
            }
        ),
    },
    "openapi_extra": request_body(InferenceRequest, components=(InferenceResponse,)),
}


@router.post("/models/{name}/infer", **_INFER)
@admission_controlled
async def infer(name: str, request: Request) -> Response:
    state = app_state(request)  # not StateDep/ServingDep: the hot path skips FastAPI's dependency resolution
    with state.serve(name) as serving:
        return await _infer(request, state, serving)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)
@admission_controlled
async def infer_version(name: str, version: str, request: Request) -> Response:
    state = app_state(request)
    with state.serve(name, version) as serving:
        return await _infer(request, state, serving)


async def _infer(request: Request, state: AppState, serving: Serving) -> Response:
    engine = serving.engine
    body = await request.body()
    encoding = request.headers.get("content-encoding", "").strip().lower()
    req = await serving.decode_pool.run(
        lambda: parse_infer(
            _decompress(body, encoding, state.settings.max_body_bytes),
            request.headers.get(HEADER_LENGTH),
            state,
            serving.input_spec,
        )
    )
    images = torch.from_numpy(np.array(req.images, dtype=np.float32, order="C"))
    # the compute thread writes the response with the batch's results, off the event loop
    job = PredictJob(images, req.samples, req.seed, render=partial(infer_response, serving, req))
    out = await engine.predict(job)
    serving.metrics.samples.observe(req.samples)
    for v in out.result.uncertainty.mutual_information.tolist():
        serving.metrics.mutual_information.observe(v)
    return out.result.body


def infer_response(serving: Serving, req: InferRequest, job: PredictJob, output: PredictOutput) -> Response:
    """The v2 response: JSON, or JSON + binary tensors when any output is binary."""
    engine = serving.engine
    u = output.uncertainty
    outputs, chunks = [], []
    for oname, binary in req.outputs:
        datatype = OUTPUTS[oname][0]
        values = _output_values(oname, engine, u)
        entry: dict[str, Any] = {"name": oname, "datatype": datatype, "shape": list(values.shape)}
        if binary:
            raw = _binary(values, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(values, datatype)
        outputs.append(entry)
    resp: dict[str, Any] = {
        "model_name": serving.name,
        "model_version": serving.version,
        "parameters": {"samples": req.samples, "seed": req.seed, "model_id": engine.model_id},
        "outputs": outputs,
    }
    if req.request_id is not None:
        resp["id"] = req.request_id
    head = json_bytes(resp)
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )

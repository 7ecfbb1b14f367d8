"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.integration.schemathesis_hooks``): what JSON Schema
cannot say about this API, told to the generator. Nothing here touches the checks or negative cases.

- Formats: a multipart ``file`` part (``format: binary``) and a base64 input (``format: byte``) hold
  PNG images; the generator makes real ones, of the served model's size (``IMAGE``).
- Multipart probe cases with ``[]`` in a JSON field are dropped: the client sends no part for an
  empty list, so the server sees the field absent (its default), not ``[]``.
- Positive cases only, for rules that relate two fields (JSON Schema cannot):
  ``/v1/attack-probe`` (and ``/v1/models/{name}/attack-probe``): one label per input (labels are trimmed or repeated to the inputs' count),
  and the whole request within the probe caps (cases over them are dropped: the server refuses
  them by design, with 422, and the cost formula is the attacks' own, ``spec.cost``);
  ``/v2/.../infer``: ``data`` holds ``prod(shape)`` values (the shape is kept, the data refitted).
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

from models.attacks import AttackSpec  # noqa: F401  (registers every attack)
from service.config import Settings
from service.errors import ServiceError
from service.probe.caps import check_caps
from service.probe.prepare import resolve_items
from service.schemas.limits import validation_context
from service.schemas.probe import ProbeOptions

IMAGE = (1, 14, 14)
"""(C, H, W) of the served model (the hand-set test model)."""


def _png(pixels: bytes) -> bytes:
    c, h, w = IMAGE
    arr = np.frombuffer(pixels, np.uint8).reshape(h, w, c)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if c == 1 else arr).save(buf, "PNG")
    return buf.getvalue()


_PNGS = st.binary(min_size=math.prod(IMAGE), max_size=math.prod(IMAGE)).map(_png)
schemathesis.openapi.format("binary", _PNGS)
schemathesis.openapi.format("byte", _PNGS.map(lambda b: base64.b64encode(b).decode()))


def _positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _caps() -> Settings:
    """The server's caps: the test starts it with these ``MFDV_*`` variables (read here from the environment)."""
    return Settings()


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if not _positive(case) or not isinstance(case.body, dict):
        return case
    path = context.operation.path if context.operation is not None else ""
    body = case.body
    if path.endswith("/attack-probe"):
        inputs = body.get("inputs", body.get("file")) or []
        labels = body.get("labels")
        if isinstance(labels, list) and inputs:
            body["labels"] = [labels[i % len(labels)] if labels else 0 for i in range(len(inputs))]
    elif path.endswith("/infer"):
        for tensor in body.get("inputs") or []:
            if isinstance(tensor, dict) and isinstance(tensor.get("shape"), list):
                n = int(math.prod(tensor["shape"]))
                value = 1 if tensor.get("datatype") == "UINT8" else 0.5
                tensor["data"] = [value] * n
    return case


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """Drop positive probe cases the caps refuse (422 by design), and multipart cases with an empty list
    in a JSON field: the client sends no part for it, which is the field's absence, not ``[]``."""
    path = context.operation.path if context.operation is not None else ""
    if not path.endswith("/attack-probe") or not isinstance(case.body, dict):
        return True
    if "file" in case.body and any(case.body.get(k) == [] for k in ("labels", "attacks")):
        return False
    if not _positive(case):
        return True
    body = case.body
    inputs = body.get("inputs", body.get("file")) or []
    try:
        fields = {k: v for k, v in body.items() if k in ProbeOptions.model_fields}
        options = ProbeOptions.model_validate(fields, context=validation_context(_caps()))
        check_caps(resolve_items(options.attacks, IMAGE), max(len(inputs), 1), _caps())
    except (ServiceError, ValueError):
        return False
    return True

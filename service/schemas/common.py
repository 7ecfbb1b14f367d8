"""Types every schema module shares: the error body, uploaded images, seeds, and writing JSON."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import UploadFile
from pydantic import BaseModel, Field, WithJsonSchema

from ..compute.engine import MAX_SEED

IMAGE_MEDIA_TYPES = "image/png, image/jpeg"
"""What a ``file`` part (or a base64 input) may hold."""

ImageFile = Annotated[
    UploadFile,
    WithJsonSchema({"type": "string", "format": "binary", "description": "A PNG or JPEG image."}),
]
"""One uploaded image (a multipart ``file`` part)."""

Seed = Annotated[
    int | None,
    Field(ge=0, le=MAX_SEED, description="Noise seed; absent: a random one, returned (same seed, same answer)."),
]


def form_fields_are_text(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of a multipart model: a form field is absent or has a value, never null.

    The model takes None for an absent field; the document should not offer ``null`` as a value.
    """
    for prop in schema.get("properties", {}).values():
        branches = [b for b in prop.get("anyOf", ()) if b.get("type") != "null"]
        if "anyOf" in prop and len(branches) < len(prop["anyOf"]):
            del prop["anyOf"]
            if len(branches) == 1:
                prop.update(branches[0])
            else:
                prop["anyOf"] = branches
        if prop.get("default", 0) is None:
            del prop["default"]


class ErrorResponse(BaseModel):
    """Every error, on every route: ``{"error": "what to fix"}``."""

    error: str


def json_bytes(content: Any) -> bytes:
    """``content`` as compact JSON; numpy arrays and scalars written natively (float32 as the shortest
    decimal that round-trips it: a pure function of the bits, so equal arrays give equal bytes).

    The routes' hot path (orjson: no pydantic validation pass, no Python loop over the floats); the
    response models still describe what it writes in the OpenAPI document.
    """
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status with its description and the error body's schema."""
    return {code: {"model": ErrorResponse, "description": text} for code, text in descriptions.items()}

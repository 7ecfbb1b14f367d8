"""The OpenAPI document, generated: FastAPI's, plus the request bodies of the routes that read their own.

``/v1/predict`` and ``/v1/attack-probe`` take JSON or multipart on one path, which FastAPI's
parameters cannot declare together, so those routes read the body themselves
(``service.transport``) and declare it with ``request_body(...)``: ``$ref``s to their request
models, whose schemas are generated here from the models and registered as components.

A deployment's limits are part of its contract: the document states them from the app's
``Settings`` and the served model (``samples`` up to ``MFDV_MAX_SAMPLES``, at most
``MFDV_MAX_INPUTS`` images, pixel arrays and v2 tensor shapes of the model's shape, labels below
the number of classes, ``eps`` up to ``MFDV_MAX_PROBE_EPS``...): the same settings the routes
check against. ``tests/integration/test_schemathesis.py`` checks the server against it.
The document is built once the model is loaded (before that, without the model's shape).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .engine import InferenceEngine
from .schemas.common import IMAGE_MEDIA_TYPES

if TYPE_CHECKING:
    from .deps import AppState

REF = "#/components/schemas/{model}"
_REQUEST_MODELS: dict[str, type[BaseModel]] = {}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    if _REQUEST_MODELS.setdefault(model.__name__, model) is not model:
        raise ValueError(f"two request models are named {model.__name__}")
    return {"$ref": REF.format(model=model.__name__)}


def request_body(
    json_model: type[BaseModel] | None = None,
    form_model: type[BaseModel] | None = None,
    *,
    json_fields: tuple[str, ...] = (),
    components: tuple[type[BaseModel], ...] = (),
) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its body itself: the body's media types and models.

    Args:
        json_model: the ``application/json`` body.
        form_model: the ``multipart/form-data`` body (``file`` parts are images).
        json_fields: form fields sent as JSON text.
        components: more models to register (e.g. a response the route writes itself).
    """
    for model in components:
        _ref(model)
    content: dict[str, Any] = {}
    if json_model is not None:
        content["application/json"] = {"schema": _ref(json_model)}
    if form_model is not None:
        encoding: dict[str, Any] = {"file": {"contentType": IMAGE_MEDIA_TYPES}}
        encoding.update({name: {"contentType": "application/json"} for name in json_fields})
        content["multipart/form-data"] = {"schema": _ref(form_model), "encoding": encoding}
    return {"requestBody": {"required": True, "content": content}}


def install_openapi(app: FastAPI, state: AppState) -> None:
    """Make ``app.openapi()`` (``/openapi.json``, ``/docs``) the document described above."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        _, defs = models_json_schema([(m, "validation") for m in _REQUEST_MODELS.values()], ref_template=REF)
        for name, schema in defs.get("$defs", {}).items():
            if name in schemas and schemas[name] != schema:
                raise ValueError(f"component {name!r} is generated twice, differently")
            schemas[name] = schema
        _validation_errors_are_error_bodies(doc)
        engine = state.engine
        apply_limits(schemas, state, engine)
        if engine is not None:
            app.openapi_schema = doc  # complete: cache it
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _validation_errors_are_error_bodies(doc: dict[str, Any]) -> None:
    """FastAPI documents 422 as its ``HTTPValidationError``; this app answers ``{"error": ...}`` (``service.errors``)."""
    error = {"$ref": REF.format(model="ErrorResponse")}
    for operations in doc.get("paths", {}).values():
        for op in operations.values():
            response = op.get("responses", {}).get("422")
            if response is None:
                continue
            for media in response.get("content", {}).values():
                if media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    media["schema"] = error
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


# -- a deployment's limits ----------------------------------------------------------------


def _value_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of ``X | None`` (or the schema itself)."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch
    return prop


def _set(schemas: dict[str, Any], model: str, prop: str, **bounds: Any) -> None:
    """Set keywords on ``model.prop`` (its non-null branch), when the component has that property."""
    target = schemas.get(model, {}).get("properties", {}).get(prop)
    if target is not None:
        _value_schema(target).update(bounds)


def pixel_array(dims: tuple[int, ...]) -> dict[str, Any]:
    """A nested array of exactly ``dims`` of numbers in [0, 1]."""
    schema: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
    for d in reversed(dims):
        schema = {"type": "array", "items": schema, "minItems": d, "maxItems": d}
    return schema


def input_item(shape: tuple[int, int, int]) -> dict[str, Any]:
    """One JSON input for a model of ``shape`` (C, H, W)."""
    c, h, w = shape
    arrays = [pixel_array((c, h, w))] + ([pixel_array((h, w))] if c == 1 else [])
    image = {
        "type": "string",
        "format": "byte",
        "description": f"Base64 of a {w}x{h} PNG or JPEG file (a data: URL too; other sizes with resize=true).",
    }
    return {"anyOf": [*arrays, image]}


def apply_limits(schemas: dict[str, Any], state: AppState, engine: InferenceEngine | None) -> None:
    """Write the deployment's limits into the request components (see the module docstring)."""
    s = state.settings
    samples = {"minimum": 1, "maximum": s.max_samples}
    for model, most in (("PredictRequest", s.max_inputs), ("ProbeRequest", s.max_probe_inputs)):
        _set(schemas, model, "inputs", minItems=1, maxItems=most)
    for model, most in (("PredictForm", s.max_inputs), ("ProbeForm", s.max_probe_inputs)):
        _set(schemas, model, "file", minItems=1, maxItems=most)
    for model in ("PredictRequest", "PredictForm"):
        _set(schemas, model, "samples", **samples)
    for model in ("ProbeRequest", "ProbeForm"):
        _set(schemas, model, "judge_samples", **samples)
        _set(schemas, model, "labels", maxItems=s.max_probe_inputs)
    _set(schemas, "RequestParameters", "samples", **samples)
    for name, schema in schemas.items():  # every attack spec and the suite spec
        props = schema.get("properties", {})
        if name == "SuiteSpec" or ("name" in props and "const" in props["name"] and "eps" in props):
            _set(schemas, name, "eps", maximum=s.max_probe_eps)
            _set(schemas, name, "hi", maximum=s.max_probe_eps)
            _set(schemas, name, "samples", maximum=s.max_samples)
    if engine is None:
        return
    item = input_item(engine.input_shape)
    for model in ("PredictRequest", "ProbeRequest"):
        _set(schemas, model, "inputs", items=item)
    shape = schemas.get("InferInput", {}).get("properties", {}).get("shape")
    if shape is not None:
        c, h, w = engine.input_shape
        batch = {"type": "integer", "minimum": 1, "maximum": s.max_inputs}
        dims = [[batch, {"const": c}, {"const": h}, {"const": w}]] + (
            [[batch, {"const": h}, {"const": w}]] if c == 1 else []
        )
        for key in ("items", "maxItems", "type"):
            shape.pop(key, None)
        shape["anyOf"] = [
            {"type": "array", "prefixItems": d, "items": False, "minItems": len(d), "maxItems": len(d)} for d in dims
        ]
    k = len(engine.class_names)
    for model in ("ProbeRequest", "ProbeForm"):
        labels = schemas.get(model, {}).get("properties", {}).get("labels")
        if labels is not None:
            _value_schema(labels)["items"] = {"type": "integer", "minimum": 0, "maximum": k - 1}

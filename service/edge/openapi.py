"""The OpenAPI document, generated: FastAPI's, plus the request bodies of the routes that read their own.

``/v1/predict`` and ``/v1/attack-probe`` take JSON or multipart on one path, which FastAPI's
parameters cannot declare together, so those routes read the body themselves
(``service.edge.transport``) and declare it with ``request_body(...)``: ``$ref``s to their request
models, whose schemas are generated here from the models and registered as components.

A deployment's limits are part of its contract: the request models' fields carry them as
annotated types (``service.schemas.limits``: ``samples`` up to ``MFDV_MAX_SAMPLES``, at most
``MFDV_MAX_INPUTS`` images, pixel arrays and v2 tensor shapes of the model's shape, labels below
the number of classes, ``eps`` up to ``MFDV_MAX_PROBE_EPS``...), and their schemas are generated
with the app's ``Settings`` and served model (``DeploymentJsonSchema``): the same settings the
routes validate with. ``tests/integration/test_schemathesis.py`` checks the server against it.
The document is cached once the model is loaded (before that, it lacks the model's shape).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..errors import ServiceError
from ..schemas.common import IMAGE_MEDIA_TYPES
from ..schemas.limits import Deployment, DeploymentJsonSchema

if TYPE_CHECKING:
    from ..compute.engine import InferenceEngine
    from ..deps import AppState

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
        engine = _default_engine(state)  # the default model's shape, once loaded
        deployment = Deployment(
            state.settings,
            engine.input_shape if engine is not None else None,
            len(engine.class_names) if engine is not None else None,
        )
        _, defs = models_json_schema(
            [(m, "validation") for m in _REQUEST_MODELS.values()],
            ref_template=REF,
            schema_generator=DeploymentJsonSchema.for_deployment(deployment),
        )
        for name, schema in defs.get("$defs", {}).items():
            if name in schemas and schemas[name] != schema:
                raise ValueError(f"component {name!r} is generated twice, differently")
            schemas[name] = schema
        _validation_errors_are_error_bodies(doc)
        if engine is not None:
            app.openapi_schema = doc  # complete: cache it
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _default_engine(state: AppState) -> InferenceEngine | None:
    """The default model's engine once it serves: the shapes and classes the document shows (the routes
    that name a model check its own)."""
    try:
        return state.ready().engine
    except ServiceError:
        return None


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

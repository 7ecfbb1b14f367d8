"""Domain exceptions and their HTTP mapping, in one place.

Route code raises these (never a bare ``HTTPException`` for a domain problem);
``install_error_handlers`` turns them into responses. Every error body has the one
shape the Open Inference Protocol (and tritonclient) expects: ``{"error": "..."}``.
Unexpected exceptions are logged with their traceback and answered with a generic
500 that carries no internals (``service.edge.middleware.EdgeMiddleware``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors a client can be told about.

    Attributes:
        status_code: HTTP status the error maps to.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    status_code = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class InvalidInput(ServiceError):  # noqa: N818  (KServe's names)
    """The request is well-formed but its content is wrong (shape, range, image, option)."""

    status_code = 400


class ValidationFailed(InvalidInput):
    """The request body does not match the schema (unknown field, wrong type)."""

    status_code = 422


class UnsupportedMediaType(InvalidInput):
    """The body's content type is not one the route reads."""

    status_code = 415


class Unauthorized(ServiceError):  # noqa: N818  (KServe's names)
    """A protected route was called without the right API key (401 with ``WWW-Authenticate``, RFC 9110)."""

    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'})


class NotFound(ServiceError):  # noqa: N818  (KServe's names)
    """An unknown model name or version."""

    status_code = 404


class Conflict(ServiceError):  # noqa: N818  (KServe's names)
    """The request conflicts with the server's state (e.g. too many models loaded to load one more)."""

    status_code = 409


class LoadFailed(InvalidInput):
    """A model version failed to load (missing, altered or inconsistent checkpoint): 400, as Triton answers a
    failed load; what was serving keeps serving."""


class RequestTimeout(ServiceError):  # noqa: N818  (KServe's names)
    """The body did not arrive within ``body_timeout_seconds``."""

    status_code = 408


class PayloadTooLarge(ServiceError):  # noqa: N818  (KServe's names)
    """The body is over ``max_body_bytes``."""

    status_code = 413


class ModelNotReady(ServiceError):  # noqa: N818  (KServe's names)
    """The model is not loaded (yet) or the service is shutting down."""

    status_code = 503

    def __init__(self, message: str = "the model is not loaded yet; retry shortly", retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Overloaded(ServiceError):  # noqa: N818  (KServe's names)
    """A bounded queue is full; the client should retry after ``retry_after`` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def error_body(message: str) -> bytes:
    """The JSON error body ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status_code, headers=headers, media_type="application/json")


def describe_validation_errors(errors: list[dict[str, Any]] | Any) -> str:
    """Pydantic/FastAPI validation errors as one readable sentence, e.g. ``samples: ...; seed: ...``.

    Locations leave out where the value came from (``body``, ``query``...) and the bracketed tags
    of tagged unions (``[list]``): ``attacks.0.pgd.steps``, not ``attacks.[list].0.[attack].pgd.steps``.
    """
    parts = []
    for err in errors:
        loc = [
            str(p)
            for p in err.get("loc", ())
            if p not in ("body", "query", "path", "header") and not (isinstance(p, str) and p.startswith("["))
        ]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _service_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    logger.debug("%d %s: %s", exc.status_code, type(exc).__name__, exc.message)  # counted in mfdv_requests_total
    return error_response(exc.status_code, exc.message, exc.headers)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, describe_validation_errors(exc.errors()))


async def _client_gone(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientDisconnect)
    logger.debug("the client closed the connection before its body was read")
    return error_response(CLIENT_CLOSED, "the client closed the connection before its request body was received")


CLIENT_CLOSED = 499
"""Status recorded (nginx's convention) when the client left before its body was read; nobody receives it."""


def install_error_handlers(app: FastAPI) -> None:
    """Map domain exceptions, HTTP exceptions and validation errors to ``{"error": ...}`` responses."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

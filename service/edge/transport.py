"""Reading a ``/v1`` request body: one content-type dispatch, one JSON reader, one multipart reader.

``/v1/predict`` and ``/v1/attack-probe`` take the same two encodings:

- ``application/json``: a JSON object validated **strictly** into the route's request model
  (no ``true`` as 1, no ``"5"`` as an int), inputs in ``inputs``;
- ``multipart/form-data``: images as ``file`` parts and the options as text fields, each read
  as a JSON scalar (``5``, ``true``) or by the field's converter, then validated as strictly.

Either way the route gets a ``Body``: the validated options and the raw inputs (JSON values or
file bytes), which it decodes together with its other CPU work: on the event loop when the body is
small and its images are few and small (a hand-off to a decode thread and back costs more than
decoding a 28x28 PNG), in the decode pool otherwise.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, Headers, UploadFile

from ..compute.inputs import Offload
from ..compute.pool import BoundedPool
from ..errors import InvalidInput, UnsupportedMediaType, ValidationFailed, describe_validation_errors

ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")

JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
FILE_FIELD = "file"
INPUTS_FIELD = "inputs"
LOOP_BODY_BYTES = 16 * 1024
"""Bodies up to this size may be parsed and decoded on the event loop (``read_body``'s ``on_loop``)."""


def validate_request(
    schema: type[ModelT], data: Mapping[str, Any], strict: bool = False, context: Mapping[str, Any] | None = None
) -> ModelT:
    """``schema`` built from ``data``; pydantic's errors become one ``ValidationFailed`` (422) message.

    Args:
        schema: the request model.
        data: the parsed body (JSON) or the form fields (text).
        strict: no coercion (JSON); form fields are text and need the lax mode.
        context: pydantic's validation context: the app's settings, which the request limits read
            (``service.schemas.limits.validation_context``).
    """
    try:
        return schema.model_validate(data, strict=strict, context=context)
    except ValidationError as e:
        raise ValidationFailed(describe_validation_errors(e.errors())) from None


def loads_json(text: str | bytes, where: str) -> Any:
    """``json.loads``, with a number no field can take (an integer literal over Python's
    ``sys.get_int_max_str_digits()`` digits, 4300 by default) an ``InvalidInput`` (400), not a 500.

    Raises:
        json.JSONDecodeError, UnicodeDecodeError, RecursionError: not JSON, as ``json.loads``.
        InvalidInput: an integer too long to convert.
    """
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise
    except ValueError:  # the scanner's int(): a literal over the int-string conversion limit
        raise InvalidInput(
            f"{where} holds an integer of more than {sys.get_int_max_str_digits()} digits; no field takes a number "
            "that large"
        ) from None


def integral_numbers(value: Any) -> Any:
    """``value`` with every integral float made an int (``5.0`` -> ``5``), in lists and objects too.

    JSON has one number type, and JSON Schema's ``integer`` is any integral number; strict
    validation then still refuses ``true`` and ``"5"`` where an integer is due.
    """
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        return [integral_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: integral_numbers(v) for k, v in value.items()}
    return value


def holds_booleans(value: Any) -> bool:
    """True when a nested list holds a JSON ``true``/``false`` (numpy would read them as 1 and 0)."""
    if isinstance(value, bool):
        return True
    return isinstance(value, list) and any(holds_booleans(v) for v in value)


def parse_json_body(
    body: bytes, schema: type[ModelT], example: str, context: Mapping[str, Any] | None = None
) -> ModelT:
    """Parse and strictly validate a JSON request body (CPU work: call it in the decode pool).

    Raises:
        InvalidInput: not JSON, or nested too deeply (400).
        ValidationFailed: not an object, or not the schema (422).
    """
    try:
        data = loads_json(body, "the body")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the body is not valid JSON ({e}); send {example}") from None
    except RecursionError:
        raise InvalidInput(f"the body nests JSON arrays/objects too deeply; send {example}") from None
    if not isinstance(data, dict):
        raise ValidationFailed(f"the body must be a JSON object like {example}")
    # ``inputs`` (pixels) keeps its floats: the decoder takes numbers, and the walk would cost time.
    options = {k: v if k == INPUTS_FIELD else integral_numbers(v) for k, v in data.items()}
    inputs = data.get(INPUTS_FIELD)
    if (b"true" in body or b"false" in body) and isinstance(inputs, list):  # the walk only when it can matter
        for i, item in enumerate(inputs):
            if isinstance(item, list) and holds_booleans(item):
                raise InvalidInput(f"{INPUTS_FIELD}[{i}] holds booleans; send numbers in [0, 1]")
    return validate_request(schema, options, strict=True, context=context)


@dataclass(frozen=True)
class Body(Generic[ModelT]):
    """A validated request body.

    Attributes:
        options: the validated request (the JSON model or the form model; both carry the options).
        inputs: the images as sent: JSON values (nested arrays, base64 strings) or file bytes.
        source: how messages name the inputs: ``inputs`` (JSON) or ``file`` (multipart).
    """

    options: ModelT
    inputs: list[Any]
    source: str


@dataclass(frozen=True)
class BodyReader(Generic[ModelT]):
    """How one route's body is read.

    Attributes:
        json_model: the JSON request model (``inputs`` plus the options).
        form_model: the multipart model (``file`` plus the same options).
        example: a minimal valid JSON body, quoted in error messages.
        form_values: per form field, how its text becomes a value (default: a JSON scalar, see
            ``form_value``); e.g. JSON text for structured fields.
    """

    json_model: type[ModelT]
    form_model: type[ModelT]
    example: str
    form_values: Mapping[str, Callable[[str], Any]] = field(default_factory=dict)

    @cached_property
    def options(self) -> tuple[str, ...]:
        """The form's option fields (computed once per reader)."""
        return tuple(name for name in self.form_model.model_fields if name != FILE_FIELD)

    def form_value(self, key: str, text: str) -> Any:
        """A form field's text -> its value: the field's converter, else the text read as a JSON scalar
        (``5``, ``0.1``, ``true``; other text stays text and fails validation unless it is a string)."""
        convert = self.form_values.get(key)
        if convert is not None:
            return convert(text)
        try:
            value = loads_json(text, f"form field {key!r}")
        except (json.JSONDecodeError, RecursionError):
            return text
        return integral_numbers(value) if isinstance(value, int | float | bool) or value is None else text

    def parse_json(self, raw: bytes, context: Mapping[str, Any] | None = None) -> Body[ModelT]:
        req = parse_json_body(raw, self.json_model, self.example, context)
        return Body(req, list(req.inputs), "inputs")  # type: ignore[attr-defined]

    async def read_form(
        self, request: Request, max_files: int, context: Mapping[str, Any] | None = None
    ) -> Body[ModelT]:
        """``file`` parts (one image each) and the options as fields; every mistake named.

        A well-formed ``multipart/form-data`` body within the part limits (what clients send) is
        split in one pass over the bytes already read (``split_multipart``); anything else goes
        through Starlette's form parser, whose errors (400) it keeps.
        """
        max_fields = len(self.options) + 8
        parts = split_multipart(
            await request.body(), request.headers.get("content-type", ""), max_files + 1, max_fields
        )
        if parts is not None:
            form = FormData([(name, value) for name, value, _ in parts])
            files = [data for name, value, data in parts if name == FILE_FIELD and isinstance(value, UploadFile)]
            return self._form_body(form, max_files, files, context)
        async with request.form(max_files=max_files + 1, max_fields=max_fields) as form:
            options = self._form_body(form, max_files, [], context).options
            files = [await f.read() for f in form.getlist(FILE_FIELD)]  # type: ignore[union-attr]
        return Body(options, files, FILE_FIELD)

    def _form_body(
        self, form: FormData, max_files: int, data: list[bytes], context: Mapping[str, Any] | None
    ) -> Body[ModelT]:
        """Check the form's fields and files and validate the options; ``data``: the files' bytes,
        ``context``: the validation context."""
        options = self.options
        unknown = sorted(set(form.keys()) - {FILE_FIELD, *options})
        if unknown:
            raise InvalidInput(
                f"unknown form field(s) {unknown}; send images as `file` parts and options among {list(options)}"
            )
        files = form.getlist(FILE_FIELD)
        if not files:
            raise InvalidInput("no `file` part; upload images as `-F file=@image.png` (several allowed)")
        if len(files) > max_files:
            raise InvalidInput(f"{len(files)} files in one request; at most {max_files} are allowed, split the request")
        for i, f in enumerate(files):
            if not isinstance(f, UploadFile):
                raise InvalidInput(f"file[{i}] is a text field, not a file; upload it with `-F file=@image.png`")
        values: dict[str, Any] = {FILE_FIELD: files}
        for key in options:
            given = form.getlist(key)
            if len(given) > 1:
                raise InvalidInput(f"form field {key!r} is given {len(given)} times; give it once")
            if given:
                if not isinstance(given[0], str):
                    raise InvalidInput(f"form field {key!r} must be a value, not a file")
                value = self.form_value(key, given[0])
                if value is None:
                    raise ValidationFailed(f"{key}: a form field needs a value; leave it out for the default")
                values[key] = value
        return Body(validate_request(self.form_model, values, strict=True, context=context), data, FILE_FIELD)


MAX_FIELD_BYTES = 1024 * 1024
"""Starlette's limit on a text field's size (``max_part_size``): a larger one goes to its parser, which refuses it."""
_DISPOSITION = re.compile(rb'^form-data; name="([^"\\]*)"(?:; filename="([^"\\]*)")?$', re.IGNORECASE)
_BOUNDARY = re.compile(r'^multipart/form-data;\s*boundary=(?:"([^"]{1,70})"|([0-9A-Za-z\'()+_,./:=?-]{1,70}))$', re.I)


def split_multipart(
    body: bytes, content_type: str, max_files: int, max_fields: int
) -> list[tuple[str, str | UploadFile, bytes]] | None:
    """The parts of a plain ``multipart/form-data`` body: (name, text or file, bytes) per part, in order.

    Plain means what browsers, curl and HTTP libraries send: the boundary as the only parameter,
    no preamble, each part with ``Content-Disposition: form-data; name="..."`` (and ``filename="..."``
    for a file; a part with a filename is a file, as in Starlette) and at most a ``Content-Type``
    besides, UTF-8 names and values, at most ``max_files`` files, ``max_fields`` text fields and
    ``MAX_FIELD_BYTES`` per field. Anything else returns None: Starlette's parser then reads the
    body and answers its own errors, so this path changes no outcome, only the cost (one scan of
    the bytes instead of a streaming parser, temporary files and a thread hop per file read).
    """
    m = _BOUNDARY.match(content_type.strip())
    if m is None:
        return None
    delimiter = b"--" + (m.group(1) or m.group(2)).encode()
    if not body.startswith(delimiter + b"\r\n"):
        return None
    separator = b"\r\n" + delimiter
    parts: list[tuple[str, str | UploadFile, bytes]] = []
    files = fields = 0
    pos = len(delimiter) + 2
    while True:
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            return None
        end = body.find(separator, head_end + 4)
        if end < 0:
            return None
        disposition = None
        raw_headers = []
        for line in body[pos:head_end].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            key = name.lower()
            if not colon or key not in (b"content-disposition", b"content-type") or name != name.strip():
                return None
            value = value.strip()
            raw_headers.append((key, value))
            if key == b"content-disposition":
                if disposition is not None:
                    return None
                disposition = _DISPOSITION.match(value)
                if disposition is None:
                    return None
        if disposition is None:
            return None
        data = body[head_end + 4 : end]
        try:
            field_name = disposition.group(1).decode()
            filename = disposition.group(2)
            if filename is None:
                fields += 1
                if fields > max_fields or len(data) > MAX_FIELD_BYTES:
                    return None
                parts.append((field_name, data.decode(), data))
            else:
                files += 1
                if files > max_files:
                    return None
                upload = UploadFile(
                    io.BytesIO(data), size=len(data), filename=filename.decode(), headers=Headers(raw=raw_headers)
                )
                parts.append((field_name, upload, data))
        except UnicodeDecodeError:
            return None
        after = end + len(separator)
        tail = body[after : after + 2]
        if tail == b"--":
            return parts  # the close delimiter; what follows it (the epilogue) is ignored, as by Starlette
        if tail != b"\r\n":
            return None
        pos = after + 2


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters (absent: ``""``, which no route reads)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(
    request: Request,
    reader: BodyReader[ModelT],
    *,
    max_files: int,
    then: Callable[[Body[ModelT]], ResultT],
    pool: BoundedPool,
    context: Mapping[str, Any] | None = None,
    on_loop: Callable[[Body[ModelT]], ResultT] | None = None,
) -> ResultT:
    """Read the body by its content type, validate it, and run ``then`` on it in ``pool`` (the decode pool).

    The request model is validated with ``context`` (pydantic's validation context: the app's
    settings, ``service.schemas.limits.validation_context``), which the request limits read.

    JSON is parsed in the same pool job as ``then`` (one hop per request). With ``on_loop`` (``then``
    for the event loop: it raises ``service.compute.inputs.Offload`` for work too large there), a body of at
    most ``LOOP_BODY_BYTES`` is parsed and handled on the event loop, without a hop.

    Raises:
        UnsupportedMediaType: neither JSON nor a form (415).
        InvalidInput, ValidationFailed: what the readers and ``then`` raise.
    """
    ctype = media_type(request)
    if ctype in JSON_TYPES:
        raw = await request.body()
        if on_loop is not None and len(raw) <= LOOP_BODY_BYTES:
            body = reader.parse_json(raw, context)
            try:
                return on_loop(body)
            except Offload:
                return await pool.run(then, body)
        return await pool.run(lambda: then(reader.parse_json(raw, context)))
    if ctype in FORM_TYPES:
        body = await reader.read_form(request, max_files, context)
        if on_loop is not None and sum(map(len, body.inputs)) <= LOOP_BODY_BYTES:
            try:
                return on_loop(body)
            except Offload:
                pass
        return await pool.run(then, body)
    if not ctype:
        raise UnsupportedMediaType(
            "the request has no Content-Type; send `Content-Type: application/json` with a JSON body, "
            "or multipart/form-data (curl -F)"
        )
    raise UnsupportedMediaType(f"content type {ctype!r} is not supported; send application/json or multipart/form-data")


def json_text(field_name: str, example: str) -> Callable[[str], Any]:
    """A form-value converter: the field's text is JSON."""

    def convert(text: str) -> Any:
        try:
            return integral_numbers(loads_json(text, f"form field {field_name!r}"))
        except (json.JSONDecodeError, RecursionError):
            raise InvalidInput(
                f"form field {field_name!r} must be JSON text like {example}; got {text[:80]!r}"
            ) from None

    return convert

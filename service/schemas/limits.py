"""A deployment's request limits, each declared once as an annotated type.

A limit's bound is a setting (``MFDV_MAX_SAMPLES``...), so it is known per app, not per class:

- a validating limit (``Limit``: ``Samples``, ``JudgeSamples``) is a validator reading the app's
  ``Settings`` from pydantic's validation context (``validation_context``); it fills in the
  default when the value is absent and refuses one out of range with ``OutOfRange``, an
  ``InvalidInput`` whose message names the setting (not a ValueError, so pydantic lets it through:
  a 400, as a range error always was, where a schema error is a 422). Validating without the
  settings is a programming error (RuntimeError), never a silent pass.
- every request field whose JSON schema depends on the deployment carries a marker (``Limit``,
  ``Count`` or ``Shown``); the OpenAPI document is generated with ``DeploymentJsonSchema``, which
  writes each marker's keywords from the same settings (and, once loaded, the served model's shape
  and classes): no component or property is patched by name.

``service.edge.transport.read_body`` validates ``/v1`` bodies, and ``service.routes.v2`` the inference header,
with ``validation_context(settings)`` (``AppState.validation``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, ValidationInfo
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from models.attacks import Attack
from models.probe import DEFAULT_JUDGE_SAMPLES, SuiteSpec

from ..config import Settings
from ..errors import InvalidInput

SETTINGS = "settings"
"""The validation-context key of the app's ``Settings``."""


def validation_context(settings: Settings) -> dict[str, Any]:
    """The ``context=`` of a request model's ``model_validate``."""
    return {SETTINGS: settings}


def env_name(setting: str) -> str:
    """The environment variable of a ``Settings`` field (``max_samples`` -> ``MFDV_MAX_SAMPLES``)."""
    return f"MFDV_{setting.upper()}"


@dataclass(frozen=True)
class Deployment:
    """What a deployment's limits are read from: its settings and, once loaded, the served model."""

    settings: Settings
    input_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None


def value_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of ``X | None`` (or the schema itself)."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch
    return prop


class OutOfRange(InvalidInput):
    """A request value outside its ``Limit`` (400)."""

    def __init__(self, limit: Limit, value: int, maximum: int) -> None:
        super().__init__(
            f"{limit.name} must be between {limit.minimum} and {maximum} ({env_name(limit.setting)}); got {value}"
        )
        self.limit, self.value, self.maximum = limit, value, maximum


@dataclass(frozen=True, eq=False)
class Limit:
    """A request integer ``minimum..settings.<setting>``; absent (None): ``default(settings)``.

    Put it in ``Annotated`` after ``int | None``; the field needs ``validate_default=True`` (``Samples``).
    """

    name: str
    setting: str
    default: Callable[[Settings], int]
    minimum: int = 1

    def maximum(self, settings: Settings) -> int:
        return int(getattr(settings, self.setting))

    def check(self, value: int | None, settings: Settings) -> int:
        """The value, or the default when absent.

        Raises:
            OutOfRange: out of range (400); the message names the setting.
        """
        if value is None:
            return self.default(settings)
        most = self.maximum(settings)
        if not self.minimum <= value <= most:
            raise OutOfRange(self, value, most)
        return value

    def keywords(self, deployment: Deployment) -> dict[str, Any]:
        return {"minimum": self.minimum, "maximum": self.maximum(deployment.settings)}

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_after_validator_function(self._validate, handler(source))

    def _validate(self, value: int | None, info: ValidationInfo) -> int:
        settings = (info.context or {}).get(SETTINGS)
        if settings is None:
            raise RuntimeError(f"{self.name} was validated without the app's settings (validation_context)")
        return self.check(value, settings)


TYPE_KEYWORDS = ("type", "items", "prefixItems", "minItems", "maxItems", "anyOf", "minimum", "maximum")


@dataclass(frozen=True, eq=False)
class Shown:
    """JSON-schema keywords of a field that depend on the deployment; validated elsewhere (the message
    of each check is given where it is made: ``service.compute.inputs``, ``service.probe``).

    Attributes:
        keywords: the keywords, from the deployment (an empty dict: nothing to add).
        replace: the keywords replace the field's type (``TYPE_KEYWORDS``; its title and description stay),
            else they are merged into its non-null branch.
    """

    keywords: Callable[[Deployment], dict[str, Any]]
    replace: bool = False


SAMPLES = Limit("samples", "max_samples", default=lambda s: s.default_samples)
"""Noise draws T of a prediction: absent means ``MFDV_DEFAULT_SAMPLES``, else 1..``MFDV_MAX_SAMPLES``."""

JUDGE_SAMPLES = Limit("judge_samples", "max_samples", default=lambda s: min(DEFAULT_JUDGE_SAMPLES, s.max_samples))
"""Fresh draws judging each probe input: absent means 64 (at most ``MFDV_MAX_SAMPLES``), else 1..that."""

Samples = Annotated[
    int | None,
    SAMPLES,
    Field(validate_default=True, description="Noise draws T (1..MFDV_MAX_SAMPLES); default MFDV_DEFAULT_SAMPLES."),
]
JudgeSamples = Annotated[
    int | None,
    JUDGE_SAMPLES,
    Field(validate_default=True, description="Fresh noise draws judging each input (1..MFDV_MAX_SAMPLES); default 64."),
]


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


@dataclass(frozen=True, eq=False)
class Count:
    """A request's count of images: 1..``settings.<setting>``. Counted where the images are read (the
    messages name the request's parts): ``service.compute.inputs`` (``decode_inputs``, ``check_batch``),
    ``service.edge.transport`` (``file`` parts) and ``service.probe.caps``, each given ``maximum(settings)``.
    """

    setting: str

    def maximum(self, settings: Settings) -> int:
        return int(getattr(settings, self.setting))

    def keywords(self, deployment: Deployment) -> dict[str, Any]:
        return {"minItems": 1, "maxItems": self.maximum(deployment.settings)}


INPUTS = Count("max_inputs")
"""Images in one prediction: ``/v1/predict`` inputs or ``file`` parts, a v2 batch."""
PROBE_INPUTS = Count("max_probe_inputs")
"""Images in one attack probe: ``/v1/attack-probe`` inputs or ``file`` parts."""

PIXEL_INPUTS = Shown(lambda d: {} if d.input_shape is None else {"items": input_item(d.input_shape)})
"""JSON inputs: each a pixel array of the served model's shape, or a base64 image."""


def _labels(d: Deployment) -> dict[str, Any]:
    out: dict[str, Any] = {"maxItems": PROBE_INPUTS.maximum(d.settings)}
    if d.num_classes is not None:
        out["items"] = {"type": "integer", "minimum": 0, "maximum": d.num_classes - 1}
    return out


LABELS = Shown(_labels)
"""Probe labels: one per input, each a class (checked by ``service.probe.prepare.true_labels``)."""


class DeploymentJsonSchema(GenerateJsonSchema):
    """JSON schemas of the request models with one deployment's limits (``for_deployment``).

    Each model field's ``Limit``/``Count``/``Shown`` markers write their keywords; attack and suite specs get
    the probe caps on their radius (``eps``, ``hi``: ``MFDV_MAX_PROBE_EPS``) and their noise draws
    (``samples``: ``MFDV_MAX_SAMPLES``), which ``service.probe.caps`` checks.
    """

    deployment: Deployment | None = None

    @classmethod
    def for_deployment(cls, deployment: Deployment) -> type[DeploymentJsonSchema]:
        return type(cls.__name__, (cls,), {"deployment": deployment})

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        out = super().model_schema(schema)
        d = self.deployment
        if d is None:
            return out
        cls = schema["cls"]
        props = out.get("properties", {})
        for name, info in getattr(cls, "model_fields", {}).items():
            prop = props.get(info.alias or name)
            if prop is None:
                continue
            for marker in info.metadata:
                keywords = marker.keywords(d) if isinstance(marker, Shown | Limit | Count) else None
                if not keywords:
                    continue
                if isinstance(marker, Shown) and marker.replace:
                    for key in TYPE_KEYWORDS:
                        prop.pop(key, None)
                    prop.update(keywords)
                else:
                    value_schema(prop).update(keywords)
        if isinstance(cls, type) and issubclass(cls, Attack | SuiteSpec):
            s = d.settings
            for key, most in (("eps", s.max_probe_eps), ("hi", s.max_probe_eps), ("samples", SAMPLES.maximum(s))):
                if key in props:
                    value_schema(props[key])["maximum"] = most
        return out

"""Open Inference Protocol v2 (KServe / Triton): request and response models.

``InferenceRequest`` is the inference body's JSON (or the JSON header of a binary request): what
``service.routes.v2.parse_infer`` validates it with (strictly, with the app's settings), and what
the OpenAPI document shows. Its schema is the JSON body's contract: the two allowances of the
binary extension's header (``data`` left out, ``parameters.binary_data_size`` given) are kept
out of it. The tensor's values are checked by the route (with numpy, in the protocol's words),
not by pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SkipValidation, WithJsonSchema
from typing_extensions import TypeAliasType

from ..compute.engine import MAX_SEED
from .limits import INPUTS, Deployment, Samples, Shown

MAX_NDIM = 8
"""Most dimensions a tensor may declare (the model wants 3 or 4)."""

OUTPUTS: dict[str, tuple[str, bool]] = {
    "probs": ("FP32", True),
    "label": ("INT64", False),
    "class_name": ("BYTES", False),
    "predictive_entropy": ("FP32", False),
    "expected_entropy": ("FP32", False),
    "mutual_information": ("FP32", False),
    "vote_agreement": ("FP32", False),
    "top_prob_stderr": ("FP32", False),
    "flagged": ("BOOL", False),
}
"""The model's outputs, in response order: name -> (datatype, per class: shape [B, K] rather than [B])."""

OutputName = Literal[tuple(OUTPUTS)]  # type: ignore[valid-type]

InputName = Literal["image"]
INPUT_NAME: str = get_args(InputName)[0]
"""The model's one input."""

DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "FP16": np.dtype("<f2"),
    "UINT8": np.dtype("u1"),
}
"""The input datatypes the model takes, with their little-endian layout."""

Datatype = Literal[tuple(DTYPES)]  # type: ignore[valid-type]

TensorData = TypeAliasType("TensorData", "list[float | TensorData]")  # type: ignore[misc]
"""A tensor's values: flat in row-major order, or nested lists."""


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description="`model_id` and `class_names`.")


class InputParameters(BaseModel):
    """Any parameters; ``binary_data_size`` belongs to the binary extension's header, not to a JSON body."""

    model_config = ConfigDict(extra="allow")

    binary_data_size: Annotated[int | None, Field(ge=0), WithJsonSchema({"type": "null"})] = Field(
        None, description="Binary extension only: bytes of this tensor after the JSON header (see the operation)."
    )


def _object_or_none(value: Any) -> Any:
    """An input's ``parameters`` that are not an object are ignored (as they always were)."""
    return value if isinstance(value, dict) else None


def _data_is_required(schema: dict[str, Any]) -> None:
    """A JSON body carries ``data`` (only the binary extension's header leaves it out)."""
    schema.setdefault("required", []).append("data")
    schema["properties"]["data"].pop("default", None)


def _shape(d: Deployment) -> dict[str, Any]:
    """The shapes the served model takes: [B, C, H, W] (or [B, H, W] for one channel), B 1..MFDV_MAX_INPUTS."""
    if d.input_shape is None:
        return {}
    c, h, w = d.input_shape
    batch = {"type": "integer", "minimum": 1, "maximum": INPUTS.maximum(d.settings)}
    shapes = [[batch, {"const": c}, {"const": h}, {"const": w}]]
    if c == 1:
        shapes.append([batch, {"const": h}, {"const": w}])
    return {
        "anyOf": [
            {"type": "array", "prefixItems": dims, "items": False, "minItems": len(dims), "maxItems": len(dims)}
            for dims in shapes
        ]
    }


class InferInput(BaseModel):
    """The one input, ``image``, its values in ``data`` (the binary extension sends them after the header)."""

    model_config = ConfigDict(json_schema_extra=_data_is_required)

    name: InputName
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Shown(_shape, replace=True)] = Field(
        max_length=MAX_NDIM, description="[B, C, H, W], or [B, H, W] for one channel."
    )
    datatype: Datatype = Field(description="FP* pixels in [0, 1]; UINT8 pixels 0..255.")
    # checked by the route (numbers of the datatype, as many as the shape says), with numpy
    data: SkipValidation[TensorData] = Field(None, description="The values, flat (row-major) or nested.")  # type: ignore[assignment]
    parameters: Annotated[InputParameters | None, BeforeValidator(_object_or_none)] = None


class RequestParameters(BaseModel):
    samples: Samples = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    binary_data_output: bool | None = Field(None, description="Return every output as binary data.")


class OutputParameters(BaseModel):
    binary_data: bool | None = None


class RequestedOutput(BaseModel):
    name: OutputName
    parameters: OutputParameters | None = None


class InferenceRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: the JSON body, or the JSON header of a binary request."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    parameters: RequestParameters | None = None
    outputs: list[RequestedOutput] | None = Field(None, description="Default: every output.")


class OutputTensor(BaseModel):
    name: OutputName
    datatype: Literal["FP32", "INT64", "BYTES", "BOOL"]
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = Field(None, description="`binary_data_size` for binary outputs.")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] = Field(description="`samples`, `seed` and `model_id`.")
    outputs: list[OutputTensor]


# -- the repository extension -------------------------------------------------------------------------


class RepositoryIndexRequest(BaseModel):
    """``POST /v2/repository/index``'s optional body."""

    model_config = ConfigDict(extra="forbid")
    ready: bool = Field(False, description="Only the models that are ready.")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str = Field(description="The version served, or the newest in the repository when none is.")
    state: Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
    reason: str = Field("", description="Why the model does not serve (unloaded, or why its load failed).")


class LoadParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: (
        Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)]
        | None
    ) = Field(None, description="The version to load (a numbered folder of the model); default: the highest.")


class LoadRequest(BaseModel):
    """``POST /v2/repository/models/{name}/load``'s optional body."""

    model_config = ConfigDict(extra="forbid")
    parameters: LoadParameters = Field(default_factory=LoadParameters)


class UnloadParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unload_dependents: bool = Field(False, description="Accepted for tritonclient; models here have no dependents.")


class UnloadRequest(BaseModel):
    """``POST /v2/repository/models/{name}/unload``'s optional body."""

    model_config = ConfigDict(extra="forbid")
    parameters: UnloadParameters = Field(default_factory=UnloadParameters)

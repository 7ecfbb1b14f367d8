"""Request and response schemas of the ``/v1`` API (also the OpenAPI documentation)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from .engine import MAX_SEED
from .errors import InvalidInput, ValidationFailed, describe_validation_errors

RequestT = TypeVar("RequestT", bound=BaseModel)


def validate_request(schema: type[RequestT], data: dict[str, Any], strict: bool = False) -> RequestT:
    """``schema`` built from ``data``; pydantic's errors become one ``ValidationFailed`` message.

    Args:
        schema: the request model.
        data: the parsed body (JSON) or the form fields (text).
        strict: no coercion (JSON: ``true`` is not a number, ``"5"`` is not an int); form fields
            are text and need the lax mode.
    """
    try:
        return schema.model_validate(data, strict=strict)
    except ValidationError as e:
        raise ValidationFailed(describe_validation_errors(e.errors())) from None


def parse_json_body(body: bytes, schema: type[RequestT], example: str) -> RequestT:
    """Parse and validate a JSON request body (CPU work: call it in the thread pool).

    Args:
        body: the raw body.
        schema: the request model.
        example: a minimal valid body, quoted in the error messages.
    """
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the body is not valid JSON ({e}); send {example}") from None
    except RecursionError:
        raise InvalidInput(f"the body nests JSON arrays/objects too deeply; send {example}") from None
    if not isinstance(data, dict):
        raise ValidationFailed(f"the body must be a JSON object like {example}")
    return validate_request(schema, data, strict=True)


class PredictRequest(BaseModel):
    """``POST /v1/predict`` as JSON. Multipart uploads carry the same options as form fields."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(
        description="Images: nested arrays [C,H,W] (or [H,W] for one channel) of pixels in [0, 1], "
        "or base64 PNG/JPEG strings (data: URLs accepted).",
    )
    samples: int | None = Field(None, description="Noise draws T (1..MFDV_MAX_SAMPLES); default MFDV_DEFAULT_SAMPLES.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Noise seed; absent: a random one, returned.")
    return_samples: bool = Field(False, description="Also return each draw's probabilities (`draws`, [T][K]).")
    resize: bool = Field(False, description="Resize images of another size to the model's (else they are rejected).")


class UncertaintyOut(BaseModel):
    predictive_entropy: float = Field(description="H[mean p] in nats (total uncertainty).")
    expected_entropy: float = Field(description="mean_t H[p_t] in nats (aleatoric).")
    mutual_information: float = Field(description="predictive - expected entropy (epistemic).")
    vote_agreement: float = Field(description="Share of draws whose argmax is the label.")
    top_prob_stderr: float = Field(description="Monte Carlo standard error of the label's mean probability.")


class PredictionOut(BaseModel):
    label: int
    class_name: str
    probs: list[float] = Field(description="Mean softmax over the T draws.")
    uncertainty: UncertaintyOut
    flagged: bool = Field(description="Mutual information above the checkpoint's calibrated threshold.")
    draws: list[list[float]] | None = Field(None, description="Per-draw probabilities, with return_samples.")


class TimingOut(BaseModel):
    queue_ms: float = Field(description="Wait for the batcher.")
    compute_ms: float = Field(description="Compute of the batch this request was part of.")
    total_ms: float = Field(description="From the request's arrival to its response.")
    batch_size: int = Field(description="Images in that batch (all requests together).")


class PredictResponse(BaseModel):
    """Everything but ``timing`` is a function of (model, inputs, samples, seed): same seed, same bytes."""

    model: str
    model_id: str = Field(description="sha256 of the checkpoint's manifest.json.")
    samples: int
    seed: int
    predictions: list[PredictionOut]
    timing: TimingOut


class ModelInfo(BaseModel):
    name: str
    id: str
    method: str
    arch: str
    dataset: str
    class_names: list[str]
    input_shape: list[int]
    feature_dim: int
    mi_threshold: float
    sigma: dict[str, Any]
    metrics: dict[str, Any] = Field(description="Clean and robust accuracy, each with the attack settings used.")
    lambda_: float | None = Field(None, alias="lambda")
    backend: str
    device: str
    samples: dict[str, int] = Field(description="Default and maximum T of this server.")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ErrorResponse(BaseModel):
    error: str


def floats(values: Any) -> Any:
    """float32 values (tensor or array, any shape) -> nested lists of the shortest decimals that round-trip.

    ``0.1f`` becomes ``0.1``, not ``0.10000000149011612``; the text is a pure function of
    the float32 bits, so equal tensors give equal JSON bytes.
    """
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float32)
    return arr.astype(str).astype(np.float64).tolist()


class AttackSpecIn(BaseModel):
    """One attack to run: its name, budget and any of its settings (see docs/attack-probe.md)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="fgsm, pgd, pgd_l2, surrogate, apgd, square or min_eps.")
    eps: float | None = Field(None, description="Budget in pixel units; default 0.1 (28x28) or 8/255 (32x32).")


class ProbeRequest(BaseModel):
    """``POST /v1/attack-probe`` as JSON. Multipart uploads carry the same options as form fields."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(description="Images, in the formats /v1/predict takes.")
    labels: list[StrictInt] | None = Field(
        None, description="True labels, one per input; default: the model's clean majority-vote prediction."
    )
    attacks: list[AttackSpecIn] | None = Field(
        None, description="Attacks to run, in order; default: fgsm, pgd (EOT 16, 20 steps) and surrogate."
    )
    judge_samples: int | None = Field(
        None, description="Fresh noise draws judging each input (1..MFDV_MAX_SAMPLES); default 64."
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of every random stream; absent: random.")
    return_adversarial: bool = Field(False, description="Add each adversarial image as a base64 8-bit PNG.")
    resize: bool = Field(False, description="Resize images of another size to the model's (else they are rejected).")

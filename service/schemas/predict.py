"""``/v1/predict``, ``/v1/models`` and the health routes: request and response models.

The request models validate (strictly for JSON, from text for multipart forms) with the app's
settings (``service.schemas.limits``: ``samples`` comes out filled in and within
``MFDV_MAX_SAMPLES``) and are the OpenAPI document's request bodies (``service.edge.openapi``);
the response models describe what the routes write.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from .common import ImageFile, Seed, form_fields_are_text
from .limits import INPUTS, PIXEL_INPUTS, Samples

INPUT_DESCRIPTION = (
    "One image: a nested array [C,H,W] (or [H,W] for one channel) of pixels in [0, 1], "
    "or a base64 PNG/JPEG string (data: URLs accepted)."
)


class PredictOptions(BaseModel):
    """The options of ``POST /v1/predict``, the same as JSON fields or as multipart form fields."""

    model_config = ConfigDict(extra="forbid")

    samples: Samples = None
    seed: Seed = None
    return_samples: bool = Field(False, description="Also return each draw's probabilities (`draws`, [T][K]).")
    resize: bool = Field(False, description="Resize images of another size to the model's (else they are rejected).")


class PredictRequest(PredictOptions):
    """``POST /v1/predict`` as JSON (``application/json``)."""

    inputs: Annotated[list[Any], INPUTS, PIXEL_INPUTS] = Field(
        description=f"Images, 1..MFDV_MAX_INPUTS. {INPUT_DESCRIPTION}"
    )


class PredictForm(PredictOptions):
    """``POST /v1/predict`` as ``multipart/form-data``: one ``file`` part per image, options as text fields."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=form_fields_are_text)

    file: Annotated[list[ImageFile], INPUTS] = Field(
        description="PNG or JPEG images, one part each (1..MFDV_MAX_INPUTS)."
    )


class UncertaintyOut(BaseModel):
    predictive_entropy: float = Field(description="H[mean p] in nats (total uncertainty).")
    expected_entropy: float = Field(description="mean_t H[p_t] in nats (aleatoric).")
    mutual_information: float = Field(description="predictive - expected entropy (epistemic).")
    vote_agreement: float = Field(description="Share of draws whose argmax is the label.")
    top_prob_stderr: float = Field(description="Monte Carlo standard error of the label's mean probability.")


class PredictionOut(BaseModel):
    label: int = Field(description="The prediction: argmax of the mean softmax over the T draws.")
    class_name: str
    probs: list[float] = Field(description="Mean softmax over the T draws.")
    uncertainty: UncertaintyOut
    flagged: bool = Field(
        description="The checkpoint's flag rule (`flag` in /v1/models) fires: for a stochastic model, mutual "
        "information or 1 - max mean probability above its calibrated threshold; for a deterministic model, 1 - max "
        "mean probability."
    )
    draws: list[list[float]] | None = Field(
        None, description="Per-draw probabilities [T][K]; present only with return_samples."
    )


class PredictTimingOut(BaseModel):
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
    timing: PredictTimingOut = Field(description="The only non-deterministic field; always the last one.")


class ModelInfo(BaseModel):
    name: str = Field(description="The name routes use (`/v1/models/{name}/predict`), from the manifest.")
    version: str = Field(
        description="The version served (a numbered folder of the model; `1` for a single checkpoint)."
    )
    default: bool = Field(description="Whether the routes that name no model (`/v1/predict`) serve this one.")
    id: str
    method: str
    arch: str
    dataset: str
    class_names: list[str]
    input_shape: list[int]
    feature_dim: int
    mi_threshold: float
    flag: dict[str, Any] = Field(
        description="The rule `flagged` follows: `signal`, `threshold`, `rule` in words, and `calibration` (how the "
        "threshold was fixed: at most `rate` of the correctly classified held-out clean inputs flagged). A rule of "
        "two signals (`signal` mutual_information_or_max_prob) lists each in `clauses` (`signal`, `threshold`): "
        "flagged when either exceeds its threshold."
    )
    sigma: dict[str, Any]
    metrics: dict[str, Any] = Field(description="Clean and robust accuracy, each with the attack settings used.")
    lambda_: float | None = Field(None, alias="lambda")
    backend: str
    device: str
    samples: dict[str, int] = Field(description="Default and maximum T of this server.")


class ModelsResponse(BaseModel):
    default: str | None = Field(description="The model the routes that name none serve.")
    models: list[ModelInfo] = Field(description="The loaded models, by name.")


class ModelDetail(ModelInfo):
    manifest: dict[str, Any] = Field(description="The checkpoint's whole manifest.json.")


class HealthResponse(BaseModel):
    status: str = Field(description="`ok` while the process answers.")


class ReadyResponse(BaseModel):
    status: str = Field(description="`ready` once the model is loaded and warmed up.")
    model: str
    model_id: str

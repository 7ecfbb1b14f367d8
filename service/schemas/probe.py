"""``POST /v1/attack-probe``: request and response models.

Attacks are ``models.attacks.AttackSpec`` (one typed spec per attack, told apart by ``name``)
or a named suite (``models.probe.SuiteSpec``, or just ``"standard"``/``"published"``/``"adaptive"``),
validated into typed specs here; ``service.probe.prepare`` resolves them for the served model
and checks them against the caps, once, before anything runs.

The response is ``models.probe.ProbeReport`` (the probe's own report type) with the service's
fields around it (``ProbeResponse``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictInt, Tag

from models.attacks import AttackSpec
from models.probe import ProbeReport, SuiteName, SuiteSpec

from .common import ImageFile, Seed, form_fields_are_text
from .limits import LABELS, PIXEL_INPUTS, PROBE_INPUTS, JudgeSamples
from .predict import INPUT_DESCRIPTION


def _item_kind(value: Any) -> str:
    if isinstance(value, SuiteSpec) or (isinstance(value, dict) and "suite" in value):
        return "[suite]"
    return "[attack]"


ProbeItemSpec = Annotated[
    Annotated[AttackSpec, Tag("[attack]")] | Annotated[SuiteSpec, Tag("[suite]")],
    Discriminator(_item_kind),
]
"""One entry of ``attacks``: an attack spec (``{"name": "pgd", ...}``) or a suite (``{"suite": "standard"}``).

The bracketed tags never show in error messages (``service.errors.describe_validation_errors``).
"""


def _attacks_kind(value: Any) -> str:
    return "[suite name]" if isinstance(value, str) else "[list]"


ProbeAttacks = Annotated[
    Annotated[list[ProbeItemSpec], Field(min_length=1), Tag("[list]")] | Annotated[SuiteName, Tag("[suite name]")],
    Discriminator(_attacks_kind),
]


class ProbeOptions(BaseModel):
    """The options of ``POST /v1/attack-probe``, the same as JSON fields or as multipart form fields."""

    model_config = ConfigDict(extra="forbid")

    labels: Annotated[list[StrictInt] | None, LABELS] = Field(
        None, description="True labels, one per input; default: the model's clean prediction."
    )
    attacks: ProbeAttacks | None = Field(
        None,
        description='Attacks to run, in order (each a spec named by `name`, or a suite `{"suite": ...}`), or a '
        "suite name; default: fgsm, pgd and surrogate with their defaults.",
    )
    judge_samples: JudgeSamples = None
    seed: Seed = None
    return_adversarial: bool = Field(False, description="Add each adversarial image as a base64 8-bit PNG.")
    resize: bool = Field(False, description="Resize images of another size to the model's (else they are rejected).")


class ProbeRequest(ProbeOptions):
    """``POST /v1/attack-probe`` as JSON (``application/json``)."""

    inputs: Annotated[list[Any], PROBE_INPUTS, PIXEL_INPUTS] = Field(
        description=f"Images, 1..MFDV_MAX_PROBE_INPUTS. {INPUT_DESCRIPTION}"
    )


class ProbeForm(ProbeOptions):
    """``POST /v1/attack-probe`` as ``multipart/form-data``: ``file`` parts, options as fields (``labels`` and
    ``attacks`` as JSON text; ``labels`` also as ``3`` or ``3,1,0``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=form_fields_are_text)

    file: Annotated[list[ImageFile], PROBE_INPUTS] = Field(
        description="PNG or JPEG images, one part each (1..MFDV_MAX_PROBE_INPUTS)."
    )


# -- the response -------------------------------------------------------------------------------


class ProbeCostOut(BaseModel):
    gradient: int = Field(description="Gradient units charged (backbone passes x inputs, summed).")
    queries: int = Field(description="Score units charged (queries x inputs, summed).")
    max_gradient: int = Field(description="MFDV_MAX_PROBE_GRADIENT_BUDGET.")
    max_queries: int = Field(description="MFDV_MAX_PROBE_QUERIES.")


class ProbeRequestOut(BaseModel):
    inputs: int
    labels: Literal["given", "clean_prediction"]
    attacks: list[dict[str, Any]] = Field(description="Each attack with every setting it runs with.")
    judge_samples: int
    seed: int
    return_adversarial: bool
    cost: ProbeCostOut


class ProbeTimingOut(BaseModel):
    queue_ms: float = Field(description="Arrival to the start of the attack worker.")
    probe_ms: float = Field(description="The attacks and judging.")
    total_ms: float
    limit_s: float = Field(description="MFDV_MAX_PROBE_SECONDS.")


class ProbeHead(BaseModel):
    """What the service says before the report: the model, whether the report is partial, the request."""

    model: str
    model_id: str
    partial: bool = Field(
        description="True when an attack was stopped or some skipped (wall-time limit, shutdown, cancellation)."
    )
    partial_reason: str | None
    skipped_attacks: list[str]
    request: ProbeRequestOut


# Fields in order: ProbeHead's, then models.probe.ProbeReport's (the object the probe returns, with
# return_adversarial its inputs' ``adversarial`` images set), then ``timing``.
class ProbeResponse(ProbeReport, ProbeHead):
    """Per input and attack, what happened; same seed, same report (timings aside)."""

    timing: ProbeTimingOut

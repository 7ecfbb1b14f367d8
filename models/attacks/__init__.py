"""Adversarial attacks: one typed spec (a pydantic model) and one file each, in one registry.

Adding an attack is one file in this package: a subclass of ``Attack`` decorated with
``@register_attack``, with a ``name`` literal, its settings as fields (defaults and bounds),
``cost`` and ``run``. Every module here is imported below, so the attack joins the registry,
the discriminated union ``AttackSpec`` and the service's schema without another edit.
Every gradient attack takes ``eot`` (noise draws averaged per gradient, one backward pass).
"""

import importlib
import pkgutil
from typing import Annotated, Union

from pydantic import Field, TypeAdapter

from .base import (
    Attack,
    AttackCost,
    AttackResult,
    StopFn,
    attack_classes,
    default_eps,
    eot_grad,
    eot_logits,
    eot_loss_grad,
    eval_mode,
    get_attack,
    list_attacks,
    make_attack,
    predict_draws,
    register_attack,
    run_attack,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "suite"):
        importlib.import_module(f"{__name__}.{_mod.name}")

AttackSpec = Annotated[Union[tuple(attack_classes())], Field(discriminator="name")]  # noqa: UP007
"""Any registered attack's spec, told apart by ``name`` (the type the HTTP edge validates with)."""

ATTACK_SPEC = TypeAdapter(AttackSpec)
"""Validates a dict into the right spec class: ``ATTACK_SPEC.validate_python({"name": "pgd"})``."""

from .flag import FlagCalibration, FlagRule, calibrate_flag  # noqa: E402
from .suite import SUITES, Suite, SuiteName, SuiteResult, run_suite  # noqa: E402  (needs the registry filled)

__all__ = [
    "ATTACK_SPEC",
    "SUITES",
    "Attack",
    "AttackCost",
    "AttackResult",
    "AttackSpec",
    "FlagCalibration",
    "FlagRule",
    "StopFn",
    "Suite",
    "SuiteName",
    "SuiteResult",
    "calibrate_flag",
    "default_eps",
    "eot_grad",
    "eot_logits",
    "eot_loss_grad",
    "eval_mode",
    "get_attack",
    "list_attacks",
    "make_attack",
    "predict_draws",
    "register_attack",
    "run_attack",
    "run_suite",
]

"""Adversarial attacks, one small unit each, in one registry.

Every gradient attack takes ``eot`` (noise draws averaged per gradient, one backward
pass) and most take ``noise_free`` (attack the network with its noise off).
"""

from . import apgd as _apgd  # noqa: F401  (registers)
from . import fgsm as _fgsm  # noqa: F401  (registers)
from . import minimal_eps as _minimal_eps  # noqa: F401  (registers)
from . import pgd as _pgd  # noqa: F401  (registers)
from . import square as _square  # noqa: F401  (registers)
from .base import (
    AttackResult,
    AttackSpec,
    eot_grad,
    eot_logits,
    eval_mode,
    get_attack,
    list_attacks,
    predict_draws,
    register_attack,
    run_attack,
)

__all__ = [
    "AttackResult",
    "AttackSpec",
    "eot_grad",
    "eot_logits",
    "eval_mode",
    "get_attack",
    "list_attacks",
    "predict_draws",
    "register_attack",
    "run_attack",
]

"""The probe caps: what one ``/v1/attack-probe`` request may ask for, from ``Settings``.

Each attack (or suite) states its own radius and cost (``spec.radius()``, ``spec.cost(inputs)``,
in ``models/``); this module only compares them with the caps, before anything runs.
Over a cap is a 422 (``ValidationFailed``) whose message names the setting.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.attacks import AttackCost
from models.probe import ProbeItem

from ..config import Settings
from ..errors import ValidationFailed
from ..schemas.limits import PROBE_INPUTS, SAMPLES, env_name


def check_caps(items: Sequence[ProbeItem], inputs: int, settings: Settings) -> AttackCost:
    """Check a resolved request against the caps.

    Args:
        items: the resolved attack and suite specs, in order.
        inputs: how many inputs the request attacks.
        settings: the caps (``max_probe_*``; the noise draws of one head evaluation: ``SAMPLES``'s maximum).

    Returns:
        The request's cost, summed over its items.

    Raises:
        ValidationFailed: a cap is exceeded (422); the message names the setting.
    """
    s = settings
    max_draws, max_inputs = SAMPLES.maximum(s), PROBE_INPUTS.maximum(s)
    if inputs > max_inputs:
        raise ValidationFailed(
            f"{inputs} inputs in one probe; at most {max_inputs} are allowed ({env_name(PROBE_INPUTS.setting)}), "
            "split the request"
        )
    for i, item in enumerate(items):
        where = f"attacks[{i}] ({item.name})"
        draws = item.draws()  # the most draws one head evaluation takes: eot, samples, a suite's judging draws
        if draws > max_draws:
            named = ", ".join(f"{k}={getattr(item, k)}" for k in ("eot", "samples") if getattr(item, k, 0) == draws)
            raise ValidationFailed(
                f"{where}: {named or f'{draws} draws'} is over the limit of {max_draws} noise draws "
                f"({env_name(SAMPLES.setting)}); ask for fewer"
            )
        eps, radius = item.eps, item.radius()
        if eps is not None and eps > s.max_probe_eps:
            raise ValidationFailed(
                f"{where}: eps={eps:g} is over the limit of {s.max_probe_eps:g} (MFDV_MAX_PROBE_EPS); "
                "ask for a smaller budget"
            )
        if radius > s.max_probe_eps:
            raise ValidationFailed(
                f"{where}: hi={radius:g} (the largest radius it tries) is over the limit of {s.max_probe_eps:g} "
                "(MFDV_MAX_PROBE_EPS); ask for a smaller range"
            )
    costs = [item.cost(inputs) for item in items]
    total = sum(costs, AttackCost())
    if total.gradient > s.max_probe_gradient_budget:
        parts = ", ".join(f"{it.name}: {c.gradient}" for it, c in zip(items, costs, strict=True) if c.gradient)
        raise ValidationFailed(
            f"this probe needs {total.gradient} gradient units (backbone passes x inputs: steps, plus the passes "
            f"that judge tries; summed over attacks: {parts}), over the limit of {s.max_probe_gradient_budget} "
            "(MFDV_MAX_PROBE_GRADIENT_BUDGET); use fewer steps, inputs or attacks"
        )
    if total.queries > s.max_probe_queries:
        parts = ", ".join(f"{it.name}: {c.queries}" for it, c in zip(items, costs, strict=True) if c.queries)
        raise ValidationFailed(
            f"this probe needs {total.queries} score units (queries x inputs: {parts}), over the limit "
            f"of {s.max_probe_queries} (MFDV_MAX_PROBE_QUERIES); use fewer queries or inputs"
        )
    return total

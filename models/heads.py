"""Stochastic classifier heads. All noise lives here, after the backbone.

Every head maps features ``mu`` [B, D] and **standard normal** draws ``noise``
([T, D] shared across the batch, or [T, B, D] per input) to logits [T, B, K]:

    z     = mu + delta(noise)          # delta: the head's learned/fixed scaling
    logit = W z + b = (W mu + b) + W delta

The deterministic part ``W mu + b`` is computed once per batch and the noise part
``W delta`` once per draw, so T draws cost O(B·D·K + T·D·K + T·B·K), not T
network passes. ``noise=None`` switches the noise off (the noise-free network,
which equals E[logits] for these zero-mean heads). Nothing depends on
``self.training``: whoever calls the head decides whether there is noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

_HEADS: dict[str, type[StochasticHead]] = {}


class HeadConfig(BaseModel):
    """A head's own settings (each head declares its fields, defaults and bounds once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FixedConfig(HeadConfig):
    fixed_sigma: float = Field(1.0, ge=0, description="noise std of the 'fixed' baseline")


class SigmaInitConfig(HeadConfig):
    sigma_init: float = Field(0.5, gt=0, description="initial noise std of the learned heads (mfdv, wca)")


class MFDVConfig(SigmaInitConfig):
    sigma_max: float | None = Field(6.0, gt=0, description="cap on the learned sigma of mfdv ('none': no cap)")


class WCAConfig(SigmaInitConfig):
    entropy_max: float | None = Field(
        2.0, description="wca: noise entropy per dimension past which the alignment term stops ('none': never)"
    )


def register_head(name: str) -> Callable[[type[StochasticHead]], type[StochasticHead]]:
    """Class decorator: add a head (with its ``Config``) to the registry under ``name``."""

    def deco(cls: type[StochasticHead]) -> type[StochasticHead]:
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered")
        cls.method = name
        _HEADS[name] = cls
        return cls

    return deco


def list_heads() -> list[str]:
    """The registered methods, in registration order."""
    return list(_HEADS)


def get_head(method: str) -> type[StochasticHead]:
    """The head class of ``method``.

    Raises:
        ValueError: unknown method (the message lists the valid ones).
    """
    if method not in _HEADS:
        raise ValueError(f"unknown method {method!r}; choose one of {list_heads()}")
    return _HEADS[method]


def create_head(
    method: str, *, feature_dim: int, num_classes: int, config: HeadConfig | Mapping[str, Any] | None = None
) -> StochasticHead:
    """Build the head for ``method`` with its config (a mapping is validated by the head's ``Config``)."""
    cls = get_head(method)
    cfg = config if isinstance(config, cls.Config) else cls.Config.model_validate(dict(config or {}))
    return cls(feature_dim, num_classes, cfg)


def gaussian_logits(
    mu: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Logits [T, B, K] of a linear layer applied to ``mu + delta``.

    Args:
        mu: features [B, D].
        delta: scaled noise [T, D] or [T, B, D]; None for the noise-free network (T = 1).
        weight: [K, D]. bias: [K].
    """
    base = F.linear(mu, weight, bias)  # (B, K)
    if delta is None:
        return base.unsqueeze(0)  # (1, B, K)
    shift = F.linear(delta, weight)  # (T, K) or (T, B, K)
    if shift.dim() == 2:
        shift = shift.unsqueeze(1)  # (T, 1, K)
    return base.unsqueeze(0) + shift  # (T, B, K)


class StochasticHead(nn.Module):
    """Linear classifier over ``mu + delta(noise)``. Subclasses define ``scale_noise``.

    Adding a head is one class: a ``Config`` (its settings), ``@register_head(name)``,
    ``scale_noise``, ``covariance`` and, for learned noise, ``noise_parameters`` and
    ``regularizer`` (set ``has_variance_term`` when the regularizer is weighted by lambda).
    """

    method: ClassVar[str] = "base"
    Config: ClassVar[type[HeadConfig]] = HeadConfig
    has_variance_term: ClassVar[bool] = False

    def __init__(self, feature_dim: int, num_classes: int, cfg: HeadConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or self.Config()
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.fc = nn.Linear(feature_dim, num_classes)

    def scale_noise(self, noise: torch.Tensor) -> torch.Tensor | None:
        """Turn standard normal draws into feature noise ``delta`` (same shape)."""
        raise NotImplementedError

    def covariance(self) -> torch.Tensor:
        """Feature noise covariance Sigma [D, D]."""
        raise NotImplementedError

    def forward(self, mu: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is not None and noise.shape[-1] != self.feature_dim:
            raise ValueError(f"noise must have last dim {self.feature_dim}, got shape {tuple(noise.shape)}")
        delta = None if noise is None else self.scale_noise(noise)
        return gaussian_logits(mu, delta, self.fc.weight, self.fc.bias)

    def base_logits(self, mu: torch.Tensor) -> torch.Tensor:
        """The noise-free logits ``W mu + b`` [B, K] (the mean of the logits given x)."""
        return F.linear(mu, self.fc.weight, self.fc.bias)

    def noise_shift(self, noise: torch.Tensor) -> torch.Tensor:
        """Each draw's logit shift ``W delta(noise)`` [T, K] for standard normal ``noise`` [T, D].

        ``forward(mu, noise) == base_logits(mu)[None] + noise_shift(noise)[:, None]``: a server can
        compute the two parts separately (the shift depends on the noise alone).
        """
        if noise.shape[-1] != self.feature_dim:
            raise ValueError(f"noise must have last dim {self.feature_dim}, got shape {tuple(noise.shape)}")
        return F.linear(self.scale_noise(noise), self.fc.weight)

    def regularizer(self) -> torch.Tensor:
        """Term added to the loss (multiplied by lambda); zero for heads with nothing to learn."""
        return self.fc.weight.new_zeros(())

    def noise_parameters(self) -> list[nn.Parameter]:
        """The learnable parameters of the noise (trained without weight decay, at their own rate)."""
        return []

    def sigma(self) -> torch.Tensor:
        """Per-dimension noise standard deviation [D]."""
        return torch.sqrt(torch.diagonal(self.covariance()).clamp_min(0))

    def logit_covariance(self) -> torch.Tensor:
        """Covariance of the logits given x: W Sigma W^T [K, K] (exact: the head is linear)."""
        w = self.fc.weight
        return w @ self.covariance() @ w.T


@register_head("vanilla")
class VanillaHead(StochasticHead):
    """No noise: every draw gives the same logits (the noise input is accepted and ignored)."""

    def scale_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * 0.0

    def covariance(self) -> torch.Tensor:
        return self.fc.weight.new_zeros(self.feature_dim, self.feature_dim)


@register_head("fixed")
class FixedNoiseHead(StochasticHead):
    """Isotropic feature noise of a fixed sigma (a PNI-style baseline without learning)."""

    Config = FixedConfig

    def __init__(self, feature_dim: int, num_classes: int, cfg: FixedConfig | None = None) -> None:
        super().__init__(feature_dim, num_classes, cfg)
        self.register_buffer("sigma_value", torch.tensor(float(self.cfg.fixed_sigma)))

    def scale_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * self.sigma_value

    def covariance(self) -> torch.Tensor:
        return torch.eye(self.feature_dim, device=self.sigma_value.device) * self.sigma_value**2

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma_value):.3g}"


@register_head("mfdv")
class MFDVHead(StochasticHead):
    """Learnable per-dimension sigma = softplus(s), optionally capped at ``sigma_max``.

    Regularizer: ``-mean_d log(sigma_d^2)`` (maximize feature-distribution variance),
    from "Rethinking Feature Uncertainty in Stochastic Neural Networks for
    Adversarial Robustness" (arXiv 2201.00148).
    """

    Config = MFDVConfig
    has_variance_term = True

    def __init__(self, feature_dim: int, num_classes: int, cfg: MFDVConfig | None = None) -> None:
        super().__init__(feature_dim, num_classes, cfg)
        s0 = math.log(math.expm1(self.cfg.sigma_init))  # softplus^-1
        self.s = nn.Parameter(torch.full((feature_dim,), s0))
        self.sigma_max = self.cfg.sigma_max

    def sigma(self) -> torch.Tensor:
        sig = F.softplus(self.s)
        if self.sigma_max is not None:
            sig = sig.clamp(max=self.sigma_max)
        return sig

    def scale_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * self.sigma()

    def covariance(self) -> torch.Tensor:
        return torch.diag(self.sigma() ** 2)

    def regularizer(self) -> torch.Tensor:
        return -torch.log(self.sigma() ** 2).mean()

    def noise_parameters(self) -> list[nn.Parameter]:
        return [self.s]

    def extra_repr(self) -> str:
        return f"D={self.feature_dim}, sigma_max={self.sigma_max}"


@register_head("wca")
class WCAHead(StochasticHead):
    """Full-covariance feature noise Sigma = L L^T with weight-covariance alignment.

    From "Weight-Covariance Alignment for Adversarially Robust Neural Networks"
    (Eustratiadis et al., ICML 2021). Regularizer: ``-log mean_k w_k^T Sigma w_k``
    (align the noise with the classifier weights), switched off once the noise
    entropy ``0.5 log det(2 pi e Sigma)`` per dimension passes ``entropy_max``
    so the variance cannot run away.
    """

    Config = WCAConfig
    has_variance_term = True

    def __init__(self, feature_dim: int, num_classes: int, cfg: WCAConfig | None = None) -> None:
        super().__init__(feature_dim, num_classes, cfg)
        self.L = nn.Parameter(torch.eye(feature_dim) * self.cfg.sigma_init)
        self.entropy_max = self.cfg.entropy_max
        self.register_buffer("tril_mask", torch.tril(torch.ones(feature_dim, feature_dim)))

    def lower(self) -> torch.Tensor:
        return self.L * self.tril_mask

    def noise_parameters(self) -> list[nn.Parameter]:
        return [self.L]

    def scale_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return noise @ self.lower().T

    def covariance(self) -> torch.Tensor:
        low = self.lower()
        return low @ low.T

    def entropy_per_dim(self) -> torch.Tensor:
        diag = torch.diagonal(self.lower()).abs().clamp_min(1e-12)
        return 0.5 * math.log(2 * math.pi * math.e) + torch.log(diag).mean()

    def regularizer(self) -> torch.Tensor:
        w = self.fc.weight
        align = torch.einsum("kd,de,ke->k", w, self.covariance(), w).mean()
        reg = -torch.log(align.clamp_min(1e-12))
        if self.entropy_max is not None and float(self.entropy_per_dim().detach()) > self.entropy_max:
            return reg * 0.0
        return reg


METHODS: tuple[str, ...] = tuple(list_heads())
"""The registered methods (derived from the registry)."""

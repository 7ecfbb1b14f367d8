"""The stochastic classifier: backbone -> linear projection to D -> stochastic head."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from .backbones import Normalize, create_backbone
from .heads import METHODS, create_head


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in the checkpoint manifest."""

    arch: str = "small_cnn"
    method: str = "mfdv"
    in_chans: int = 1
    img_size: int = 28
    num_classes: int = 10
    feature_dim: int = 64
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    sigma_init: float = 0.5
    fixed_sigma: float = 1.0
    sigma_max: float | None = None
    entropy_max: float | None = 2.0
    mu_bound: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} values (one per channel)")
        if self.feature_dim < 1 or self.num_classes < 2:
            raise ValueError("feature_dim must be >= 1 and num_classes >= 2")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.img_size, self.img_size)


class StochasticClassifier(nn.Module):
    """``features(x) -> mu`` (one backbone pass) and ``head(mu, noise) -> logits [T, B, K]``.

    Inputs are [0, 1] pixels [B, C, H, W]; normalization is inside.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.normalize = Normalize(cfg.mean, cfg.std)
        self.backbone = create_backbone(cfg.arch, in_chans=cfg.in_chans, img_size=cfg.img_size)
        self.proj = nn.Linear(self.backbone.out_dim, cfg.feature_dim)
        self.head = create_head(
            cfg.method,
            feature_dim=cfg.feature_dim,
            num_classes=cfg.num_classes,
            sigma_init=cfg.sigma_init,
            fixed_sigma=cfg.fixed_sigma,
            sigma_max=cfg.sigma_max,
            entropy_max=cfg.entropy_max,
        )

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    @property
    def stochastic(self) -> bool:
        return self.cfg.method != "vanilla"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic features mu [B, D]."""
        mu = self.proj(self.backbone(self.normalize(x)))
        if self.cfg.mu_bound is not None:
            b = self.cfg.mu_bound
            mu = b * torch.tanh(mu / b)
        return mu

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Logits [T, B, K] for standard normal ``noise`` [T, D] (None: noise-free, T = 1)."""
        return self.head(self.features(x), noise)

    def sample_noise(
        self, samples: int, generator: torch.Generator | None = None, batch: int | None = None
    ) -> torch.Tensor:
        """Standard normal draws [T, D] (or [T, B, D] with ``batch``) on the model's device."""
        dev = self.proj.weight.device
        shape = (samples, self.feature_dim) if batch is None else (samples, batch, self.feature_dim)
        if generator is not None and generator.device != dev:
            return torch.randn(shape, generator=generator).to(dev)
        return torch.randn(shape, generator=generator, device=dev)


def build_model(cfg: ModelConfig | dict[str, Any]) -> StochasticClassifier:
    """Rebuild a model from its config (a ``ModelConfig`` or the manifest's dict)."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return StochasticClassifier(cfg)


def noise_to_margin(
    model: StochasticClassifier, x: torch.Tensor | None = None, *, mu: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-input ratio of the logit-noise std to the top-2 logit margin (noise-free).

    Uses the exact logit covariance W Sigma W^T: for the predicted class c and
    runner-up j the margin noise std is sqrt(Var(l_c - l_j)). Large values mean
    noise can flip the decision; tiny values mean mu has outgrown sigma.

    Args:
        model: the classifier.
        x: inputs [B, C, H, W]; or pass ``mu`` (features [B, D]) to reuse a backbone pass.
    """
    with torch.no_grad():
        if mu is None:
            if x is None:
                raise ValueError("pass x or mu")
            mu = model.features(x)
        logits = model.head(mu, None)[0]
        top2 = logits.topk(2, dim=1)
        c, j = top2.indices[:, 0], top2.indices[:, 1]
        margin = top2.values[:, 0] - top2.values[:, 1]
        cov = model.head.logit_covariance()
        var = cov[c, c] + cov[j, j] - 2 * cov[c, j]
        return torch.sqrt(var.clamp_min(0)) / margin.clamp_min(1e-12)

"""The stochastic classifier: backbone -> linear projection to D -> stochastic head."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from .backbones import Normalize, create_backbone, list_backbones
from .heads import METHODS, create_head, get_head

_LEGACY_HEAD_KEYS = ("sigma_init", "fixed_sigma", "sigma_max", "entropy_max")


class ModelConfig(BaseModel):
    """Everything needed to rebuild a model; the manifest's ``model`` section.

    ``head`` holds the settings of the method's head, validated by that head's ``Config``
    (``models.heads``); the rest describes the backbone, the input and the feature space.
    """

    model_config = ConfigDict(extra="forbid")

    arch: str = Field("small_cnn", description="backbone (models.backbones registry)")
    method: str = Field("mfdv", description="stochastic head (models.heads registry)")
    in_chans: int = Field(1, ge=1)
    img_size: int = Field(28, ge=1)
    num_classes: int = Field(10, ge=2)
    feature_dim: int = Field(64, ge=1, description="feature dimension D")
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.5])
    mu_bound: float | None = Field(5.0, gt=0, description="bound features: mu = b*tanh(mu/b) ('none': unbounded)")
    head: dict[str, Any] = Field(default_factory=dict, description="the head's own settings")

    @model_validator(mode="before")
    @classmethod
    def _legacy_flat_head(cls, data: Any) -> Any:
        """Checkpoint format 1 kept the head settings at the top level: move the method's own into ``head``."""
        if isinstance(data, dict) and any(k in data for k in _LEGACY_HEAD_KEYS):
            data = dict(data)
            flat = {k: data.pop(k) for k in _LEGACY_HEAD_KEYS if k in data}
            method = data.get("method", "mfdv")
            if method in METHODS:
                own = get_head(method).Config.model_fields
                data["head"] = {**{k: v for k, v in flat.items() if k in own}, **data.get("head", {})}
        return data

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in list_backbones():
            raise ValueError(f"unknown arch {v!r}; choose one of {list_backbones()}")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {list(METHODS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} values (one per channel)")
        self.head = get_head(self.method).Config.model_validate(self.head).model_dump()
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Validate a manifest's ``model`` section (format 1's flat head settings accepted)."""
        return cls.model_validate(d)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

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
        self.head = create_head(cfg.method, feature_dim=cfg.feature_dim, num_classes=cfg.num_classes, config=cfg.head)

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

"""A tiny model whose weights are set by hand, so the service's answers can be computed on paper.

``tiny_cnn`` on 1x14x14 images, 4 classes (``top``, ``bottom``, ``left``, ``right``: where the
bright bar of ``tests/fixtures.py``'s dataset lies), feature dimension D = 4:

- normalization is the identity (mean 0, std 1), so the backbone sees raw pixels in [0, 1];
- each strided convolution keeps its input's centre tap in channel 0 (every other weight 0),
  so after both the backbone's first 16 outputs are the pixels ``x[4i, 4j]``, i, j in 0..3
  (ReLU changes nothing: pixels are >= 0), and the rest are 0;
- the projection averages those 16 samples by region: ``mu = (top, bottom, left, right)``,
  the mean of the sampled pixels in rows 0 and 4, rows 8 and 12, columns 0 and 4, columns 8 and 12;
- the head: ``logits = SCALE * (mu + sigma * noise)`` with ``sigma = SIGMA`` in every dimension
  (``mfdv``; ``vanilla``: no noise). The label is the region with the brightest mean.

So for standard normal ``noise`` [T, 4] (``models.seeded_noise(T, 4, seed)``) the logits are
``SCALE * mu + SCALE * SIGMA * noise`` exactly (``expected_logits``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import ModelConfig, StochasticClassifier, build_model
from training.export import export_checkpoint

CLASSES = ["top", "bottom", "left", "right"]
SIZE = 14
SCALE = 10.0
SIGMA = 0.1
MI_THRESHOLD = 0.05


def region_means(x: torch.Tensor) -> torch.Tensor:
    """``mu`` [B, 4] for pixels [B, 1, 14, 14]: the hand-set backbone and projection, written out."""
    s = x[:, 0, ::4, ::4]  # (B, 4, 4): rows and columns 0, 4, 8, 12
    return torch.stack(
        [s[:, :2].mean((1, 2)), s[:, 2:].mean((1, 2)), s[:, :, :2].mean((1, 2)), s[:, :, 2:].mean((1, 2))], 1
    )


def expected_logits(x: torch.Tensor, noise: torch.Tensor | None, method: str = "mfdv") -> torch.Tensor:
    """Logits [T, B, 4] the hand-set model gives for pixels [B, 1, 14, 14] and noise [T, 4]."""
    base = SCALE * region_means(x)  # (B, 4)
    if noise is None or method == "vanilla":
        t = 1 if noise is None else noise.shape[0]
        return base.unsqueeze(0).expand(t, -1, -1)
    return base.unsqueeze(0) + (SCALE * SIGMA * noise).unsqueeze(1)


@torch.no_grad()
def build_hand_model(method: str = "mfdv") -> StochasticClassifier:
    """The model described above (``mfdv`` or ``vanilla``)."""
    cfg = ModelConfig(
        arch="tiny_cnn",
        method=method,
        in_chans=1,
        img_size=SIZE,
        num_classes=len(CLASSES),
        feature_dim=4,
        mean=[0.0],
        std=[1.0],
        mu_bound=None,  # the features are the region means themselves
        head={"sigma_init": SIGMA} if method == "mfdv" else {},
    )
    model = build_model(cfg).eval()
    for p in model.parameters():
        p.zero_()
    conv1, conv2 = model.backbone.body[0], model.backbone.body[2]
    conv1.weight[0, 0, 1, 1] = 1.0  # centre tap: output (i, j) = input (2i, 2j)
    conv2.weight[0, 0, 1, 1] = 1.0
    w = torch.zeros(4, 4, 4)  # (feature, row sample, column sample)
    w[0, :2, :] = w[1, 2:, :] = w[2, :, :2] = w[3, :, 2:] = 1 / 8
    model.proj.weight[:, :16] = w.flatten(1)
    model.head.fc.weight.copy_(SCALE * torch.eye(4))
    if method == "mfdv":
        model.head.s.fill_(torch.log(torch.expm1(torch.tensor(SIGMA))))  # softplus(s) = SIGMA
    return model


def export_hand_checkpoint(out: Path, method: str = "mfdv") -> Path:
    """The hand-set model as a checkpoint directory (weights, ONNX, manifest) at ``out``."""
    return export_checkpoint(
        build_hand_model(method),
        out,
        class_names=list(CLASSES),
        dataset="tiny",
        mi_threshold=MI_THRESHOLD,
        train_args={"method": method, "lam": 0.1, "note": "weights set by hand (tests/support/hand_model.py)"},
        metrics={"clean": {"accuracy": 1.0, "n": 0, "samples": 32, "note": "hand-set test model"}},
    )

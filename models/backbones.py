"""Backbone registry: feature extractors that map [0, 1] pixels to a feature vector.

Normalization lives inside the model (``Normalize``), so every caller, attack and
epsilon budget works in pixel space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

BackboneFactory = Callable[..., nn.Module]
_BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator that adds a backbone factory to the registry under ``name``."""

    def deco(fn: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    """Names accepted by ``create_backbone``."""
    return sorted(_BACKBONES)


def create_backbone(name: str, *, in_chans: int, img_size: int) -> nn.Module:
    """Build a registered backbone. The module has an ``out_dim`` attribute.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown arch {name!r}; choose one of {list_backbones()}")
    return _BACKBONES[name](in_chans=in_chans, img_size=img_size)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; inputs stay raw [0, 1] pixels outside."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four 3x3 conv layers + one hidden linear layer; the default for 28x28 inputs."""

    def __init__(self, in_chans: int = 1, img_size: int = 28, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        if img_size % 4:
            raise ValueError(f"small_cnn needs an image size divisible by 4, got {img_size}")
        self.body = nn.Sequential(
            _conv_bn(in_chans, width),
            _conv_bn(width, width),
            nn.MaxPool2d(2),
            _conv_bn(width, 2 * width),
            _conv_bn(2 * width, 2 * width),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (img_size // 4) ** 2, hidden),
            nn.ReLU(inplace=True),
        )
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (3x3 stem, no max-pool), as in the paper's CIFAR-10 setting."""

    def __init__(self, blocks: Sequence[int], in_chans: int = 3, img_size: int = 32) -> None:
        super().__init__()
        self.stem = _conv_bn(in_chans, 64)
        layers: list[nn.Module] = []
        cin = 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.layers(self.stem(x))), 1)


@register_backbone("small_cnn")
def small_cnn(*, in_chans: int, img_size: int) -> nn.Module:
    return SmallCNN(in_chans=in_chans, img_size=img_size)


@register_backbone("resnet18")
def resnet18(*, in_chans: int, img_size: int) -> nn.Module:
    return CifarResNet((2, 2, 2, 2), in_chans=in_chans, img_size=img_size)


class TinyCNN(nn.Module):
    """Two strided conv layers; for tests and quick experiments, not for results."""

    def __init__(self, in_chans: int = 1, img_size: int = 28, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
        )
        side = ((img_size + 1) // 2 + 1) // 2
        self.out_dim = 2 * width * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_backbone("tiny_cnn")
def tiny_cnn(*, in_chans: int, img_size: int) -> nn.Module:
    return TinyCNN(in_chans=in_chans, img_size=img_size)

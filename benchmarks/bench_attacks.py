"""Benchmark: our one-pass EOT-PGD against torchattacks.EOTPGD on the same model and inputs.

    python benchmarks/bench_attacks.py --checkpoint checkpoints/fashion_mnist_mfdv --n 256

Both attacks run L-inf PGD with a random start, ``--steps`` steps of size eps/4 and
``--eot`` noise draws per gradient. Ours draws them after one backbone pass and gets
the averaged gradient from one backward pass (``models.attacks.eot_grad``);
torchattacks calls the model ``eot`` times per step, each call with one fresh draw
(``model(x, model.sample_noise(1))``), so it does ``eot`` backbone passes and backward
passes per step. Both results are judged the same way: the majority vote over
``--judge`` fresh draws (the same draws for both), and an input counts as robust when
the vote is its true label. Target: accuracies within 2 points, ours >= 8x faster.

Inputs come from ``training.data.load_dataset`` (the manifest's dataset, test split),
or ``--npz``; without either, random valid pixels labelled by the model's own clean
majority vote are used, and the output says so.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from models import StochasticClassifier, load_checkpoint, majority_vote  # noqa: E402
from models.attacks import eval_mode, predict_draws, run_attack  # noqa: E402

log = logging.getLogger("bench_attacks")


class OneDrawLogits(nn.Module):
    """torchattacks wants ``module(x) -> [B, K]``: logits under one fresh noise draw per call.

    Built in eval mode: torchattacks puts the wrapped module back into the mode it found
    it in, and a fresh module is in train mode (BatchNorm would then use batch statistics).
    """

    def __init__(self, model: StochasticClassifier) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.model.sample_noise(1))[0]


def load_inputs(
    args: argparse.Namespace, model: StochasticClassifier, manifest: dict, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x [n, C, H, W] in [0, 1], labels [n], a description of where they came from)."""
    shape = tuple(model.cfg.input_shape)
    name = str(args.npz) if args.npz else (args.dataset or manifest.get("dataset") or "fashion_mnist")
    try:
        from training.data import as_float, load_dataset

        ds = load_dataset(name, "test")
        if tuple(ds.input_shape) != shape:
            raise ValueError(f"dataset {name!r} has inputs {tuple(ds.input_shape)}, the model wants {shape}")
        n = min(args.n, len(ds))
        return as_float(ds.x[:n]).to(device), ds.y[:n].to(device), f"{name} test split, first {n}"
    except (ImportError, FileNotFoundError, ValueError) as e:
        log.warning("no dataset (%s); using random valid inputs labelled by the model's clean vote", e)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.rand((args.n, *shape), generator=gen).to(device)
    with eval_mode(model), torch.no_grad():
        y = majority_vote(predict_draws(model, x, args.judge, torch.Generator().manual_seed(args.seed + 2)))
    return x, y, "RANDOM inputs (no dataset found), labels = the model's clean majority vote"


def robust_accuracy(model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, samples: int, seed: int) -> float:
    """Share of inputs whose majority vote over ``samples`` fresh draws is the true label."""
    with eval_mode(model), torch.no_grad():
        votes = majority_vote(predict_draws(model, x, samples, torch.Generator().manual_seed(seed)))
    return (votes == y).float().mean().item()


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/fashion_mnist_mfdv"))
    p.add_argument("--n", type=int, default=256, help="inputs to attack")
    p.add_argument("--dataset", default=None, help="training.data name or path (default: the manifest's dataset)")
    p.add_argument("--npz", type=Path, default=None, help="a .npz with x and y (overrides --dataset)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eot", type=int, default=16)
    p.add_argument("--judge", type=int, default=32, help="fresh draws for the majority vote")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ckpt = load_checkpoint(args.checkpoint, device=device)
    model = ckpt.model.eval()
    x, y, source = load_inputs(args, model, ckpt.manifest, device)
    alpha = args.eps / 4

    # Warm-up (allocator, kernels) on two inputs, untimed.
    run_attack("pgd", model, x[:2], y[:2], eps=args.eps, steps=1, eot=args.eot)
    torchattacks.EOTPGD(OneDrawLogits(model), eps=args.eps, alpha=alpha, steps=1, eot_iter=args.eot)(x[:2], y[:2])

    gen = torch.Generator().manual_seed(args.seed)
    ours, t_ours = timed(
        lambda: (
            run_attack(
                "pgd", model, x, y, eps=args.eps, generator=gen, steps=args.steps, alpha=alpha, eot=args.eot
            ).x_adv
        ),
        device,
    )
    torch.manual_seed(args.seed)  # torchattacks draws its start and our noise from the global RNG
    theirs_attack = torchattacks.EOTPGD(
        OneDrawLogits(model), eps=args.eps, alpha=alpha, steps=args.steps, eot_iter=args.eot
    )
    theirs, t_theirs = timed(lambda: theirs_attack(x, y), device)
    if model.training:
        raise RuntimeError("the model was left in train mode")

    judge_seed = args.seed + 12345
    clean = robust_accuracy(model, x, y, args.judge, judge_seed)
    acc_ours = robust_accuracy(model, ours, y, args.judge, judge_seed)
    acc_theirs = robust_accuracy(model, theirs, y, args.judge, judge_seed)
    for name, adv in (("ours", ours), ("torchattacks", theirs)):
        linf = (adv - x).abs().max().item()
        assert linf <= args.eps + 1e-6, f"{name} left the eps ball ({linf})"

    cfg = model.cfg
    print(f"checkpoint   {args.checkpoint} ({cfg.arch}, {cfg.method}, D={cfg.feature_dim}), device {device}")
    print(f"inputs       {len(y)} x {tuple(cfg.input_shape)}: {source}")
    print(
        f"settings     L-inf eps={args.eps:g}, steps={args.steps}, alpha=eps/4={alpha:g}, random start, "
        f"eot={args.eot}; judged by majority vote of {args.judge} fresh draws; threads={torch.get_num_threads()}"
    )
    print(f"clean accuracy {100 * clean:6.2f}%")
    print(f"{'attack':<34}{'robust acc':>11}{'wall s':>10}{'backbone fwd+bwd / step':>26}")
    print(f"{'ours: pgd (one-pass EOT)':<34}{100 * acc_ours:10.2f}%{t_ours:10.2f}{1:>26}")
    print(f"{'torchattacks.EOTPGD':<34}{100 * acc_theirs:10.2f}%{t_theirs:10.2f}{args.eot:>26}")
    gap = 100 * abs(acc_ours - acc_theirs)
    speedup = t_theirs / t_ours
    print(f"accuracy gap {gap:.2f} points (target <= 2), speed-up {speedup:.1f}x (target >= 8x)")
    return 0 if gap <= 2 and speedup >= 8 else 1


if __name__ == "__main__":
    raise SystemExit(main())

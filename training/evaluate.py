"""Evaluation: clean accuracy over T draws, robust accuracy under attacks, MI calibration.

Every robust number is stored beside the exact attack settings that produced it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from models import StochasticClassifier, noise_to_margin, summarize
from models.attacks import predict_draws, run_attack

from .data import Dataset, as_float


def default_eps(img_size: int) -> float:
    """0.1 for 28x28 data, 8/255 for 32x32 and larger (pixel space)."""
    return 0.1 if img_size <= 28 else 8 / 255


def standard_suite(eps: float, eot: int = 16) -> list[dict[str, Any]]:
    """FGSM and PGD-20 (step eps/4, random start) with one draw and with EOT, plus the noise-free surrogate."""
    return [
        {"name": "fgsm", "eps": eps, "eot": 1},
        {"name": "fgsm", "eps": eps, "eot": eot},
        {"name": "pgd", "eps": eps, "steps": 20, "eot": 1},
        {"name": "pgd", "eps": eps, "steps": 20, "eot": eot},
        {"name": "surrogate", "eps": eps, "steps": 20},
    ]


def attack_key(spec: dict[str, Any]) -> str:
    """A readable key, e.g. ``pgd20_eot16_eps0.1``."""
    name = spec["name"]
    steps = spec.get("steps")
    key = f"{name}{steps if steps else ''}"
    if "eot" in spec:
        key += f"_eot{spec['eot']}"
    return f"{key}_eps{spec['eps']:.4g}"


def _batches(n: int, batch: int) -> list[slice]:
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


@torch.no_grad()
def clean_accuracy(
    model: StochasticClassifier, ds: Dataset, samples: int = 32, batch: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Accuracy of the mean softmax over ``samples`` draws, and of the noise-free network."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    correct = correct_nf = 0
    mi: list[torch.Tensor] = []
    ntm: list[torch.Tensor] = []
    model.eval()
    for sl in _batches(len(ds), batch):
        x = as_float(ds.x[sl]).to(device)
        y = ds.y[sl].to(device)
        mu = model.features(x)  # (B, D): one backbone pass serves all three below
        u = summarize(model.head(mu, model.sample_noise(samples, g)))
        correct += int((u.label == y).sum())
        correct_nf += int((model.head(mu, None)[0].argmax(-1) == y).sum())
        mi.append(u.mutual_information.cpu())
        if model.stochastic:
            ntm.append(noise_to_margin(model, mu=mu).cpu())
    out = {
        "accuracy": correct / len(ds),
        "accuracy_noise_free": correct_nf / len(ds),
        "mean_mutual_information": float(torch.cat(mi).mean()),
    }
    if ntm:
        out["noise_to_margin_median"] = float(torch.cat(ntm).median())
    return out


def robust_accuracy(
    model: StochasticClassifier,
    ds: Dataset,
    spec: dict[str, Any],
    *,
    samples: int = 32,
    batch: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy (mean softmax over ``samples`` fresh draws) on adversarial inputs made per ``spec``."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    settings = {k: v for k, v in spec.items() if k not in ("name", "eps")}
    correct = 0
    t0 = time.perf_counter()
    model.eval()
    for sl in _batches(len(ds), batch):
        x = as_float(ds.x[sl]).to(device)
        y = ds.y[sl].to(device)
        res = run_attack(spec["name"], model, x, y, eps=spec["eps"], generator=g, **settings)
        with torch.no_grad():
            pred = predict_draws(model, res.x_adv, samples, g).softmax(-1).mean(0).argmax(-1)
        correct += int((pred == y).sum())
    return {
        "accuracy": correct / len(ds),
        "attack": dict(spec),
        "n": len(ds),
        "judged_with_samples": samples,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 2),
    }


@torch.no_grad()
def calibrate_mi_threshold(
    model: StochasticClassifier, ds: Dataset, samples: int = 32, quantile: float = 0.95, seed: int = 0
) -> float:
    """The ``quantile`` of mutual information on clean held-out data (flag inputs above it)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    mi = []
    for sl in _batches(len(ds), 1000):
        u = summarize(predict_draws(model, as_float(ds.x[sl]).to(device), samples, g))
        mi.append(u.mutual_information.cpu().double())
    return float(np.quantile(torch.cat(mi).numpy(), quantile))


def evaluate(
    model: StochasticClassifier,
    test: Dataset,
    *,
    samples: int = 32,
    attacks: list[dict[str, Any]] | None = None,
    attack_n: int | None = None,
    seed: int = 0,
    log: Any = None,
) -> dict[str, Any]:
    """Clean metrics on all of ``test`` and robust accuracy on its first ``attack_n`` inputs."""
    metrics: dict[str, Any] = {
        "clean": {**clean_accuracy(model, test, samples, seed=seed), "n": len(test), "samples": samples}
    }
    if log:
        log(f"clean: {metrics['clean']}")
    sub = test if attack_n is None or attack_n >= len(test) else test.subset(slice(0, attack_n))
    metrics["robust"] = {}
    for spec in attacks or []:
        r = robust_accuracy(model, sub, spec, samples=samples, seed=seed)
        metrics["robust"][attack_key(spec)] = r
        if log:
            log(f"{attack_key(spec)}: robust accuracy {r['accuracy']:.4f} (n={r['n']}, {r['seconds']} s)")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Evaluate checkpoints on their dataset's test split under the standard suite at several eps."""
    import argparse
    import json
    import sys

    from models import load_checkpoint

    from .data import load_dataset

    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Clean and robust accuracy of checkpoints (FGSM, PGD-20 with and "
        "without EOT, noise-free surrogate), printed as JSON lines.",
    )
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--dataset", default=None, help="default: the manifest's dataset")
    p.add_argument("--eps", type=float, nargs="+", default=None, help="default: 0.1 (28x28) or 8/255 (32x32)")
    p.add_argument("--eot", type=int, default=16)
    p.add_argument("--samples", type=int, default=32, help="noise draws per prediction")
    p.add_argument("--attack-n", type=int, default=1000, help="test inputs to attack (0: all)")
    p.add_argument("--extra", nargs="*", default=[], help="more attacks at the same eps, e.g. apgd square")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        test = load_dataset(args.dataset or ck.manifest["dataset"], "test")
        eps_list = args.eps or [default_eps(ck.model.cfg.img_size)]
        attacks = [spec for e in eps_list for spec in standard_suite(e, args.eot)]
        attacks += [
            {"name": name, "eps": e, **({"eot": args.eot} if name == "apgd" else {})}
            for e in eps_list
            for name in args.extra
        ]
        metrics = evaluate(
            ck.model, test, samples=args.samples, attacks=attacks, attack_n=args.attack_n or None, seed=args.seed
        )
        sys.stdout.write(json.dumps({"checkpoint": str(path), **metrics}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

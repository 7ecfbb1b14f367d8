"""Evaluation: clean accuracy over T draws, robust accuracy under a named suite, MI calibration.

    python -m training.evaluate checkpoints/fashion_mnist_mfdv --suite standard published --attack-n 2000
    torchrun --nproc_per_node 2 -m training.evaluate checkpoints/fashion_mnist_mfdv --attack-n 2000

The suites (``models.attacks.suite``) are the protocols a reviewer accepts (``standard``) and
the one the stochastic-network papers report (``published``). Every robust number is stored
beside the suite's full settings and a Wilson 95% interval. Under ``torchrun`` the attacked
inputs are split into fixed batches dealt round-robin to the ranks; every batch draws its
randomness from (seed, its position), so the result does not depend on the number of ranks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from models import StochasticClassifier, noise_to_margin, summarize
from models.attacks import SUITES, default_eps, predict_draws, run_suite
from models.attacks.suite import Suite, SuiteResult, get_suite, merge_results

from .data import Dataset, as_float

log = logging.getLogger("training.evaluate")


def _batches(n: int, batch: int) -> list[slice]:
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


@torch.no_grad()
def clean_accuracy(
    model: StochasticClassifier, ds: Dataset, samples: int = 32, batch: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Accuracy of the prediction rule over ``samples`` draws, and of the noise-free network."""
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


def suite_key(suite: Suite, eps: float) -> str:
    """``standard_eps0.1`` (``standard-reduced_eps0.1`` for a cheaper variant): the key of a suite's result."""
    return f"{suite.family}_eps{eps:.4g}"


def evaluate_suite(
    model: StochasticClassifier,
    ds: Dataset,
    suite: str | Suite,
    *,
    eps: float | None = None,
    seed: int = 0,
    batch: int = 500,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
) -> SuiteResult:
    """Run a suite over ``ds`` in batches; batch ``i`` goes to rank ``i % world``.

    Under ``torch.distributed`` (world > 1) every rank returns the merged result of all ranks.
    """
    s = get_suite(suite)
    eps = default_eps(model.cfg.input_shape) if eps is None else eps
    device = next(model.parameters()).device
    model.eval()
    mine = [(i, sl) for i, sl in enumerate(_batches(len(ds), batch)) if i % world == rank]
    parts: list[tuple[int, SuiteResult]] = []
    bar = tqdm(mine, desc=f"{s.name} eps {eps:.3g}", unit="batch", disable=not progress or rank != 0)
    for i, sl in bar:
        x = as_float(ds.x[sl]).to(device)
        y = ds.y[sl].to(device)
        res = run_suite(model, x, y, s, eps=eps, seed=seed, offset=sl.start)
        res.x_adv = res.x_adv.cpu()
        parts.append((i, res))
        bar.set_postfix(robust=f"{sum(int(p.robust.sum()) for _, p in parts) / sum(p.n for _, p in parts):.3f}")
    if world > 1 and dist.is_initialized():
        gathered: list[list[tuple[int, SuiteResult]]] = [[] for _ in range(world)]
        dist.all_gather_object(gathered, parts)
        parts = [p for rank_parts in gathered for p in rank_parts]
    parts.sort(key=lambda p: p[0])
    return merge_results([p for _, p in parts])


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
    suites: list[str | Suite] | None = None,
    eps: list[float] | None = None,
    attack_n: int | None = None,
    seed: int = 0,
    batch: int = 500,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
    log: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Clean metrics on all of ``test`` and each suite at each eps on its first ``attack_n`` inputs.

    Returns:
        ``{"clean": {...}, "robust": {"standard_eps0.1": summary, ...}}``: every summary carries
        its suite's settings, n, robust accuracy and its Wilson interval.
    """
    metrics: dict[str, Any] = {
        "clean": {**clean_accuracy(model, test, samples, seed=seed), "n": len(test), "samples": samples}
    }
    if log:
        log(f"clean: {metrics['clean']}")
    sub = test if attack_n is None or attack_n >= len(test) else test.subset(slice(0, attack_n))
    metrics["robust"] = {}
    for e in eps or [default_eps(model.cfg.input_shape)]:
        for suite in suites or []:
            s = get_suite(suite)
            res = evaluate_suite(
                model, sub, s, eps=e, seed=seed, batch=batch, rank=rank, world=world, progress=progress
            )
            summary = res.summary()
            metrics["robust"][suite_key(s, e)] = summary
            if log:
                lo, hi = summary["robust_ci"]
                log(
                    f"{suite_key(s, e)}: robust {summary['robust_accuracy']:.4f} [{lo:.4f}, {hi:.4f}] "
                    f"(n={summary['n']}, {summary['seconds']} s)"
                )
    return metrics


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return rank, world


def main(argv: list[str] | None = None) -> None:
    """Evaluate checkpoints on their dataset's test split under named suites; one JSON line each."""
    from models import load_checkpoint

    from .data import load_dataset
    from .export import update_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Clean accuracy (all test inputs, T draws) and robust accuracy under named suites "
        "(standard: APGD-CE/DLR + PGD with EOT, noise-free PGD, Square, worst case per input; published: the "
        "stochastic-network papers' protocol), printed as one JSON line per checkpoint. Runs under torchrun.",
    )
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--dataset", default=None, help="default: the manifest's dataset")
    p.add_argument("--suite", nargs="+", default=["standard", "published"], choices=sorted(SUITES))
    p.add_argument("--eps", type=float, nargs="+", default=None, help="default: 0.1 (28x28) or 8/255 (larger)")
    p.add_argument("--samples", type=int, default=32, help="noise draws per clean prediction")
    p.add_argument("--attack-n", type=int, default=1000, help="test inputs to attack (0: all)")
    p.add_argument("--batch", type=int, default=500, help="inputs per attack batch (the unit dealt to ranks)")
    p.add_argument("--steps", type=int, default=None, help="reduced standard suite: gradient steps (default 100)")
    p.add_argument("--eot", type=int, default=None, help="reduced standard suite: EOT draws (default 20)")
    p.add_argument("--queries", type=int, default=None, help="reduced standard suite: Square queries (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--update-manifest",
        action="store_true",
        help="write the metrics and this command into each checkpoint's manifest (a new model id)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = _init_distributed()
    suites: list[Suite] = []
    for name in args.suite:
        s = SUITES[name]
        if name == "standard" and (args.steps or args.eot or args.queries is not None):
            s = s.reduced(
                steps=args.steps or s.steps,
                eot=args.eot or s.eot,
                queries=s.queries if args.queries is None else args.queries,
            )
        suites.append(s)
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        test = load_dataset(args.dataset or ck.manifest["dataset"], "test")
        t0 = time.process_time()
        metrics = evaluate(
            ck.model,
            test,
            samples=args.samples,
            suites=list(suites),
            eps=args.eps,
            attack_n=args.attack_n or None,
            seed=args.seed,
            batch=args.batch,
            rank=rank,
            world=world,
            progress=True,
            log=log.info if rank == 0 else None,
        )
        if rank != 0:
            continue
        metrics["evaluation"] = {
            "command": "python -m training.evaluate " + shlex.join(argv),
            "world": world,
            "cpu_seconds_rank0": round(time.process_time() - t0, 1),
        }
        if args.update_manifest:
            update_metrics(Path(path), metrics)
        sys.stdout.write(json.dumps({"checkpoint": str(path), **metrics}) + "\n")
        sys.stdout.flush()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Evaluation: clean accuracy over T draws, robust accuracy under a named suite, MI calibration.

    python -m training.evaluate checkpoints/fashion_mnist_mfdv --suite standard published --attack-n 2000
    python -m training.evaluate checkpoints/fashion_mnist_mfdv --suite adaptive --attack-n 500
    torchrun --nproc_per_node 2 -m training.evaluate checkpoints/fashion_mnist_mfdv --attack-n 2000

The suites (``models.attacks.suite``) are the protocols a reviewer accepts (``standard``), the
one the stochastic-network papers report (``published``) and the one that attacks the flag too
(``adaptive``). Every robust number is stored beside the suite's full settings and a Wilson 95%
interval. ``adaptive`` needs a flag threshold: by default it is calibrated on the checkpoint's
held-out training images (the split training held out, ``split_train_val`` with the manifest's
``val_size`` and ``seed``) so that at most ``--flag-rate`` (5%) of the correctly classified ones
are flagged, with mutual information for a stochastic model and the max-softmax probability for
a deterministic one; the result's ``flag`` says which signal, threshold and data. Under ``torchrun`` the attacked
inputs are split into fixed batches dealt round-robin to the ranks; every batch draws its
randomness from (seed, its position), so the result does not depend on the number of ranks.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import CliPositionalArg
from tqdm import tqdm

from models import StochasticClassifier, noise_to_margin, summarize
from models.attacks import SUITES, SuiteName, default_eps, run_suite
from models.attacks.flag import (
    UNION,
    FlagCalibration,
    FlagKind,
    FlagRule,
    calibrate_flags,
    default_signal,
)
from models.attacks.suite import Suite, SuiteResult, derive_seed, get_suite, merge_results

from .config import parse_command_line
from .data import Dataset, as_float

log = logging.getLogger("training.evaluate")


def _batches(n: int, batch: int) -> list[slice]:
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


@torch.no_grad()
def clean_outcomes(
    model: StochasticClassifier, ds: Dataset, samples: int = 32, batch: int = 1000, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Per input [N]: ``correct`` (the prediction rule over ``samples`` draws), ``correct_noise_free``,
    ``mutual_information`` and, for a stochastic model, ``noise_to_margin`` (one backbone pass per batch)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"correct": [], "correct_noise_free": [], "mutual_information": []}
    if model.stochastic:
        parts["noise_to_margin"] = []
    model.eval()
    for sl in _batches(len(ds), batch):
        x = as_float(ds.x[sl]).to(device)
        y = ds.y[sl].to(device)
        mu = model.features(x)  # (B, D): one backbone pass serves all four below
        u = summarize(model.head(mu, model.sample_noise(samples, g)))
        parts["correct"].append((u.label == y).cpu())
        parts["correct_noise_free"].append((model.head(mu, None)[0].argmax(-1) == y).cpu())
        parts["mutual_information"].append(u.mutual_information.cpu())
        if model.stochastic:
            parts["noise_to_margin"].append(noise_to_margin(model, mu=mu).cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def clean_accuracy(
    model: StochasticClassifier, ds: Dataset, samples: int = 32, batch: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Accuracy of the prediction rule over ``samples`` draws, and of the noise-free network."""
    o = clean_outcomes(model, ds, samples, batch, seed)
    out = {
        "accuracy": int(o["correct"].sum()) / len(ds),
        "accuracy_noise_free": int(o["correct_noise_free"].sum()) / len(ds),
        "mean_mutual_information": float(o["mutual_information"].mean()),
    }
    if "noise_to_margin" in o:
        out["noise_to_margin_median"] = float(o["noise_to_margin"].median())
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
    flag: FlagRule | FlagCalibration | None = None,
) -> SuiteResult:
    """Run a suite over ``ds`` in batches; batch ``i`` goes to rank ``i % world``.

    Under ``torch.distributed`` (world > 1) every rank returns the merged result of all ranks.
    ``flag``: the flag rule a flag-aware suite (``adaptive``) evades.
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
        res = run_suite(model, x, y, s, eps=eps, seed=seed, offset=sl.start, flag=flag)
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
def calibrate_suite_flag(
    model: StochasticClassifier,
    ds: Dataset,
    *,
    signal: FlagKind | None = None,
    rate: float = 0.05,
    samples: int = 64,
    seed: int = 0,
    source: str = "",
) -> FlagCalibration:
    """The flag threshold on clean inputs ``ds`` (``models.attacks.flag.calibrate_flag``): at most
    ``rate`` of the correctly classified ones flagged; ``signal`` defaults to the model's own
    (mutual information, or max_prob for a deterministic model)."""
    signal = signal or default_signal(model)
    return calibrate_suite_flags(model, ds, (signal,), rate=rate, samples=samples, seed=seed, source=source)[signal]


@torch.no_grad()
def calibrate_suite_flags(
    model: StochasticClassifier,
    ds: Dataset,
    signals: tuple[FlagKind, ...],
    *,
    rate: float = 0.05,
    samples: int = 64,
    seed: int = 0,
    source: str = "",
) -> dict[str, FlagCalibration]:
    """``calibrate_suite_flag`` for several signals from one pass over ``ds`` (the same draws for all)."""
    device = next(model.parameters()).device
    model.eval()
    return calibrate_flags(
        model,
        as_float(ds.x).to(device),
        ds.y.to(device),
        signals=signals,
        rate=rate,
        samples=samples,
        generator=torch.Generator().manual_seed(derive_seed(seed, "flag-calibration")),
        source=source or ds.name,
    )


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
    flag: FlagRule | FlagCalibration | None = None,
    calibration: Dataset | None = None,
    calibration_source: str | None = None,
    flag_signal: FlagKind | None = None,
    flag_rate: float = 0.05,
) -> dict[str, Any]:
    """Clean metrics on all of ``test`` and each suite at each eps on its first ``attack_n`` inputs.

    A flag-aware suite (``adaptive``) evades ``flag``; without one, the threshold is calibrated
    (``calibrate_suite_flag``, ``flag_signal`` and ``flag_rate``) on ``calibration`` (held-out
    clean images), or, without those, on the test inputs past ``attack_n`` (never attacked), or,
    when every test input is attacked, on the attacked inputs themselves (clean); the suite's
    summary states which (``flag.calibration.source``).

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
    if flag is None and any(get_suite(suite).flag_aware for suite in suites or []):
        if calibration is not None and len(calibration):
            held = calibration
            source = calibration_source or f"held-out clean images: {calibration.name} ({len(calibration)})"
        elif len(sub) < len(test):
            held = test.subset(slice(len(sub), len(test)))
            source = f"test images {len(sub)}..{len(test) - 1} of {test.name}, not attacked (no held-out data given)"
        else:
            held = sub
            source = (
                f"the attacked test images of {test.name} themselves, clean (no held-out data given, none left "
                "over): their clean flag rate is at most the rate by construction"
            )
        flag = calibrate_suite_flag(model, held, signal=flag_signal, rate=flag_rate, seed=seed, source=source)
        if log:
            d = flag.describe()
            log(
                f"flag for the adaptive suite: {d['rule']}, threshold {flag.rule.threshold:.6g}, calibrated on "
                f"{source}: {flag.flagged_correct:.4f} of {flag.n_correct} correctly classified flagged "
                f"(at most {flag_rate})"
            )
    for e in eps or [default_eps(model.cfg.input_shape)]:
        for suite in suites or []:
            s = get_suite(suite)
            res = evaluate_suite(
                model,
                sub,
                s,
                eps=e,
                seed=seed,
                batch=batch,
                rank=rank,
                world=world,
                progress=progress,
                flag=flag if s.flag_aware else None,
            )
            summary = res.summary()
            metrics["robust"][suite_key(s, e)] = summary
            if log:
                lo, hi = summary["robust_ci"]
                log(
                    f"{suite_key(s, e)}: robust {summary['robust_accuracy']:.4f} [{lo:.4f}, {hi:.4f}] "
                    f"(n={summary['n']}, {summary['seconds']} s)"
                )
                if s.flag_aware:
                    ue, (ulo, uhi) = summary["unflagged_error_under_attack"], summary["unflagged_error_ci"] or (0, 0)
                    rf, (rlo, rhi) = summary["robust_or_flagged_accuracy"], summary["robust_or_flagged_ci"]
                    log(
                        f"{suite_key(s, e)}: unflagged error under attack "
                        + ("n/a" if ue is None else f"{ue:.4f} [{ulo:.4f}, {uhi:.4f}]")
                        + f", robust-or-flagged accuracy {rf:.4f} [{rlo:.4f}, {rhi:.4f}]"
                    )
    return metrics


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return rank, world


def fixed_flag(
    threshold: str | None, signal: FlagKind | None, model: StochasticClassifier, manifest: dict[str, Any]
) -> FlagRule | None:
    """``--flag-threshold``: None (calibrate), ``manifest`` (the checkpoint's served flag, ``FlagRule.from_manifest``:
    its calibrated rule, or mutual information above ``mi_threshold`` for an older manifest) or a number."""
    if threshold is None:
        return None
    if threshold == "manifest":
        served = FlagRule.from_manifest(manifest)
        if signal is not None and signal != served.kind:
            raise SystemExit(
                f"--flag-threshold manifest is the checkpoint's {served.kind} flag: use --flag-signal auto or {served.kind}"
            )
        return served
    signal = signal or default_signal(model)
    if signal == UNION:
        raise SystemExit("--flag-threshold takes one number: a union rule's thresholds are calibrated together")
    try:
        return FlagRule(signal, float(threshold))
    except ValueError:
        raise SystemExit(f"--flag-threshold: a number or 'manifest', got {threshold!r}") from None


def held_out_images(manifest: dict[str, Any]) -> tuple[Dataset | None, str | None]:
    """The training images the checkpoint's training held out (``split_train_val`` with its
    ``val_size`` and ``seed``), and a line saying so; (None, None) where they cannot be rebuilt."""
    from .data import load_dataset
    from .train import split_train_val  # here: training.train imports this module

    targs = manifest.get("training", {}).get("args", {})
    name = targs.get("dataset") or manifest.get("dataset")
    if not name or targs.get("val_size") is None:
        log.warning("the manifest names no training dataset or val_size: the flag is calibrated on test images")
        return None, None
    val_size, seed = int(targs["val_size"]), int(targs.get("seed", 0))
    try:
        full = load_dataset(str(name), "train")
    except (FileNotFoundError, ValueError) as e:
        log.warning("cannot load the training images (%s): the flag is calibrated on test images", e)
        return None, None
    _, val = split_train_val(full, val_size, seed)
    if len(val) == 0:
        return None, None
    return val, held_out_source(str(name), val_size, seed, len(val))


def held_out_source(dataset: str, val_size: int, seed: int, n: int) -> str:
    """How the held-out training images were chosen: the line a flag calibrated on them reports."""
    return f"held-out training images of {dataset}: split_train_val(val_size={val_size}, seed={seed}), {n}"


class EvaluateConfig(BaseModel):
    """Clean accuracy (all test inputs, T draws) and robust accuracy under named suites (standard:
    APGD-CE/DLR + PGD with EOT, noise-free PGD, Square, worst case per input; published: the
    stochastic-network papers' protocol; adaptive: standard plus attacks that know the flag, with
    the unflagged error under attack and the robust-or-flagged accuracy, the flag threshold
    calibrated on held-out training images), printed as one JSON line per checkpoint. Runs under
    torchrun.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoints: CliPositionalArg[list[str]] = Field(description="checkpoint directories")
    dataset: str | None = Field(None, description="default: the manifest's dataset")
    suite: list[SuiteName] = Field(["standard", "published"], description="evaluation suites (models.attacks.suite)")
    eps: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="L-inf radii, each in [0, 1]; default: 0.1 (28x28) or 8/255 (larger)"
    )
    samples: int = Field(32, ge=1, description="noise draws per clean prediction")
    attack_n: int = Field(1000, ge=0, description="test inputs to attack (0: all)")
    batch: int = Field(500, ge=1, description="inputs per attack batch (the unit dealt to ranks)")
    steps: int | None = Field(None, ge=1, description="reduced standard/adaptive suite: gradient steps (100)")
    eot: int | None = Field(None, ge=1, description="reduced standard/adaptive suite: EOT draws (default 20)")
    queries: int | None = Field(None, ge=0, description="reduced standard/adaptive suite: Square queries (1000)")
    flag_rate: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="adaptive: the threshold flags at most this share of correctly classified held-out images",
    )
    flag_signal: Literal["auto", FlagKind] = Field(  # type: ignore[valid-type]
        "auto",
        description="adaptive: the flag kind (auto: the one the checkpoint serves, training.flag.checkpoint_signal)",
    )
    flag_threshold: str | None = Field(
        None,
        description="adaptive: a fixed threshold on the signal, or 'manifest' (the checkpoint's mi_threshold); "
        "default: calibrated on the held-out training images",
    )
    seed: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    update_manifest: bool = Field(
        False, description="write the metrics and this command into each checkpoint's manifest (a new model id)"
    )


def parse_args(argv: list[str] | None = None) -> EvaluateConfig:
    """``EvaluateConfig`` from command-line arguments (generated as ``training.train``'s); a bad value
    exits with status 2 and says why."""
    return parse_command_line(EvaluateConfig, argv, "python -m training.evaluate")


def main(argv: list[str] | None = None) -> None:
    """Evaluate checkpoints on their dataset's test split under named suites; one JSON line each."""
    from models import load_checkpoint

    from .data import load_dataset
    from .export import update_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = _init_distributed()
    suites: list[Suite] = []
    for name in args.suite:
        s = SUITES[name]
        if name in ("standard", "adaptive") and (args.steps or args.eot or args.queries is not None):
            s = s.reduced(
                steps=args.steps or s.steps,
                eot=args.eot or s.eot,
                queries=s.queries if args.queries is None else args.queries,
            )
        suites.append(s)
    adaptive = any(s.flag_aware for s in suites)
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        test = load_dataset(args.dataset or ck.manifest["dataset"], "test")
        t0 = time.process_time()
        signal = None if args.flag_signal == "auto" else args.flag_signal
        if adaptive and signal is None:
            from .flag import checkpoint_signal  # here: training.flag imports this module

            signal = checkpoint_signal(ck.manifest, ck.model)  # the kind the checkpoint serves
        flag = fixed_flag(args.flag_threshold, signal, ck.model, ck.manifest) if adaptive else None
        held, held_source = (None, None)
        if adaptive and flag is None:
            held, held_source = held_out_images(ck.manifest)
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
            flag=flag,
            calibration=held,
            calibration_source=held_source,
            flag_signal=signal,
            flag_rate=args.flag_rate,
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

"""The robustness report's plans and cells: what is measured, computing it, caching it, the results file.

A plan names the checkpoints (with the training command that makes each) and the measurements;
``run_plan`` trains any checkpoint of the plan that is missing (its training command lands in
the results), then computes each cell (one checkpoint x one measurement), caching each as JSON
so an interrupted run resumes where it stopped, and writes the results file. A cell is
recomputed when its checkpoint changed (the cache keys on the model id) or its parameters did.
``reports.render`` turns the results file into the docs; ``python -m reports`` runs both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models import load_checkpoint, wilson_interval
from models.attacks import SUITES, make_attack
from models.attacks.suite import Suite, derive_seed, judge_correct, run_suite
from training.data import Dataset, as_float, load_dataset
from training.detection import detection_report, signals
from training.evaluate import clean_accuracy, evaluate_suite

log = logging.getLogger("reports")

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path("docs/results/robustness.json")
CACHE = Path("runs/report-cache")


@dataclass(frozen=True)
class CheckpointSpec:
    """A checkpoint the report measures, and the training arguments that make it."""

    name: str
    path: str
    train: tuple[str, ...]
    evaluate: tuple[str, ...] = ()  # training.evaluate arguments run after training (committed checkpoints)


@dataclass(frozen=True)
class Plan:
    """What the report measures, on which checkpoints, with how many inputs."""

    name: str
    checkpoints: tuple[CheckpointSpec, ...]
    default: str  # the served checkpoint: EOT/steps curves and detection run on it
    baseline: str  # the same budget without the noise: the comparison the acceptance asks for
    eps_grid: tuple[float, ...]
    curve_n: int
    curve_steps: int
    curve_eot: int
    eot_grid: tuple[int, ...]
    steps_grid: tuple[int, ...]
    diag_eps: float
    diag_n: int
    diag_steps: int
    detection_eps: tuple[float, ...]
    detection_n: int
    detection_suite: str = "standard"
    main_key: str = "standard_eps0.1"  # the manifest result the main table shows (training.evaluate's key)
    threads: int = 1
    ablate: tuple[str, ...] = ()  # mfdv checkpoints whose sigma profile is swapped at test time (SIGMA_VARIANTS)

    def checkpoint(self, name: str) -> CheckpointSpec:
        return next(c for c in self.checkpoints if c.name == name)

    def curve_suite(self) -> Suite:
        return SUITES["standard"].reduced(steps=self.curve_steps, eot=self.curve_eot, queries=0)


_COMMON = ("--epochs", "6", "--mu-bound", "5", "--threads", "1")
_AT = ("--adv", "fgsm", "--adv-eot", "8", "--epochs", "10", "--mu-bound", "5", "--threads", "1")
# The committed pair: trained without the end-of-training suites, then evaluated by training.evaluate
# (standard + published on the first 2,000 test images) into the manifest.
_EVAL_2000 = ("--suite", "standard", "published", "--attack-n", "2000", "--threads", "1", "--update-manifest")

VANILLA_AT = CheckpointSpec(
    "vanilla+AT", "checkpoints/fashion_mnist_vanilla", ("--method", "vanilla", *_AT, "--no-attacks"), _EVAL_2000
)
MFDV_AT = CheckpointSpec(
    "mfdv+AT",
    "checkpoints/fashion_mnist_mfdv",
    ("--method", "mfdv", "--lam", "0.1", "--sigma-max", "6", *_AT, "--no-attacks"),
    _EVAL_2000,
)
VANILLA = CheckpointSpec("vanilla", "runs/report/vanilla", ("--method", "vanilla", *_COMMON, "--no-attacks"))
MFDV = CheckpointSpec(
    "mfdv", "runs/report/mfdv", ("--method", "mfdv", "--lam", "1", "--sigma-max", "6", *_COMMON, "--no-attacks")
)
FIXED = CheckpointSpec(
    "fixed", "runs/report/fixed", ("--method", "fixed", "--fixed-sigma", "6", *_COMMON, "--no-attacks")
)
FIXED_AT = CheckpointSpec(  # isotropic noise at mfdv+AT's mean sigma (5.48)
    "fixed+AT", "runs/report/fixed_at", ("--method", "fixed", "--fixed-sigma", "5.5", *_AT, "--no-attacks")
)

FULL = Plan(
    name="full",
    checkpoints=(
        VANILLA,
        MFDV,
        FIXED,
        CheckpointSpec("wca", "runs/report/wca", ("--method", "wca", "--lam", "1", *_COMMON, "--no-attacks")),
        VANILLA_AT,
        MFDV_AT,
        FIXED_AT,
        CheckpointSpec("wca+AT", "runs/report/wca_at", ("--method", "wca", "--lam", "1", *_AT, "--no-attacks")),
    ),
    default="mfdv+AT",
    baseline="vanilla+AT",
    eps_grid=(0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2),
    curve_n=500,
    curve_steps=50,
    curve_eot=10,
    eot_grid=(1, 2, 4, 8, 16, 32, 64),
    steps_grid=(10, 20, 50, 100, 200),
    diag_eps=0.1,
    diag_n=500,
    diag_steps=50,
    detection_eps=(0.1,),
    detection_n=1000,
    ablate=("mfdv+AT", "mfdv"),
)

CORE = dataclasses.replace(
    FULL,
    name="core",
    checkpoints=(VANILLA, MFDV, FIXED, VANILLA_AT, MFDV_AT, FIXED_AT),
    eps_grid=(0.0, 0.05, 0.1, 0.15),
    curve_n=200,
    eot_grid=(1, 4, 16, 64),
    steps_grid=(10, 50, 100),
    diag_n=200,
    detection_n=200,
)
"""The plan behind the committed results: the full plan's measurements on fewer inputs and grid points,
without wca and wca+AT: about two hours on two CPU cores (one to train fixed+AT) instead of most of a day."""

_TINY = ("--dataset", "bars", "--arch", "tiny_cnn", "--feature-dim", "8", "--max-steps", "40", "--batch-size", "32")
_TINY_AT = (*_TINY, "--adv", "fgsm", "--adv-eps", "0.15", "--adv-val-n", "64")
_TINY_FAST = ("--no-attacks", "--val-size", "100", "--eval-samples", "8", "--lr", "0.005", "--threads", "1")
_TINY_EVAL = ("--attack-n", "24", "--steps", "3", "--eot", "2", "--queries", "10", "--update-manifest")
TINY = Plan(
    name="tiny",
    checkpoints=(
        CheckpointSpec("vanilla", "vanilla", ("--method", "vanilla", *_TINY, *_TINY_FAST)),
        CheckpointSpec("mfdv", "mfdv", ("--method", "mfdv", "--lam", "0.1", *_TINY, *_TINY_FAST)),
        CheckpointSpec("vanilla+AT", "vanilla_at", ("--method", "vanilla", *_TINY_AT, *_TINY_FAST), _TINY_EVAL),
        CheckpointSpec("mfdv+AT", "mfdv_at", ("--method", "mfdv", "--lam", "0.1", *_TINY_AT, *_TINY_FAST), _TINY_EVAL),
    ),
    default="mfdv+AT",
    baseline="vanilla+AT",
    eps_grid=(0.0, 0.2, 0.4),
    curve_n=24,
    curve_steps=3,
    curve_eot=2,
    eot_grid=(1, 4),
    steps_grid=(2, 4),
    diag_eps=0.2,
    diag_n=24,
    diag_steps=3,
    detection_eps=(0.2,),
    detection_n=24,
    detection_suite="published",
    main_key="standard-reduced_eps0.1",
    ablate=("mfdv+AT",),
)

PLANS = {"full": FULL, "core": CORE, "tiny": TINY}


# -- cells --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One measurement: ``kind`` on checkpoint ``checkpoint`` with ``params``."""

    kind: str
    checkpoint: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind}/{self.checkpoint}/{p}"

    def cache_name(self) -> str:
        return hashlib.sha256(self.id.encode()).hexdigest()[:20] + ".json"


def plan_cells(plan: Plan) -> list[Cell]:
    """Every cell of the plan, cheapest kinds first."""
    cells = [Cell("eps", c.name, {"eps": e, "n": plan.curve_n}) for c in plan.checkpoints for e in plan.eps_grid]
    cells += [Cell("eot", plan.default, {"eot": k, "n": plan.diag_n, "eps": plan.diag_eps}) for k in plan.eot_grid]
    cells += [
        Cell("steps", plan.default, {"steps": s, "n": plan.diag_n, "eps": plan.diag_eps}) for s in plan.steps_grid
    ]
    cells += [
        Cell("detection", plan.default, {"eps": e, "n": plan.detection_n, "suite": plan.detection_suite})
        for e in plan.detection_eps
    ]
    cells += [
        Cell("sigma_ablation", name, {"variant": v, "n": plan.diag_n, "eps": plan.diag_eps})
        for name in plan.ablate
        for v in SIGMA_VARIANTS
    ]
    return cells


SIGMA_VARIANTS = ("learned", "isotropic_mean", "isotropic_rms", "shuffled", "off")
"""Test-time swaps of an mfdv head's per-dimension sigma: does the learned profile matter, or only its level?

``isotropic_mean``/``isotropic_rms``: every dimension gets the mean (root mean square) of the learned
sigmas; ``shuffled``: the learned values permuted across dimensions (same set, other dimensions);
``off``: sigma 0, the noise-free network served with the same rule."""


def with_sigma(model: Any, variant: str, seed: int = 0) -> Any:
    """A copy of an mfdv ``model`` whose per-dimension sigma is replaced per ``variant``."""
    import copy
    import math

    if variant == "learned":
        return model
    m = copy.deepcopy(model)
    head = m.head
    sig = head.sigma().detach()
    if variant == "isotropic_mean":
        new = torch.full_like(sig, float(sig.mean()))
    elif variant == "isotropic_rms":
        new = torch.full_like(sig, float(sig.pow(2).mean().sqrt()))
    elif variant == "shuffled":
        new = sig[torch.randperm(sig.numel(), generator=torch.Generator().manual_seed(seed))]
    elif variant == "off":
        new = torch.full_like(sig, 1e-8)
    else:
        raise ValueError(f"unknown sigma variant {variant!r}; choose one of {list(SIGMA_VARIANTS)}")
    head.sigma_max = None  # the new values are set exactly, whatever the cap
    with torch.no_grad():
        head.s.copy_(torch.tensor([math.log(math.expm1(max(float(v), 1e-8))) for v in new]))
    return m


def _subset(ds: Dataset, n: int) -> Dataset:
    return ds.subset(slice(0, min(n, len(ds))))


def _apgd_cell(model: Any, ds: Dataset, eps: float, steps: int, eot: int, seed: int) -> dict[str, Any]:
    """APGD-CE on each input, judged like the standard suite (64 fresh draws, both rules right)."""
    spec = make_attack("apgd", eps=eps, steps=steps, eot=eot, loss="ce").resolve(model.cfg.input_shape)
    x, y = as_float(ds.x), ds.y
    robust = 0
    for i in range(0, len(ds), 250):
        xs, ys = x[i : i + 250], y[i : i + 250]
        res = spec.run(model, xs, ys, generator=torch.Generator().manual_seed(derive_seed(seed, i, "apgd")))
        ok = judge_correct(model, xs, ys, "strict", 64, torch.Generator().manual_seed(derive_seed(seed, i, "clean")))
        ok &= judge_correct(
            model, res.x_adv, ys, "strict", 64, torch.Generator().manual_seed(derive_seed(seed, i, "judge"))
        )
        robust += int(ok.sum())
    return {
        "robust_accuracy": robust / len(ds),
        "robust_ci": list(wilson_interval(robust, len(ds))),
        "n": len(ds),
        "attack": {"key": spec.key(), **spec.model_dump()},
        "judge": "strict",
        "judge_samples": 64,
    }


def compute_cell(cell: Cell, plan: Plan, path: Path, seed: int = 0) -> dict[str, Any]:
    """Run one cell (blocking)."""
    ck = load_checkpoint(path)
    model = ck.model
    test = load_dataset(ck.manifest["dataset"], "test")
    p = cell.params
    if cell.kind == "eps":
        res = evaluate_suite(model, _subset(test, p["n"]), plan.curve_suite(), eps=p["eps"], seed=seed, batch=250)
        return res.summary()
    if cell.kind == "eot":
        return _apgd_cell(model, _subset(test, p["n"]), p["eps"], plan.diag_steps, p["eot"], seed)
    if cell.kind == "steps":
        return _apgd_cell(model, _subset(test, p["n"]), p["eps"], p["steps"], 20, seed)
    if cell.kind == "sigma_ablation":
        variant = with_sigma(model, p["variant"], seed)
        sub = _subset(test, p["n"])
        res = evaluate_suite(variant, sub, plan.curve_suite(), eps=p["eps"], seed=seed, batch=250).summary()
        res["clean_full"] = clean_accuracy(variant, test, samples=32, seed=seed)
        res["sigma"] = [round(float(v), 4) for v in variant.head.sigma().detach()]
        return res
    if cell.kind == "detection":
        return _detection_cell(model, ck.manifest, _subset(test, p["n"]), p["eps"], p["suite"], seed)
    raise ValueError(f"unknown cell kind {cell.kind!r}")


def _detection_cell(
    model: Any, manifest: dict[str, Any], ds: Dataset, eps: float, suite: str, seed: int
) -> dict[str, Any]:
    """Signals on clean inputs, on the suite's adversarial inputs, and after the detector-aware attack."""
    threshold = float(manifest.get("mi_threshold", 0.0))
    x, y = as_float(ds.x), ds.y
    g = torch.Generator().manual_seed(derive_seed(seed, "signals"))
    res = run_suite(model, x, y, suite, eps=eps, seed=seed)
    clean_s, adv_s = signals(model, x, 64, g), signals(model, res.x_adv, 64, g)
    clean_ok = res.clean_correct.cpu()
    fooled = ~res.robust.cpu()
    out: dict[str, Any] = {
        "suite": res.summary(),
        "standard": detection_report(clean_s, adv_s, clean_ok, fooled, threshold),
    }
    evade = make_attack("evade_mi", eps=eps, threshold=threshold, steps=100, eot=20).resolve(model.cfg.input_shape)
    adv = evade.run(model, x, y, generator=torch.Generator().manual_seed(derive_seed(seed, "evade")))
    wrong = ~judge_correct(model, adv.x_adv, y, "strict", 64, torch.Generator().manual_seed(derive_seed(seed, "ej")))
    evade_s = signals(model, adv.x_adv, 64, g)
    out["detector_aware"] = {
        "attack": {"key": evade.key(), **evade.model_dump()},
        "success_rate": float((wrong & clean_ok).sum()) / max(int(clean_ok.sum()), 1),
        **detection_report(clean_s, evade_s, clean_ok, wrong, threshold),
    }
    return out


# -- running the plan ---------------------------------------------------------------------------


def resolve_path(spec: CheckpointSpec, root: Path | None) -> Path:
    """Plan paths are relative to the repository (full plan) or to ``root`` (tiny plan)."""
    return (root / spec.path) if root is not None else REPO / spec.path


def train_missing(plan: Plan, root: Path | None) -> dict[str, float]:
    """Train (and evaluate, where the plan says so) every checkpoint that does not exist yet.

    Returns:
        Wall seconds per checkpoint trained now.
    """
    took: dict[str, float] = {}
    for spec in plan.checkpoints:
        path = resolve_path(spec, root)
        if (path / "manifest.json").is_file():
            continue
        log.info("training %s -> %s (missing)", spec.name, path)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "training.train", *spec.train, "--out", str(path), "--overwrite"]
        subprocess.run(cmd, check=True, cwd=REPO)
        if spec.evaluate:
            subprocess.run([sys.executable, "-m", "training.evaluate", str(path), *spec.evaluate], check=True, cwd=REPO)
        took[spec.name] = round(time.perf_counter() - t0, 1)
    return took


def checkpoint_info(spec: CheckpointSpec, path: Path) -> dict[str, Any]:
    """What the report shows about a checkpoint, from its manifest."""
    ck = load_checkpoint(path)
    m = ck.manifest
    sig = m.get("sigma", {})
    train = m.get("metrics", {}).get("train", {})
    return {
        "name": spec.name,
        "path": spec.path,
        "model_id": ck.model_id,
        "method": m["method"],
        "adversarial_training": m.get("adversarial_training"),
        "sigma": sig,
        "sigma_per_dim": [round(float(v), 4) for v in ck.model.head.sigma().detach().cpu().tolist()],
        "weight_norm_per_dim": [round(float(v), 4) for v in ck.model.head.fc.weight.detach().norm(dim=0).tolist()],
        "lambda": m.get("lambda"),
        "clean": m.get("metrics", {}).get("clean", {}),
        "robust": m.get("metrics", {}).get("robust", {}),
        "train_seconds": train.get("seconds"),
        "train_epochs": train.get("epochs", []),
        "training_command": m.get("training", {}).get("command"),
        "evaluation_command": m.get("evaluation", {}).get("command"),
        "model": m.get("model"),
    }


def run_plan(
    plan: Plan, *, cache: Path, out: Path, root: Path | None = None, shard: tuple[int, int] = (0, 1), seed: int = 0
) -> dict[str, Any]:
    """Train what is missing, compute this shard's cells (cached), and write the results file."""
    torch.set_num_threads(plan.threads)
    trained = train_missing(plan, root)
    cache.mkdir(parents=True, exist_ok=True)
    infos = {c.name: checkpoint_info(c, resolve_path(c, root)) for c in plan.checkpoints}
    cells = plan_cells(plan)
    mine = [c for i, c in enumerate(cells) if i % shard[1] == shard[0]]
    bar = tqdm(mine, desc=f"report {plan.name} {shard[0]}/{shard[1]}", unit="cell")
    for cell in bar:
        bar.set_postfix_str(cell.id[:60])
        path = cache / cell.cache_name()
        model_id = infos[cell.checkpoint]["model_id"]
        if path.is_file() and json.loads(path.read_text()).get("model_id") == model_id:
            continue
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = compute_cell(cell, plan, resolve_path(plan.checkpoint(cell.checkpoint), root), seed)
        record = {
            **asdict(cell),
            "id": cell.id,
            "model_id": model_id,
            "result": result,
            "cpu_seconds": round(time.process_time() - cpu0, 1),
            "wall_seconds": round(time.perf_counter() - wall0, 1),
            "threads": torch.get_num_threads(),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    return write_results(plan, cache, out, infos, trained)


def write_results(
    plan: Plan, cache: Path, out: Path, infos: dict[str, Any], trained: dict[str, float]
) -> dict[str, Any]:
    """Assemble the results file from the cache (cells of every shard that are done)."""
    cells: dict[str, Any] = {}
    missing = []
    for cell in plan_cells(plan):
        path = cache / cell.cache_name()
        record = json.loads(path.read_text()) if path.is_file() else None
        if record is None or record.get("model_id") != infos[cell.checkpoint]["model_id"]:
            missing.append(cell.id)
            continue
        cells[cell.id] = record
    results = {
        "plan": {k: v for k, v in asdict(plan).items() if k != "checkpoints"},
        "curve_suite": plan.curve_suite().describe(plan.eps_grid[-1]),
        "checkpoints": infos,
        "cells": cells,
        "missing": missing,
        "cpu_seconds": round(sum(c["cpu_seconds"] for c in cells.values()), 1),
        "trained_now_seconds": trained,
        "commands": {
            c.name: {
                "train": "python -m training.train " + " ".join([*c.train, "--out", c.path]),
                "evaluate": ("python -m training.evaluate " + " ".join([c.path, *c.evaluate])) if c.evaluate else None,
            }
            for c in plan.checkpoints
        },
        "main_key": plan.main_key,
        "torch": torch.__version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out)
    log.info("wrote %s (%d cells, %d missing)", out, len(cells), len(missing))
    return results

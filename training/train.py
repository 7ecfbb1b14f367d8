"""Train an MFDV-SNN (or a baseline), evaluate it, and export a checkpoint directory.

    python -m training.train --method mfdv --dataset fashion_mnist --out checkpoints/fashion_mnist_mfdv

Works under ``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on GPUs); rank 0
evaluates and exports.

Resumable: after every epoch the run's state goes to ``<out>/training_state.pt`` (written
atomically; plain tensors and numbers, loaded with ``weights_only=True``). Running the same
command again after an interruption continues from the last completed epoch, and ends with
the weights an uninterrupted run ends with (bitwise, for the same thread count); settings that
change what training computes must match (``RESUME_FREE`` lists those that may differ), and
``--overwrite`` starts afresh. The exported checkpoint replaces the folder, state included.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from models import ModelConfig, StochasticClassifier, build_model, resolve_device
from models.attacks import default_eps
from models.checkpoint import MANIFEST

from .adversarial import AdvConfig, adversarial_loss, perturb
from .config import TrainConfig, parse_args
from .data import Dataset, as_float, channel_stats, load_dataset
from .evaluate import evaluate, held_out_source
from .export import export_checkpoint
from .flag import objective_signal, served_flag

log = logging.getLogger("training")

STATE_FILE = "training_state.pt"
"""The resumable state of a run in progress, in its output folder (gone once the checkpoint is exported)."""
STATE_VERSION = 1
RESUME_FREE = frozenset({"out", "overwrite", "threads", "device", "attacks", "suite", "attack_n", "eval_samples"})
"""``TrainConfig`` fields that do not change what training computes: a resumed run may differ in them
(the thread count changes float summation order, so results then agree to rounding, not bitwise)."""


def training_fingerprint(args: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues."""
    return args.model_dump(exclude=set(RESUME_FREE))


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts: ``weights_only`` loadable) atomically:
    a temporary file in the same folder, flushed to disk, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_training_state(path: Path, args: TrainConfig) -> dict[str, Any]:
    """The saved state of an interrupted run, checked against this run's settings.

    Raises:
        ValueError: the state is of another version, or was saved by a run with other settings
            (the message names them).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a training state of version {STATE_VERSION}")
    saved, now = state["config"], training_fingerprint(args)
    # A setting added after the state was saved, left at its default, computes what the run computed.
    added_at_default = {k for k in now.keys() - saved.keys() if now[k] == TrainConfig.model_fields[k].default}
    diff = sorted(k for k in (saved.keys() | now.keys()) - added_at_default if saved.get(k) != now.get(k))
    if diff:
        detail = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} there, {now.get(k)!r} here" for k in diff)
        raise ValueError(
            f"{path} belongs to a run with other settings ({detail}); run the same command to resume it, "
            "or pass --overwrite to start afresh"
        )
    return state


def lambda_at(epoch_progress: float, lam: float, warmup: float) -> float:
    """Linear warm-up of the variance weight over ``warmup`` epochs (0: constant)."""
    if warmup <= 0:
        return lam
    return lam * min(1.0, epoch_progress / warmup)


def lr_at(step: int, total: int, lr: float) -> float:
    """Cosine decay to 0 with a 3% linear warm-up."""
    warm = max(1, int(0.03 * total))
    if step < warm:
        return lr * (step + 1) / warm
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def split_train_val(ds: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """A fixed, seeded held-out split (used to calibrate the mutual-information threshold)."""
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed + 12345))
    val_size = min(val_size, len(ds) // 5)
    return ds.subset(perm[val_size:]), ds.subset(perm[:val_size])


def make_model(args: TrainConfig, train: Dataset) -> StochasticClassifier:
    mean, std = channel_stats(train)
    c, h, w = train.input_shape
    if h != w:
        raise ValueError(f"square images only, got {h}x{w}")
    cfg = ModelConfig(
        **args.model_settings(), in_chans=c, img_size=h, num_classes=len(train.class_names), mean=mean, std=std
    )
    return build_model(cfg)


def adv_config(args: TrainConfig, img_size: int) -> AdvConfig:
    """The adversarial-training settings of a run (eps defaults to the dataset's standard budget)."""
    eps = default_eps((img_size, img_size)) if args.adv_eps is None else args.adv_eps
    return AdvConfig.build(
        args.adv,
        eps,
        steps=args.adv_steps,
        alpha=args.adv_alpha,
        eot=args.adv_eot,
        ramp=args.adv_ramp,
        beta=args.trades_beta,
        objective=args.adv_objective,
        inner_loss=args.adv_inner_loss,
        ccat_rho=args.ccat_rho,
        disagree_weight=args.disagree_weight,
        disagree_draws=args.disagree_draws,
        radius=args.adv_radius,
        clean_share=args.adv_clean_share,
    )


def _param_groups(model: StochasticClassifier, args: TrainConfig) -> list[dict[str, Any]]:
    """Weight decay on everything but the head's noise parameters, which get ``noise_lr_mult``."""
    head_w = model.head.fc.weight
    noise = {id(p) for p in model.head.noise_parameters()}
    others = [p for p in model.parameters() if p is not head_w]
    return [
        {"params": [p for p in others if id(p) not in noise], "weight_decay": args.weight_decay},
        {"params": [p for p in others if id(p) in noise], "weight_decay": 0.0, "lr_mult": args.noise_lr_mult},
        {"params": [head_w], "weight_decay": args.weight_decay + args.head_wd},
    ]


CHECK_ATTACK: dict[str, Any] = {"name": "pgd", "steps": 10, "eot": 4}
"""The held-out check's attack (``models.attacks.make_attack``; step eps/4, random start; one draw per
gradient on a deterministic model)."""
FLAG_KEEP = 0.99
"""Share of correctly classified clean held-out inputs the held-out check's flag keeps (CCAT's 99%)."""
FLAG_DRAWS = 8
"""Noise draws the held-out check's flag is judged on."""


def selection_metric(adv: AdvConfig) -> str:
    """The held-out figure that picks the kept epoch: robust accuracy, or robust-or-flagged for ccat/disagree."""
    return "robust_or_flagged" if adv.split else "robust"


def val_robust_accuracy(
    model: StochasticClassifier, val: Dataset, adv: AdvConfig, device: torch.device, seed: int
) -> dict[str, float]:
    """Clean and PGD-10 (``CHECK_ATTACK``) accuracy on held-out images, one draw each.

    The per-epoch check against catastrophic overfitting: cheap, and judged on single draws so
    a collapse shows at once. With a split objective (ccat, disagree) also ``robust_or_flagged``:
    the share of inputs right when clean (mean of ``FLAG_DRAWS`` draws) and, after the attack, still
    right or flagged, the flag a ``models.attacks.flag.FlagRule`` on ``flag_signal`` whose threshold
    (``threshold_for_rate``) keeps ``FLAG_KEEP`` of the correctly classified clean inputs;
    ``adv_flagged`` is the share of attacked inputs flagged.
    """
    from models.attacks import predict_draws, run_attack
    from models.attacks.flag import FlagRule, signal_value, threshold_for_rate
    from models.prediction import predict_label

    g = torch.Generator().manual_seed(seed + 777)
    g_flag = torch.Generator().manual_seed(seed + 778)  # apart, so the single-draw figures do not move
    correct = robust = 0
    name, steps, eot = CHECK_ATTACK["name"], CHECK_ATTACK["steps"], CHECK_ATTACK["eot"] if model.stochastic else 1
    signal = objective_signal(adv.objective)
    clean_scores, clean_ok, adv_ok, adv_logits = [], [], [], []
    for i in range(0, len(val), 500):
        x = as_float(val.x[i : i + 500]).to(device)
        y = val.y[i : i + 500].to(device)
        res = run_attack(name, model, x, y, eps=adv.eps, generator=g, steps=steps, eot=eot)
        correct += int((predict_draws(model, x, 1, g)[0].argmax(-1) == y).sum())
        robust += int((predict_draws(model, res.x_adv, 1, g)[0].argmax(-1) == y).sum())
        if adv.split:
            clean = predict_draws(model, x, FLAG_DRAWS, g_flag)  # (T, B, K)
            attacked = predict_draws(model, res.x_adv, FLAG_DRAWS, g_flag)
            clean_scores.append(signal_value(signal, clean).cpu())
            clean_ok.append((predict_label(clean) == y).cpu())
            adv_ok.append((predict_label(attacked) == y).cpu())
            adv_logits.append(attacked)
    out = {"clean": correct / len(val), "robust": robust / len(val)}
    if adv.split:
        scores, c_ok, a_ok = torch.cat(clean_scores), torch.cat(clean_ok), torch.cat(adv_ok)
        # with no clean input right the figure is 0 whatever the threshold: calibrate on them all
        rule = FlagRule(signal, threshold_for_rate(scores[c_ok] if c_ok.any() else scores, 1 - FLAG_KEEP))
        flagged = torch.cat([rule.flagged(logits).cpu() for logits in adv_logits])
        out["robust_or_flagged"] = float((c_ok & (a_ok | flagged)).double().mean())
        out["adv_flagged"] = float(flagged.double().mean())
    return out


def rollback_tolerance(p_best: float, p_last: float, n: int, z: float = 1.959963984540054) -> float:
    """How far the last epoch's held-out robust accuracy may sit under the best epoch's before we roll
    back: the 95% margin of a difference of two proportions measured on ``n`` inputs each."""
    return z * math.sqrt((p_best * (1 - p_best) + p_last * (1 - p_last)) / max(n, 1))


def fit(
    model: StochasticClassifier,
    train: Dataset,
    args: TrainConfig,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    val: Dataset | None = None,
    state_path: Path | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The training loop: CE on one noise draw per input, minus lambda times the head's variance term.

    With ``args.adv`` the inputs are replaced by adversarial ones (``training.adversarial``), the
    attack seeing the noise as the served model does. Then, when ``val`` is given, every epoch
    ends with PGD on ``args.adv_val_n`` held-out images and the kept weights follow ``args.adv_keep``:
    ``best`` restores the epoch with the best held-out robust accuracy (ties to the later epoch);
    ``collapse`` keeps the last epoch unless its robust accuracy there falls below the best epoch's
    by more than chance explains (``rollback_tolerance``): the guard against catastrophic
    overfitting alone. The stats say which epoch was kept and whether that was a rollback.

    With ``state_path``, rank 0 saves after every epoch what the rest of the run depends on (model,
    optimizer, step, RNG states, the per-epoch history and the best epoch's weights); ``resume``
    (such a state, ``load_training_state``) continues from it, with the same result as a run that
    was never interrupted.
    """
    model.to(device)
    opt = torch.optim.AdamW(_param_groups(model, args), lr=args.lr)
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    adv = adv_config(args, model.cfg.img_size)
    check = val.subset(slice(0, args.adv_val_n)) if (adv.active and val is not None and args.adv_val_n > 0) else None
    metric = selection_metric(adv)
    g = torch.Generator().manual_seed(args.seed)
    per_rank = len(train) // world
    steps_per_epoch = max(1, per_rank // args.batch_size)
    total = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    step = 0
    stats: dict[str, Any] = {}
    epochs: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    attack_s = update_s = seconds_before = 0.0
    epoch = 0
    resumed: list[int] = []
    if resume is not None:
        g.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if resume["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        step, epoch, stats, epochs = resume["step"], resume["epoch"], resume["stats"], resume["epochs"]
        attack_s, update_s, seconds_before = resume["attack_s"], resume["update_s"], resume["seconds"]
        resumed = [*resume["resumed"], epoch]
        if resume["best"] is not None:
            b = resume["best"]
            best = (b["robust"], b["epoch"], {k: v.to(device) for k, v in b["model"].items()})
    bar = tqdm(
        total=total,
        initial=step,
        disable=rank != 0 or (not sys.stderr.isatty() and os.environ.get("TQDM_FORCE") is None),
        desc=f"train {args.method}" + ("" if not adv.active else f"+{adv.kind}"),
        unit="step",
    )
    model.train()
    t0 = time.perf_counter()
    while step < total:
        perm = torch.randperm(len(train), generator=g)[rank * per_rank : (rank + 1) * per_rank]
        t_epoch = time.perf_counter()
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            x = as_float(train.x[idx]).to(device)
            y = train.y[idx].to(device)
            progress = step / steps_per_epoch
            lam = lambda_at(progress, args.lam, args.lam_warmup)
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, total, args.lr) * grp.get("lr_mult", 1.0)
            ta = time.perf_counter()
            x_adv = perturb(model, x, y, adv, adv.eps_at(progress), g) if adv.active else x
            tb = time.perf_counter()
            # (1, B, D): one fresh draw per input (disagree: more, for the mutual information)
            noise = model.sample_noise(adv.outer_draws, g, batch=len(idx))
            parts: dict[str, float] = {}
            if adv.active:
                task, logits, parts = adversarial_loss(net, x, x_adv, y, noise, adv)
            else:
                logits = net(x, noise)[0]  # (B, K)
                task = F.cross_entropy(logits, y)
            reg = model.head.regularizer()
            loss = task + lam * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            attack_s += tb - ta
            update_s += time.perf_counter() - tb
            step += 1
            acc = float((logits.argmax(-1) == y).float().mean())
            sig = float(model.head.sigma().detach().mean())
            stats = {"loss": float(loss.detach()), "ce": float(task.detach()), "acc": acc, "sigma": sig, "lam": lam}
            stats.update(parts)
            bar.update(1)
            if step % 20 == 0 or step == total:
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{acc:.3f}", sigma=f"{sig:.3f}")
            if rank == 0 and bar.disable and (step % 200 == 0 or step == total):
                log.info(
                    "step %d/%d loss %.4f acc %.3f sigma %.3f lam %.3g%s",
                    step, total, stats["loss"], acc, sig, lam, "".join(f" {k} {v:.3f}" for k, v in parts.items()),
                )  # fmt: skip
        epoch += 1
        rec: dict[str, float] = {"epoch": epoch, "seconds": round(time.perf_counter() - t_epoch, 1)}
        if check is not None and rank == 0:
            model.eval()
            rec.update(val_robust_accuracy(model, check, adv, device, args.seed))
            model.train()
            if best is None or rec[metric] >= best[0]:  # ties go to the later epoch
                best = (rec[metric], epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
            extra = (
                ""
                if metric == "robust"
                else f", robust or flagged {rec[metric]:.4f} (flagged {rec['adv_flagged']:.3f})"
            )
            log.info(
                "epoch %d: held-out clean %.4f, PGD-10 eps %.3g %.4f%s (best %.4f at epoch %d)",
                epoch, rec["clean"], adv.eps, rec["robust"], extra, best[0], best[1],
            )  # fmt: skip
        epochs.append(rec)
        if state_path is not None and rank == 0:
            save_training_state(
                state_path,
                {
                    "version": STATE_VERSION,
                    "config": training_fingerprint(args),
                    "step": step,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "generator": g.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "stats": stats,
                    "epochs": epochs,
                    "best": None if best is None else {"robust": best[0], "epoch": best[1], "model": best[2]},
                    "attack_s": attack_s,
                    "update_s": update_s,
                    "seconds": seconds_before + time.perf_counter() - t0,
                    "resumed": resumed,
                },
            )
            log.info("epoch %d done (step %d/%d); state saved to %s", epoch, step, total, state_path)
    bar.close()
    stats = dict(stats)
    stats["steps"] = step
    stats["seconds"] = round(seconds_before + time.perf_counter() - t0, 1)
    stats["epochs"] = epochs
    if resumed:
        stats["resumed_after_epochs"] = resumed
    if adv.active:
        # Time of an adversarial step relative to the clean update it wraps (measured in this run).
        stats["epoch_time_vs_clean"] = round((attack_s + update_s) / max(update_s, 1e-9), 2)
    if best is not None:
        last = epochs[-1][metric]
        tol = rollback_tolerance(best[0], last, len(check))
        roll = best[1] != epoch and (args.adv_keep == "best" or last < best[0] - tol)
        stats["kept_epoch"] = best[1] if roll else epoch
        stats["rolled_back"] = roll
        stats["rollback_tolerance"] = round(tol, 4)
        if roll:
            log.warning(
                "rolled back to epoch %d: held-out PGD accuracy %.4f there vs %.4f at the last epoch "
                "(--adv-keep %s; the drop that chance explains is %.4f)",
                best[1], best[0], last, args.adv_keep, tol,
            )  # fmt: skip
            model.load_state_dict(best[2])
    model.eval()
    return stats


def adversarial_summary(args: TrainConfig, img_size: int, stats: dict[str, Any]) -> dict[str, Any] | None:
    """What the manifest says about adversarial training (None without it)."""
    adv = adv_config(args, img_size)
    if not adv.active:
        return None
    return {
        **adv.to_dict(),
        "epoch_time_vs_clean": stats.get("epoch_time_vs_clean"),
        "kept_epoch": stats.get("kept_epoch"),
        "rolled_back": stats.get("rolled_back", False),
        "rollback_tolerance": stats.get("rollback_tolerance"),
        "keep": args.adv_keep,
        "held_out_check": {
            "n": args.adv_val_n,
            "attack": CHECK_ATTACK["name"],
            "steps": CHECK_ATTACK["steps"],
            "alpha": "eps/4",
            "eot": CHECK_ATTACK["eot"],
            **(
                {
                    "selects_on": selection_metric(adv),
                    "flag": objective_signal(adv.objective),
                    "flag_keeps_clean": FLAG_KEEP,
                    "flag_draws": FLAG_DRAWS,
                }
                if adv.split
                else {}
            ),
        },
        "epochs": stats.get("epochs", []),
    }


def run(args: TrainConfig, argv: list[str] | None = None) -> Path | None:
    """Train, evaluate and export; returns the checkpoint path (None on ranks > 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"--device {args.device}: {e}") from None
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds_name = Path(args.dataset).stem if Path(args.dataset).exists() else args.dataset.replace("-", "_")
    out = Path(args.out or f"checkpoints/{ds_name}_{args.method}")
    state_path = out / STATE_FILE
    resume = None
    if out.exists() and not args.overwrite:
        # An interrupted run's folder (its state only) resumes; an empty folder is free; anything else is kept.
        if (out / MANIFEST).exists() or not out.is_dir() or (not state_path.exists() and any(out.iterdir())):
            raise SystemExit(f"{out} already exists; pass --overwrite to replace it or choose another --out")
        if state_path.exists():
            resume = load_training_state(state_path, args)
    elif args.overwrite and rank == 0 and out.is_dir():
        state_path.unlink(missing_ok=True)  # --overwrite starts afresh
    torch.manual_seed(args.seed)
    full = load_dataset(args.dataset, "train")
    test = load_dataset(args.dataset, "test")
    train, val = split_train_val(full, args.val_size, args.seed)
    model = make_model(args, train)
    if rank == 0:
        log.info(
            "training %s/%s on %s: %d train, %d val, %d test; world %d on %s",
            args.method,
            args.arch,
            args.dataset,
            len(train),
            len(val),
            len(test),
            world,
            device,
        )
    if resume is not None and rank == 0:
        log.info("resuming the run in %s after epoch %d (step %d)", out, resume["epoch"], resume["step"])
    train_stats = fit(model, train, args, device, rank, world, val=val, state_path=state_path, resume=resume)
    if world > 1:
        dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return None
    adv = adv_config(args, model.cfg.img_size)
    flag, mi_threshold = served_flag(
        model,
        adv.objective if adv.active else None,
        val,
        held_out_source(args.dataset, args.val_size, args.seed, len(val)),
    )
    metrics = evaluate(
        model,
        test,
        samples=args.eval_samples,
        suites=list(args.suite) if args.attacks else [],
        attack_n=args.attack_n,
        seed=args.seed,
        progress=True,
        log=log.info,
        flag=flag,  # an adaptive suite evades the flag the checkpoint will serve, calibrated on the held-out split
        calibration=val,
        calibration_source=held_out_source(args.dataset, args.val_size, args.seed, len(val)),
    )
    metrics["train"] = train_stats
    command = "python -m training.train " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = export_checkpoint(
        model,
        out,
        class_names=train.class_names,
        dataset=ds_name,
        train_args=args.model_dump(),
        metrics=metrics,
        mi_threshold=mi_threshold,
        command=command,
        overwrite=args.overwrite or not (out / MANIFEST).exists(),  # a folder with only our state is ours
        extra={
            "flag": flag.describe(),
            "adversarial_training": adversarial_summary(args, model.cfg.img_size, train_stats),
        },
    )
    log.info("exported %s", path)
    if world > 1:
        dist.destroy_process_group()
    return path


def main(argv: list[str] | None = None) -> Any:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        path = run(args, argv)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    if path is not None:
        print(path)


if __name__ == "__main__":
    main()

"""Train an MFDV-SNN (or a baseline), evaluate it, and export a checkpoint directory.

    python -m training.train --method mfdv --dataset fashion_mnist --out checkpoints/fashion_mnist_mfdv

Works under ``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on GPUs); rank 0
evaluates and exports.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from models import METHODS, ModelConfig, StochasticClassifier, build_model, list_backbones, resolve_device
from models.attacks import SUITES, default_eps

from .adversarial import ADV_KINDS, AdvConfig, adversarial_loss, perturb
from .data import Dataset, as_float, channel_stats, load_dataset
from .evaluate import calibrate_mi_threshold, evaluate
from .export import export_checkpoint

log = logging.getLogger("training")


@dataclass
class TrainArgs:
    method: str = "mfdv"
    arch: str = "small_cnn"
    dataset: str = "fashion_mnist"
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    feature_dim: int = 64
    lam: float = 1.0
    lam_warmup: float = 1.0
    sigma_init: float = 0.5
    fixed_sigma: float = 1.0
    sigma_max: float | None = 6.0
    mu_bound: float | None = 5.0
    entropy_max: float | None = 2.0
    head_wd: float = 0.0
    noise_lr_mult: float = 20.0
    val_size: int = 5000
    seed: int = 0
    eval_samples: int = 32
    attack_n: int | None = 1000
    suite: tuple[str, ...] = ("standard", "published")
    no_attacks: bool = False
    max_steps: int | None = None
    adv: str = "none"
    adv_eps: float | None = None
    adv_steps: int | None = None
    adv_alpha: float | None = None
    adv_eot: int = 1
    adv_ramp: float = 1.0
    trades_beta: float = 6.0
    adv_val_n: int = 1000
    threads: int | None = None
    device: str = "auto"
    out: str | None = None
    overwrite: bool = False


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


def make_model(args: TrainArgs, train: Dataset) -> StochasticClassifier:
    mean, std = channel_stats(train)
    c, h, w = train.input_shape
    if h != w:
        raise ValueError(f"square images only, got {h}x{w}")
    cfg = ModelConfig(
        arch=args.arch,
        method=args.method,
        in_chans=c,
        img_size=h,
        num_classes=len(train.class_names),
        feature_dim=args.feature_dim,
        mean=mean,
        std=std,
        sigma_init=args.sigma_init,
        fixed_sigma=args.fixed_sigma,
        sigma_max=args.sigma_max,
        entropy_max=args.entropy_max,
        mu_bound=args.mu_bound,
    )
    return build_model(cfg)


def adv_config(args: TrainArgs, img_size: int) -> AdvConfig:
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
    )


def _param_groups(model: StochasticClassifier, args: TrainArgs) -> list[dict[str, Any]]:
    """Weight decay on everything but the head's noise parameters, which get ``noise_lr_mult``."""
    head_w = model.head.fc.weight
    noise = {id(p) for p in model.head.noise_parameters()}
    others = [p for p in model.parameters() if p is not head_w]
    return [
        {"params": [p for p in others if id(p) not in noise], "weight_decay": args.weight_decay},
        {"params": [p for p in others if id(p) in noise], "weight_decay": 0.0, "lr_mult": args.noise_lr_mult},
        {"params": [head_w], "weight_decay": args.weight_decay + args.head_wd},
    ]


def val_robust_accuracy(
    model: StochasticClassifier, val: Dataset, adv: AdvConfig, device: torch.device, seed: int
) -> dict[str, float]:
    """Clean and PGD-10 (step eps/4, EOT 4, random start) accuracy on held-out images, one draw each.

    The per-epoch check against catastrophic overfitting: cheap, and judged on single draws so
    a collapse shows at once.
    """
    from models.attacks import predict_draws, run_attack

    g = torch.Generator().manual_seed(seed + 777)
    correct = robust = 0
    eot = 4 if model.stochastic else 1
    for i in range(0, len(val), 500):
        x = as_float(val.x[i : i + 500]).to(device)
        y = val.y[i : i + 500].to(device)
        res = run_attack("pgd", model, x, y, eps=adv.eps, generator=g, steps=10, eot=eot)
        correct += int((predict_draws(model, x, 1, g)[0].argmax(-1) == y).sum())
        robust += int((predict_draws(model, res.x_adv, 1, g)[0].argmax(-1) == y).sum())
    return {"clean": correct / len(val), "robust": robust / len(val)}


def fit(
    model: StochasticClassifier,
    train: Dataset,
    args: TrainArgs,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    val: Dataset | None = None,
) -> dict[str, Any]:
    """The training loop: CE on one noise draw per input, minus lambda times the head's variance term.

    With ``args.adv`` the inputs are replaced by adversarial ones (``training.adversarial``), the
    attack seeing the noise as the served model does. Then, when ``val`` is given, every epoch
    ends with PGD on ``args.adv_val_n`` held-out images, and the weights of the most robust
    epoch are kept (a guard against catastrophic overfitting; the stats say when it rolled back).
    """
    model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(_param_groups(model, args), lr=args.lr)
    adv = adv_config(args, model.cfg.img_size)
    check = val.subset(slice(0, args.adv_val_n)) if (adv.active and val is not None and args.adv_val_n > 0) else None
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
    attack_s = update_s = 0.0
    bar = tqdm(
        total=total,
        disable=rank != 0 or (not sys.stderr.isatty() and os.environ.get("TQDM_FORCE") is None),
        desc=f"train {args.method}" + ("" if not adv.active else f"+{adv.kind}"),
        unit="step",
    )
    model.train()
    t0 = time.perf_counter()
    epoch = 0
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
            noise = model.sample_noise(1, g, batch=len(idx))  # (1, B, D): one fresh draw per input
            if adv.active:
                task, logits = adversarial_loss(net, x, x_adv, y, noise, adv)
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
            bar.update(1)
            if step % 20 == 0 or step == total:
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{acc:.3f}", sigma=f"{sig:.3f}")
            if rank == 0 and bar.disable and (step % 200 == 0 or step == total):
                log.info("step %d/%d loss %.4f acc %.3f sigma %.3f lam %.3g", step, total, stats["loss"], acc, sig, lam)
        epoch += 1
        rec: dict[str, float] = {"epoch": epoch, "seconds": round(time.perf_counter() - t_epoch, 1)}
        if check is not None and rank == 0:
            model.eval()
            rec.update(val_robust_accuracy(model, check, adv, device, args.seed))
            model.train()
            if best is None or rec["robust"] >= best[0]:  # ties go to the later epoch
                best = (rec["robust"], epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
            log.info(
                "epoch %d: held-out clean %.4f, PGD-10 eps %.3g %.4f (best %.4f at epoch %d)",
                epoch, rec["clean"], adv.eps, rec["robust"], best[0], best[1],
            )  # fmt: skip
        epochs.append(rec)
    bar.close()
    stats["steps"] = step
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    stats["epochs"] = epochs
    if adv.active:
        # Time of an adversarial step relative to the clean update it wraps (measured in this run).
        stats["epoch_time_vs_clean"] = round((attack_s + update_s) / max(update_s, 1e-9), 2)
    if best is not None:
        stats["kept_epoch"] = best[1]
        stats["rolled_back"] = best[1] != epoch
        if best[1] != epoch:
            log.warning(
                "rolled back to epoch %d: held-out PGD accuracy %.4f there vs %.4f at the last epoch "
                "(catastrophic overfitting guard)",
                best[1], best[0], epochs[-1]["robust"],
            )  # fmt: skip
            model.load_state_dict(best[2])
    model.eval()
    return stats


def adversarial_summary(args: TrainArgs, img_size: int, stats: dict[str, Any]) -> dict[str, Any] | None:
    """What the manifest says about adversarial training (None without it)."""
    adv = adv_config(args, img_size)
    if not adv.active:
        return None
    return {
        **adv.to_dict(),
        "epoch_time_vs_clean": stats.get("epoch_time_vs_clean"),
        "kept_epoch": stats.get("kept_epoch"),
        "rolled_back": stats.get("rolled_back", False),
        "held_out_check": {"n": args.adv_val_n, "attack": "pgd", "steps": 10, "alpha": "eps/4", "eot": 4},
        "epochs": stats.get("epochs", []),
    }


def _float_or_none(text: str) -> float | None:
    """A float, or ``none`` to switch the option off."""
    return None if text.lower() == "none" else float(text)


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    d = TrainArgs()
    p = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--arch", choices=list_backbones(), default=d.arch)
    p.add_argument("--dataset", default=d.dataset, help="fashion_mnist | mnist | path/to.npz | path/to/image_folder")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--feature-dim", "-D", type=int, default=d.feature_dim, help="feature dimension D")
    p.add_argument("--lam", type=float, default=d.lam, help="weight lambda of the variance term")
    p.add_argument("--lam-warmup", type=float, default=d.lam_warmup, help="epochs of linear lambda warm-up (0: none)")
    p.add_argument("--sigma-init", type=float, default=d.sigma_init)
    p.add_argument("--fixed-sigma", type=float, default=d.fixed_sigma, help="noise std of the 'fixed' baseline")
    p.add_argument(
        "--sigma-max",
        type=_float_or_none,
        default=d.sigma_max,
        help="cap on the learned sigma of mfdv ('none': no cap)",
    )
    p.add_argument(
        "--mu-bound",
        type=_float_or_none,
        default=d.mu_bound,
        help="bound features: mu = b*tanh(mu/b) ('none': unbounded)",
    )
    p.add_argument(
        "--entropy-max",
        type=float,
        default=d.entropy_max,
        help="wca: entropy per dim past which the alignment term stops",
    )
    p.add_argument("--head-wd", type=float, default=d.head_wd, help="extra weight decay on the classifier W")
    p.add_argument(
        "--noise-lr-mult",
        type=float,
        default=d.noise_lr_mult,
        help="learning-rate multiplier for the noise parameters (mfdv s, wca L)",
    )
    p.add_argument("--val-size", type=int, default=d.val_size, help="held-out training images for MI calibration")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-samples", type=int, default=d.eval_samples, help="noise draws T per prediction")
    p.add_argument("--attack-n", type=int, default=d.attack_n, help="test inputs to attack (0: all)")
    p.add_argument(
        "--suite",
        nargs="+",
        choices=sorted(SUITES),
        default=list(d.suite),
        help="evaluation suites run after training (models.attacks.suite)",
    )
    p.add_argument("--no-attacks", action="store_true", help="skip robust evaluation")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    p.add_argument("--adv", choices=ADV_KINDS, default=d.adv, help="adversarial training (default none)")
    p.add_argument("--adv-eps", type=float, default=None, help="L-inf radius (default 0.1 for 28x28, 8/255 for 32x32)")
    p.add_argument("--adv-steps", type=int, default=None, help="inner steps for pgd/trades (default 10)")
    p.add_argument(
        "--adv-alpha", type=float, default=None, help="inner step size (default fgsm 1.25 eps, else 2.5 eps/steps)"
    )
    p.add_argument("--adv-eot", type=int, default=d.adv_eot, help="noise draws averaged per inner gradient")
    p.add_argument("--adv-ramp", type=float, default=d.adv_ramp, help="epochs of linear eps ramp (0: none)")
    p.add_argument("--trades-beta", type=float, default=d.trades_beta, help="weight of the TRADES KL term")
    p.add_argument(
        "--adv-val-n",
        type=int,
        default=d.adv_val_n,
        help="held-out images attacked after each epoch; the most robust epoch is kept (0: keep the last)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--out", default=None, help="checkpoint directory (default checkpoints/<dataset>_<method>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    ns = p.parse_args(argv)
    args = TrainArgs(**{k: tuple(v) if k == "suite" else v for k, v in vars(ns).items()})
    if args.attack_n == 0:
        args.attack_n = None
    return args


def run(args: TrainArgs, argv: list[str] | None = None) -> Path | None:
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
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} already exists; pass --overwrite to replace it or choose another --out")
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
    train_stats = fit(model, train, args, device, rank, world, val=val)
    if world > 1:
        dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return None
    metrics = evaluate(
        model,
        test,
        samples=args.eval_samples,
        suites=[] if args.no_attacks else list(args.suite),
        attack_n=args.attack_n,
        seed=args.seed,
        progress=True,
        log=log.info,
    )
    metrics["train"] = train_stats
    threshold = calibrate_mi_threshold(model, val, samples=args.eval_samples, seed=args.seed)
    command = "python -m training.train " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = export_checkpoint(
        model,
        out,
        class_names=train.class_names,
        dataset=ds_name,
        train_args=asdict(args),
        metrics=metrics,
        mi_threshold=threshold,
        command=command,
        overwrite=args.overwrite,
        extra={
            "mi_threshold_calibration": {"quantile": 0.95, "n": len(val), "samples": args.eval_samples},
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

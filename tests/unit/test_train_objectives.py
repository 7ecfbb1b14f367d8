"""Adversarial training's outer objectives: at (unchanged), ccat and disagree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import training.train as tt
from models.attacks import make_attack
from models.attacks.base import wrong_confidence_loss
from models.checkpoint import MANIFEST
from training.adversarial import (
    AdvConfig,
    adversarial_loss,
    ccat_lambda,
    clean_count,
    mutual_information,
    perturb,
)
from training.config import TrainConfig, parse_args
from training.data import as_float

from ..fixtures import make_tiny_dataset


def _args(**kw: object) -> TrainConfig:
    base = {"method": "mfdv", "arch": "tiny_cnn", "feature_dim": 8, "batch_size": 32, "epochs": 2, "lr": 5e-3}
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_at_is_todays_adversarial_training() -> None:
    """The default objective gives the weights and loss the code gave before objectives existed
    (recorded from commit 92dd23a~1 on this configuration)."""
    torch.manual_seed(0)
    ds = make_tiny_dataset(n=160)
    args = _args(adv="fgsm", adv_eot=2, adv_steps=2, adv_val_n=40)
    assert args.adv_objective == "at" and args.adv_inner_loss == "ce"
    model = tt.make_model(args, ds)
    stats = tt.fit(model, ds, args, torch.device("cpu"), val=ds)
    total = sum(float(v.double().abs().sum()) for v in model.state_dict().values() if v.is_floating_point())
    assert total == pytest.approx(167.92118755662796, rel=1e-5)
    assert stats["loss"] == pytest.approx(1.3726301193237305, rel=1e-4)
    assert [e["robust"] for e in stats["epochs"]] == [0.75, 1.0]
    assert "robust_or_flagged" not in stats["epochs"][0]


@pytest.mark.parametrize(
    ("objective", "inner"), [("at", "ce"), ("at", "conf"), ("ccat", "ce"), ("ccat", "conf"), ("disagree", "ce")]
)
def test_each_objective_gives_a_finite_loss_and_a_gradient_to_every_parameter(objective: str, inner: str) -> None:
    torch.manual_seed(0)
    ds = make_tiny_dataset(n=64)
    args = _args(adv="fgsm", adv_eot=2, adv_objective=objective, adv_inner_loss=inner, disagree_draws=4)
    model = tt.make_model(args, ds)
    adv = tt.adv_config(args, model.cfg.img_size)
    g = torch.Generator().manual_seed(1)
    x, y = as_float(ds.x[:16]), ds.y[:16]
    model.train()
    x_adv = perturb(model, x, y, adv, adv.eps, g)
    noise = model.sample_noise(adv.outer_draws, g, batch=16)
    assert noise.shape[0] == (5 if objective == "disagree" else 1)
    loss, logits, parts = adversarial_loss(model, x, x_adv, y, noise, adv)
    assert logits.shape == (16, 4) and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    if objective == "ccat":
        assert 0.0 <= parts["ccat_lambda"] < 1e-6  # |delta|_inf reaches eps: the target is uniform
    if objective == "disagree":
        assert parts["mi_clean"] >= 0 and parts["mi_adv"] >= 0


def test_split_batches_attack_only_the_second_half() -> None:
    ds = make_tiny_dataset(n=32)
    args = _args(adv="pgd", adv_steps=2, adv_objective="ccat")
    model = tt.make_model(args, ds).eval()
    adv = tt.adv_config(args, model.cfg.img_size)
    x, y = as_float(ds.x[:9]), ds.y[:9]
    x_adv = perturb(model, x, y, adv, adv.eps, torch.Generator().manual_seed(0))
    h = clean_count(9)
    assert h == 4 and torch.equal(x_adv[:h], x[:h])
    moved = (x_adv[h:] - x[h:]).abs().flatten(1).amax(1)
    assert (moved > 0).all() and (moved <= adv.eps + 1e-6).all()


def test_the_clean_share_sets_how_much_of_a_split_batch_is_attacked() -> None:
    ds = make_tiny_dataset(n=32)
    args = _args(adv="pgd", adv_steps=2, adv_objective="disagree", adv_clean_share=0.25)
    model = tt.make_model(args, ds).eval()
    adv = tt.adv_config(args, model.cfg.img_size)
    x, y = as_float(ds.x[:16]), ds.y[:16]
    x_adv = perturb(model, x, y, adv, adv.eps, torch.Generator().manual_seed(0))
    h = clean_count(16, 0.25)
    assert h == 4 and torch.equal(x_adv[:h], x[:h])
    assert ((x_adv[h:] - x[h:]).abs().flatten(1).amax(1) > 0).all()
    assert adv.to_dict()["batch"] == "25% clean, the rest adversarial" and adv.to_dict()["clean_share"] == 0.25
    at = tt.adv_config(_args(adv="pgd", adv_steps=2), model.cfg.img_size)
    assert "clean_share" not in at.to_dict()  # all adversarial: the record keeps today's keys


def test_uniform_radius_spreads_the_perturbations_sizes_and_so_ccat_lambda() -> None:
    ds = make_tiny_dataset(n=64)
    args = _args(adv="fgsm", adv_objective="ccat", adv_radius="uniform", ccat_rho=1.0)
    model = tt.make_model(args, ds).eval()
    adv = tt.adv_config(args, model.cfg.img_size)
    x, y = as_float(ds.x[:64]), ds.y[:64]
    x_adv = perturb(model, x, y, adv, adv.eps, torch.Generator().manual_seed(0))
    size = (x_adv - x)[32:].abs().flatten(1).amax(1)
    assert (size <= adv.eps + 1e-6).all() and float(size.min()) < 0.3 * adv.eps and float(size.max()) > 0.7 * adv.eps
    lam = ccat_lambda((x_adv - x)[32:], adv.eps, 1.0)
    assert float(lam.min()) < 0.3 and float(lam.max()) > 0.7
    full = perturb(model, x, y, tt.adv_config(_args(adv="fgsm", adv_objective="ccat"), 14), adv.eps)
    assert ((full - x)[32:].abs().flatten(1).amax(1) > adv.eps - 1e-6).all()  # one step ends on the sphere


def test_ccat_target_decays_to_uniform_with_the_perturbation() -> None:
    eps = 0.1
    delta = torch.zeros(3, 1, 2, 2)
    delta[1, 0, 0, 0] = -0.05
    delta[2, 0, 1, 1] = 0.1
    assert ccat_lambda(delta, eps, 1.0).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert ccat_lambda(delta, eps, 10.0).tolist() == pytest.approx([1.0, 0.5**10, 0.0])
    assert ccat_lambda(delta, 0.0, 10.0).tolist() == [1.0, 1.0, 1.0]

    # The loss is CE towards one-hot on the clean half and towards the mix on the adversarial half.
    cfg = AdvConfig.build("fgsm", eps, objective="ccat", ccat_rho=1.0)
    x = torch.full((4, 1, 2, 2), 0.5)
    x_adv = x.clone()
    x_adv[2] += 0.05  # lambda 0.5
    x_adv[3] += 0.1  # lambda 0: uniform
    y = torch.tensor([0, 1, 2, 0])
    fixed = torch.randn(1, 4, 3)
    loss, _, parts = adversarial_loss(lambda xs, noise: fixed, x, x_adv, y, torch.zeros(1, 4, 2), cfg)
    logp = F.log_softmax(fixed[0], dim=-1)
    want = [-logp[0, 0], -logp[1, 1], -(0.5 * logp[2, 2] + 0.5 * logp[2].mean()), -logp[3].mean()]
    assert float(loss) == pytest.approx(float(torch.stack(want).mean()), rel=1e-6)
    assert parts["ccat_lambda"] == pytest.approx(0.25)
    # A uniform prediction on an input at full eps is the best there is: log K.
    uniform = torch.zeros(1, 4, 3)
    loss_u, _, _ = adversarial_loss(lambda xs, noise: uniform, x[3:], x_adv[3:], y[3:], torch.zeros(1, 1, 2), cfg)
    assert float(loss_u) == pytest.approx(math.log(3))


def test_disagree_rewards_disagreement_on_adversarial_inputs_only() -> None:
    cfg = AdvConfig.build("fgsm", 0.1, objective="disagree", disagree_weight=2.0, disagree_draws=2)
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([0, 0])
    agree = torch.tensor([[4.0, 0.0], [4.0, 0.0]])
    split = torch.tensor([[4.0, 0.0], [0.0, 4.0]])

    def net_with(clean_draws: torch.Tensor, adv_draws: torch.Tensor):
        first = torch.tensor([[[3.0, 0.0], [1.0, 0.0]]])  # (1, B=2, K=2): the CE draw
        rest = torch.stack([clean_draws, adv_draws], dim=1)  # (2 draws, B=2, K=2)
        return lambda xs, noise: torch.cat([first, rest])

    noise = torch.zeros(3, 2, 4)
    ce = F.cross_entropy(torch.tensor([[3.0, 0.0], [1.0, 0.0]]), y)
    mi_split = float(mutual_information(split.unsqueeze(1))[0])
    assert mi_split > 0.5
    both_agree, _, p = adversarial_loss(net_with(agree, agree), x, x, y, noise, cfg)
    assert float(both_agree) == pytest.approx(float(ce)) and p["mi_adv"] == pytest.approx(0.0, abs=1e-6)
    adv_split, _, p = adversarial_loss(net_with(agree, split), x, x, y, noise, cfg)
    assert float(adv_split) == pytest.approx(float(ce) - 2.0 * mi_split, rel=1e-5)
    clean_split, _, _ = adversarial_loss(net_with(split, agree), x, x, y, noise, cfg)
    assert float(clean_split) == pytest.approx(float(ce) + 2.0 * mi_split, rel=1e-5)


def test_wrong_confidence_loss_is_the_best_wrong_class() -> None:
    logits = torch.tensor([[[5.0, 1.0, 2.0], [0.0, 3.0, 1.0]]])  # (T=1, B=2, K=3)
    y = torch.tensor([0, 2])
    logp = F.log_softmax(logits, dim=-1)
    assert wrong_confidence_loss(logits, y)[0].tolist() == pytest.approx([float(logp[0, 0, 2]), float(logp[0, 1, 1])])


@pytest.mark.parametrize("objective", ["ccat", "disagree"])
def test_split_objectives_train_and_pick_the_epoch_on_robust_or_flagged(objective: str) -> None:
    torch.manual_seed(0)
    ds = make_tiny_dataset(n=128)
    args = _args(adv="fgsm", adv_eot=2, adv_objective=objective, adv_val_n=64, disagree_draws=4)
    model = tt.make_model(args, ds)
    stats = tt.fit(model, ds, args, torch.device("cpu"), val=ds)
    assert math.isfinite(stats["loss"])
    for e in stats["epochs"]:
        assert 0.0 <= e["robust_or_flagged"] <= 1.0 and 0.0 <= e["adv_flagged"] <= 1.0
    best = max(range(2), key=lambda i: (stats["epochs"][i]["robust_or_flagged"], i))
    assert stats["kept_epoch"] == best + 1


def test_the_cli_records_the_objective_and_refuses_it_without_an_attack(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--adv-objective", "ccat"])  # no --adv
    with pytest.raises(SystemExit):
        parse_args(["--adv", "trades", "--adv-objective", "disagree"])
    with pytest.raises(SystemExit):
        parse_args(["--adv", "trades", "--adv-radius", "uniform"])
    ds = make_tiny_dataset(n=200)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=ds.x.numpy(), y=ds.y.numpy(), class_names=np.array(ds.class_names))
    out = tmp_path / "ck"
    tt.main(
        [
            *("--dataset", str(npz), "--arch", "tiny_cnn", "--feature-dim", "8", "--batch-size", "32"),
            *("--max-steps", "8", "--adv", "fgsm", "--adv-eot", "2", "--adv-val-n", "30"),
            *("--adv-objective", "ccat", "--adv-inner-loss", "conf", "--ccat-rho", "4", "--adv-radius", "uniform"),
            *("--no-attacks", "--eval-samples", "4", "--out", str(out)),
        ]
    )
    m = json.loads((out / MANIFEST).read_text())
    at = m["adversarial_training"]
    assert (at["objective"], at["inner_loss"], at["ccat_rho"], at["radius"]) == ("ccat", "conf", 4.0, "uniform")
    assert at["batch"] == "half clean, half adversarial" and "disagree_weight" not in at
    assert at["held_out_check"]["selects_on"] == "robust_or_flagged"
    assert at["held_out_check"]["flag"] == "max_prob"  # models.attacks.flag's name: 1 - max mean probability
    args = m["training"]["args"]
    assert (args["adv_objective"], args["adv_inner_loss"], args["ccat_rho"]) == ("ccat", "conf", 4.0)


@pytest.mark.parametrize(("objective", "kept"), [("at", 1), ("ccat", 2), ("disagree", 2)])
def test_the_kept_epoch_follows_the_objectives_metric(
    monkeypatch: pytest.MonkeyPatch, objective: str, kept: int
) -> None:
    seen = iter([{"robust": 0.9, "robust_or_flagged": 0.2}, {"robust": 0.3, "robust_or_flagged": 0.95}])
    monkeypatch.setattr(tt, "val_robust_accuracy", lambda *a: {"clean": 0.9, "adv_flagged": 0.5, **next(seen)})
    ds = make_tiny_dataset(n=64)
    args = _args(adv="fgsm", adv_objective=objective, disagree_draws=2)
    stats = tt.fit(tt.make_model(args, ds), ds, args, torch.device("cpu"), val=ds)
    assert stats["kept_epoch"] == kept


@pytest.mark.parametrize("kind", ["fgsm", "pgd", "trades"])
def test_the_inner_attack_is_the_pgd_spec_and_loop_of_models_attacks(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """One spec per attack: adversarial training's inner attack is ``models.attacks``' pgd spec, run by
    ``pgd_loop`` (fgsm: one step of 1.25 eps from a random start; trades: from a point near x), and the
    same seed gives the same batch, bit for bit."""
    import models.attacks.pgd as pgd

    cfg = AdvConfig.build(kind, 0.1, steps=3, eot=2)
    steps, alpha = (1, 0.125) if kind == "fgsm" else (3, 2.5 * 0.1 / 3)
    assert cfg.attack == make_attack("pgd", eps=0.1, steps=steps, alpha=alpha, eot=2, random_start=kind != "trades")
    assert (cfg.eps, cfg.steps, cfg.alpha, cfg.eot) == (0.1, steps, alpha, 2)
    calls: list[dict[str, object]] = []
    loop = pgd.pgd_loop
    monkeypatch.setattr(pgd, "pgd_loop", lambda *a, **kw: calls.append(kw) or loop(*a, **kw))
    ds = make_tiny_dataset(n=16)
    model = tt.make_model(_args(adv=kind), ds)
    x, y = as_float(ds.x), ds.y
    first = perturb(model, x, y, cfg, 0.05, torch.Generator().manual_seed(3))
    assert len(calls) == 1 and (calls[0]["steps"], calls[0]["draws"], calls[0]["eps"]) == (steps, 2, 0.05)
    assert calls[0]["alpha"] == alpha * 0.05 / 0.1  # the step keeps its ratio to the ramped radius
    assert torch.equal(first, perturb(model, x, y, cfg, 0.05, torch.Generator().manual_seed(3)))
    assert float((first - x).abs().max()) <= 0.05 + 1e-6 and not torch.equal(first, x)

"""Adversarial training: the inner maximisation, for every head, against the model as served.

    fgsm    FGSM with a random start (Wong, Rice & Kolter, "Fast is better than free", ICLR 2020)
    pgd     PGD with a random start (Madry et al., ICLR 2018)
    trades  TRADES: CE(f(x), y) + beta KL(f(x) || f(x')) (Zhang et al., ICML 2019)

The inner attack is the ``pgd`` spec of ``models.attacks`` and its loop (``pgd_loop``), the ones
evaluation and the probe run: it runs with BatchNorm frozen (eval mode) and the noise **on**: each
step draws ``eot`` fresh noise draws and averages their gradients, in one backward pass (all
noise is after the backbone). The outer step then trains on one fresh draw per input.

The outer objective (``objective``; fgsm and pgd) decides what an adversarial input is trained
towards:

    at        CE towards the label on the whole batch, all of it adversarial (Madry et al.).
    ccat      confidence-calibrated adversarial training (Stutz, Hein & Schiele, ICML 2020): half
              the batch clean with CE towards the label, half adversarial with CE towards
              lambda one_hot(y) + (1 - lambda) uniform, lambda = (1 - min(1, |delta|_inf / eps))^rho;
              the flag is then low confidence (max mean probability), which CCAT rejects on.
    disagree  half clean, half adversarial, CE towards the label on both (one draw each) plus
              ``disagree_weight`` times (mutual information of ``disagree_draws`` draws on the
              clean half - the same on the adversarial half): the draws are taught to disagree
              on adversarial inputs and agree on clean ones, which is what the served mutual-
              information flag measures.

``inner_loss`` picks what the inner attack maximises: ``ce`` (the label's cross-entropy, as
always) or ``conf`` (the log-probability of the most likely wrong class, per draw: CCAT's attack;
``models.attacks.base.wrong_confidence_loss``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models import StochasticClassifier
from models.attacks import eval_mode, make_attack
from models.attacks.base import Forward, Rng
from models.attacks.detector_aware import mutual_information
from models.attacks.pgd import PGD

AdvKind = Literal["none", "fgsm", "pgd", "trades"]
AdvObjective = Literal["at", "ccat", "disagree"]
AdvInnerLoss = Literal["ce", "conf"]
"""Names in ``models.attacks.base.LOSSES``: the label's cross-entropy, or CCAT's wrong-class confidence."""
AdvRadius = Literal["full", "uniform"]


def check_objective(kind: str, objective: str, inner_loss: str, radius: str) -> None:
    """The one rule tying the outer objective to the inner attack: ccat, disagree, the conf inner loss and
    uniform radii need fgsm or pgd (TRADES has its own inner loss and a whole adversarial batch).

    Raises:
        ValueError: another kind with a setting other than at / ce / full.
    """
    if (objective, inner_loss, radius) != ("at", "ce", "full") and kind not in ("fgsm", "pgd"):
        raise ValueError(
            f"--adv-objective {objective} / --adv-inner-loss {inner_loss} / --adv-radius {radius} "
            f"need --adv fgsm or pgd, not {kind}"
        )


class AdvConfig(BaseModel):
    """Settings of adversarial training: the inner attack (a ``models.attacks`` PGD spec at the full
    radius) and the outer objective.

    ``eps``, ``steps``, ``alpha`` and ``eot`` are the spec's; fgsm is PGD with one step of 1.25 eps
    from a random start (Wong et al. 2020), pgd 10 steps of 2.5 eps / steps, trades the same steps
    from a point near x (``perturb``). ``radius``: ``full``: every adversarial input at the (ramped)
    eps; ``uniform``: each at its own radius drawn uniformly from [0, eps] (fgsm, pgd), so that
    CCAT's lambda(delta) spans [0, 1] rather than sitting at 0 (a one-step attack with a random
    start ends at |delta|_inf = eps).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AdvKind = Field("none", description="adversarial training")
    attack: PGD = Field(PGD(eps=0.1, steps=1, alpha=0.125, eot=1), description="the inner attack at the full radius")
    ramp: float = Field(1.0, ge=0, description="epochs of linear eps ramp (0: none)")
    beta: float = Field(6.0, ge=0, description="weight of the TRADES KL term")
    objective: AdvObjective = Field(
        "at",
        description="outer objective (fgsm, pgd): at = CE on adversarial inputs; ccat = confidence-calibrated AT "
        "(half clean; adversarial half towards uniform as |delta| nears eps); disagree = half clean, CE on both "
        "halves plus --disagree-weight x (MI of the draws on clean - on adversarial)",
    )
    inner_loss: AdvInnerLoss = Field(
        "ce",
        description="what the inner attack maximises: ce = the label's cross-entropy; conf = the most likely "
        "wrong class's log-probability (CCAT's attack)",
    )
    ccat_rho: float = Field(10.0, ge=0, description="CCAT: lambda(delta) = (1 - min(1, |delta|_inf/eps))^rho")
    disagree_weight: float = Field(1.0, ge=0, description="disagree: weight of the mutual-information term")
    disagree_draws: int = Field(8, ge=2, description="disagree: noise draws whose mutual information is measured")
    clean_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="ccat, disagree: share of each batch kept clean (the rest is attacked); lower keeps more of "
        "adversarial training's robustness",
    )
    radius: AdvRadius = Field(
        "full",
        description="radius of each adversarial input (fgsm, pgd): full = eps; uniform = its own, uniform in "
        "[0, eps] (so CCAT's lambda spans [0, 1])",
    )

    @model_validator(mode="after")
    def _objective_needs_an_attack(self) -> AdvConfig:
        check_objective(self.kind, self.objective, self.inner_loss, self.radius)
        return self

    @classmethod
    def build(
        cls,
        kind: str,
        eps: float,
        *,
        steps: int | None = None,
        alpha: float | None = None,
        eot: int = 1,
        **settings: Any,
    ) -> AdvConfig:
        """Fill the usual defaults: fgsm alpha 1.25 eps (one step); pgd/trades 10 steps of 2.5 eps / steps.

        ``settings`` are the other fields (``ramp``, ``beta``, ``objective``, ``inner_loss``,
        ``ccat_rho``, ``disagree_weight``, ``disagree_draws``, ``radius``).
        """
        if kind == "fgsm":
            steps = 1
            alpha = 1.25 * eps if alpha is None else alpha
        else:
            steps = 10 if steps is None else steps
            alpha = 2.5 * eps / steps if alpha is None else alpha
        attack = make_attack(
            "pgd", eps=eps, steps=steps, alpha=max(alpha, 1e-12), eot=eot, random_start=kind != "trades"
        )
        return cls(kind=kind, attack=attack, **settings)

    @property
    def eps(self) -> float:
        return self.attack.budget

    @property
    def steps(self) -> int:
        return self.attack.steps

    @property
    def alpha(self) -> float:
        return float(self.attack.alpha)  # type: ignore[arg-type]  # build() always sets it

    @property
    def eot(self) -> int:
        return self.attack.eot

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def split(self) -> bool:
        """Whether a batch is half clean, half adversarial (ccat, disagree) rather than all adversarial."""
        return self.active and self.objective != "at"

    @property
    def outer_draws(self) -> int:
        """Noise draws per input the outer loss needs: one for the CE, plus those ``disagree`` compares."""
        return 1 + self.disagree_draws if self.active and self.objective == "disagree" else 1

    def eps_at(self, epoch_progress: float) -> float:
        """Linear eps ramp over the first ``ramp`` epochs."""
        if self.ramp <= 0:
            return self.eps
        return self.eps * min(1.0, epoch_progress / self.ramp)

    def to_dict(self) -> dict[str, Any]:
        """The settings (the manifest's record), less those of objectives this run does not use."""
        d = {"kind": self.kind, "eps": self.eps, "steps": self.steps, "alpha": self.alpha, "eot": self.eot}
        d.update(self.model_dump(exclude={"kind", "attack"}))
        if self.objective != "ccat":
            del d["ccat_rho"]
        if self.objective != "disagree":
            del d["disagree_weight"], d["disagree_draws"]
        if self.split:
            d["batch"] = (
                "half clean, half adversarial"
                if self.clean_share == 0.5
                else f"{self.clean_share:.0%} clean, the rest adversarial"
            )
        else:
            del d["clean_share"]
        return d


def clean_count(batch: int, share: float = 0.5) -> int:
    """How many inputs of a split batch stay clean: the first ``share`` of them (the rest are attacked)."""
    return int(batch * share)


def ccat_lambda(delta: torch.Tensor, eps: float, rho: float) -> torch.Tensor:
    """CCAT's weight of the label per input [B]: (1 - min(1, |delta|_inf / eps))^rho (1 when eps is 0)."""
    if eps <= 0:
        return delta.new_ones(delta.shape[0])
    size = delta.detach().flatten(1).abs().amax(1) / eps
    return (1 - size.clamp(max=1.0)) ** rho


def _kl_per_draw(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) || softmax(adv)) per draw and input [T, B]."""
    p_log = F.log_softmax(logits_clean, dim=-1)
    q_log = F.log_softmax(logits_adv, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def beside_reference(mu_ref: torch.Tensor) -> Forward:
    """TRADES's forward pass: the logits of the reference features ``mu_ref`` [B, D] and of x under the
    same draws, [2, T, B, K] (reference first)."""

    def forward(model: StochasticClassifier, x: torch.Tensor, draws: int, generator: Rng) -> torch.Tensor:
        noise = model.sample_noise(draws, generator)  # (T, D)
        return torch.stack([model.head(mu_ref, noise), model.head(model.features(x), noise)])

    return forward


def kl_from_reference(pair: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRADES's inner loss per draw and input [T, B]: KL(f(x) || f(x')) from ``beside_reference``'s pair."""
    return _kl_per_draw(pair[0], pair[1])


def perturb(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AdvConfig,
    eps: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial inputs for one training batch at radius ``eps`` (the ramped value), from the inner
    attack's spec (``cfg.attack.perturb``: ``models.attacks.pgd.pgd_loop``, as evaluation and the probe).

    The step size scales with the ramp (``alpha * eps / cfg.eps``), so a ramped run keeps
    the ratio of step to radius; with ``cfg.radius == "uniform"`` each input gets its own radius,
    uniform in [0, eps]. fgsm and pgd maximise ``cfg.inner_loss`` (a name in ``LOSSES``) from a
    random start; trades maximises KL(f(x) || f(x')) from x + 0.001 N(0, 1), each step's draws shared
    by x and x'. With a split objective (``cfg.split``) only the second half of the batch is
    attacked; the first ``clean_count`` inputs come back unchanged.
    """
    if eps <= 0:
        return x
    if cfg.split:
        h = clean_count(x.shape[0], cfg.clean_share)
        rest = perturb(model, x[h:], y[h:], cfg.model_copy(update={"objective": "at"}), eps, generator)
        return torch.cat([x[:h], rest])
    with eval_mode(model):
        if cfg.kind == "trades":
            start = (x + 0.001 * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0.0, 1.0)
            with torch.no_grad():
                mu_clean = model.features(x)  # (B, D): the clean pass, reused by every step
            x_adv, _ = cfg.attack.perturb(
                model,
                x,
                y,
                radius=eps,
                loss=kl_from_reference,
                forward=beside_reference(mu_clean),
                start=start,
                generator=generator,
            )
            return x_adv
        radius: float | torch.Tensor = eps  # the radius, or one per input [B]
        if cfg.radius == "uniform":
            radius = eps * torch.rand(x.shape[0], generator=generator).to(x.device)
        x_adv, _ = cfg.attack.perturb(model, x, y, radius=radius, loss=cfg.inner_loss, generator=generator)
    return x_adv


def adversarial_loss(
    net: torch.nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    cfg: AdvConfig,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The outer loss, the logits it was judged on (one draw per input, [B, K]) and what it is made of.

    ``noise`` [cfg.outer_draws, B, D]: the first draw for the CE terms, the others (disagree) for
    the mutual information. fgsm/pgd with ``at``: CE on the adversarial inputs. trades: CE on the
    clean inputs plus beta times the KL between clean and adversarial predictions under the same
    draw. ccat/disagree: ``x_adv`` is the split batch from ``perturb`` (module docstring). ``net``
    may be the DDP wrapper: every input goes through it in one call.
    """
    if cfg.kind == "trades":
        b = x.shape[0]
        both = net(torch.cat([x, x_adv]), torch.cat([noise, noise], dim=1))[0]  # (2B, K)
        clean, adv = both[:b], both[b:]
        kl = _kl_per_draw(clean.unsqueeze(0), adv.unsqueeze(0)).mean()
        return F.cross_entropy(clean, y) + cfg.beta * kl, clean, {}
    if cfg.objective == "at":
        logits = net(x_adv, noise)[0]  # (B, K)
        return F.cross_entropy(logits, y), logits, {}
    h = clean_count(x.shape[0], cfg.clean_share)
    draws = net(x_adv, noise)  # (outer_draws, B, K)
    logits = draws[0]
    hit = (logits.argmax(-1) == y).float()
    parts = {"acc_clean": float(hit[:h].mean()) if h else float("nan"), "acc_adv": float(hit[h:].mean())}
    if cfg.objective == "ccat":
        k = logits.shape[-1]
        lam = ccat_lambda(x_adv[h:] - x[h:], cfg.eps, cfg.ccat_rho)  # (B - h,)
        target = F.one_hot(y, k).to(logits.dtype)
        target = torch.cat([target[:h], lam[:, None] * target[h:] + (1 - lam[:, None]) / k])
        parts["ccat_lambda"] = float(lam.mean())
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean(), logits, parts
    mi = mutual_information(draws[1:])  # (B,)
    mi_clean = mi[:h].mean() if h else mi.new_zeros(())
    mi_adv = mi[h:].mean()
    parts.update(mi_clean=float(mi_clean.detach()), mi_adv=float(mi_adv.detach()))
    return F.cross_entropy(logits, y) + cfg.disagree_weight * (mi_clean - mi_adv), logits, parts

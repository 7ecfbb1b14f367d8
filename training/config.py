"""The training run's one schema: ``TrainConfig``. The CLI, the manifest's ``training.args``
and the model's config all come from it.

Each head's settings are declared once, by the head (``models.heads``: ``FixedConfig``,
``MFDVConfig``, ``WCAConfig``); ``TrainConfig`` inherits them, so ``--sigma-max`` is the
field ``MFDVConfig.sigma_max`` with its default, bound and help. ``parse_args`` builds the
command line from the fields (pydantic-settings' CLI), so a new field is a new flag.
"""

from __future__ import annotations

import sys
import typing
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from models import METHODS, ModelConfig, list_backbones
from models.attacks import SUITES
from models.heads import FixedConfig, MFDVConfig, WCAConfig, get_head

from .adversarial import ADV_INNER_LOSSES, ADV_KINDS, ADV_OBJECTIVES, ADV_RADII

Method = Literal[METHODS]  # type: ignore[valid-type]
Arch = Literal[tuple(list_backbones())]  # type: ignore[valid-type]
SuiteName = Literal[tuple(sorted(SUITES))]  # type: ignore[valid-type]
AdvKind = Literal[ADV_KINDS]  # type: ignore[valid-type]
AdvObjective = Literal[ADV_OBJECTIVES]  # type: ignore[valid-type]
AdvInnerLoss = Literal[ADV_INNER_LOSSES]  # type: ignore[valid-type]
AdvRadius = Literal[ADV_RADII]  # type: ignore[valid-type]


class TrainConfig(FixedConfig, MFDVConfig, WCAConfig):
    """Train an MFDV-SNN (or a baseline), evaluate it, and export a checkpoint directory.

    The defaults are the default checkpoint's recipe except for adversarial training, which is
    off unless ``--adv`` is given.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = Field("mfdv", description="stochastic head")
    arch: Arch = Field("small_cnn", description="backbone")
    dataset: str = Field(
        "fashion_mnist",
        description="fashion_mnist | mnist | path/to.npz | path/to/image_folder (one subfolder per class)",
    )
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW, cosine decay, 3% warm-up)")
    weight_decay: float = Field(5e-4, ge=0)
    feature_dim: int = Field(64, ge=1, description="feature dimension D")
    lam: float = Field(1.0, ge=0, description="weight lambda of the variance term")
    lam_warmup: float = Field(1.0, ge=0, description="epochs of linear lambda warm-up (0: none)")
    mu_bound: float | None = ModelConfig.model_fields["mu_bound"]
    head_wd: float = Field(0.0, ge=0, description="extra weight decay on the classifier W")
    noise_lr_mult: float = Field(
        20.0, gt=0, description="learning-rate multiplier for the noise parameters (mfdv s, wca L)"
    )
    val_size: int = Field(5000, ge=0, description="held-out training images (MI calibration, adversarial checks)")
    seed: int = Field(0, ge=0)
    eval_samples: int = Field(32, ge=1, description="noise draws T per clean prediction")
    attack_n: int | None = Field(1000, ge=0, description="test inputs the suites attack (0: all)")
    suite: list[SuiteName] = Field(
        ["standard", "published"],
        description="evaluation suites run after training (models.attacks.suite)",
    )
    attacks: bool = Field(True, description="run the evaluation suites after training (--no-attacks: skip them)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke runs)")
    adv: AdvKind = Field("none", description="adversarial training")
    adv_eps: float | None = Field(None, ge=0, le=1, description="L-inf radius (default 0.1 for 28x28, 8/255 larger)")
    adv_steps: int | None = Field(None, ge=1, description="inner steps for pgd/trades (default 10)")
    adv_alpha: float | None = Field(
        None, gt=0, description="inner step size (default fgsm 1.25 eps, else 2.5 eps/steps)"
    )
    adv_eot: int = Field(1, ge=1, description="noise draws averaged per inner gradient (fresh each step)")
    adv_ramp: float = Field(1.0, ge=0, description="epochs of linear eps ramp (0: none)")
    trades_beta: float = Field(6.0, ge=0, description="weight of the TRADES KL term")
    adv_objective: AdvObjective = Field(
        "at",
        description="outer objective (fgsm, pgd): at = CE on adversarial inputs; ccat = confidence-calibrated AT "
        "(half clean; adversarial half towards uniform as |delta| nears eps); disagree = half clean, CE on both "
        "halves plus --disagree-weight x (MI of the draws on clean - on adversarial)",
    )
    adv_inner_loss: AdvInnerLoss = Field(
        "ce",
        description="what the inner attack maximises: ce = the label's cross-entropy; conf = the most likely "
        "wrong class's log-probability (CCAT's attack)",
    )
    ccat_rho: float = Field(10.0, ge=0, description="CCAT: lambda(delta) = (1 - min(1, |delta|_inf/eps))^rho")
    disagree_weight: float = Field(1.0, ge=0, description="disagree: weight of the mutual-information term")
    disagree_draws: int = Field(8, ge=2, description="disagree: noise draws whose mutual information is measured")
    adv_radius: AdvRadius = Field(
        "full",
        description="radius of each adversarial input (fgsm, pgd): full = eps; uniform = its own, uniform in "
        "[0, eps] (so CCAT's lambda spans [0, 1])",
    )
    adv_val_n: int = Field(
        1000,
        ge=0,
        description="held-out images attacked after each epoch to pick the kept epoch (0: off, keep the last)",
    )
    adv_keep: Literal["best", "collapse"] = Field(
        "best",
        description="which epoch to keep: best = the best held-out robust epoch; "
        "collapse = the last unless its held-out robustness dropped beyond chance (a collapse)",
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str | None = Field(None, description="checkpoint directory (default checkpoints/<dataset>_<method>)")
    overwrite: bool = Field(False, description="replace an existing checkpoint directory")

    @field_validator("attack_n")
    @classmethod
    def _zero_is_all(cls, v: int | None) -> int | None:
        return None if v == 0 else v

    @model_validator(mode="before")
    @classmethod
    def _none_strings(cls, data: Any) -> Any:
        """``--sigma-max none`` (any case) switches an optional setting off (fields that allow None only)."""
        if not isinstance(data, dict):
            return data
        optional = {name for name, f in cls.model_fields.items() if type(None) in typing.get_args(f.annotation)}
        return {k: None if k in optional and isinstance(v, str) and v.lower() == "none" else v for k, v in data.items()}

    @model_validator(mode="after")
    def _objective_needs_an_attack(self) -> TrainConfig:
        chosen = (self.adv_objective, self.adv_inner_loss, self.adv_radius)
        if chosen != ("at", "ce", "full") and self.adv not in ("fgsm", "pgd"):
            raise ValueError(
                f"--adv-objective {self.adv_objective} / --adv-inner-loss {self.adv_inner_loss} / "
                f"--adv-radius {self.adv_radius} need --adv fgsm or pgd, not {self.adv}"
            )
        return self

    def head_config(self) -> dict[str, Any]:
        """The settings of this run's head, from the fields its ``Config`` declares."""
        return self.model_dump(include=set(get_head(self.method).Config.model_fields))


class _TrainCLI(TrainConfig, BaseSettings):
    __doc__ = TrainConfig.__doc__

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        cli_prog_name="python -m training.train",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_parse_none_str="none",
        cli_avoid_json=True,
        cli_hide_none_type=True,
        cli_exit_on_error=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the command line only: no environment variables leak in


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``TrainConfig`` from command-line arguments; a bad value exits with status 2 and says why."""
    try:
        cli = CliApp.run(_TrainCLI, cli_args=list(argv or []))
    except (ValidationError, SettingsError) as e:
        if isinstance(e, ValidationError):
            detail = "; ".join(
                f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}" for err in e.errors()
            )
        else:
            detail = str(e)
        print(f"python -m training.train: error: {detail}", file=sys.stderr)
        raise SystemExit(2) from None
    return TrainConfig.model_validate(cli.model_dump())

"""The training run's one schema: ``TrainConfig``. The CLI, the manifest's ``training.args``
and the model's config all come from it.

Each head's settings are declared once, by the head (``models.heads``: ``FixedConfig``,
``MFDVConfig``, ``WCAConfig``); ``TrainConfig`` inherits them, so ``--sigma-max`` is the
field ``MFDVConfig.sigma_max`` with its default, bound and help. The model's own fields
(``arch``, ``method``, ``feature_dim``, ``mu_bound``) are ``ModelConfig``'s, and adversarial
training's are ``AdvConfig``'s. ``parse_args`` builds the command line from the fields
(``parse_command_line``: pydantic-settings' CLI, which ``training.evaluate`` uses too), so a new
field is a new flag, listed by ``--help`` with its default and bounds.
"""

from __future__ import annotations

import copy
import sys
import typing
from argparse import ArgumentParser
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, CliApp, CliSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from models import METHODS, ModelConfig, list_backbones
from models.attacks import SuiteName
from models.heads import FixedConfig, MFDVConfig, WCAConfig, get_head

from .adversarial import AdvConfig, AdvInnerLoss, AdvKind, AdvObjective, AdvRadius, check_objective

Method = Literal[METHODS]  # type: ignore[valid-type]
Arch = Literal[tuple(list_backbones())]  # type: ignore[valid-type]


class TrainConfig(FixedConfig, MFDVConfig, WCAConfig):
    """Train an MFDV-SNN (or a baseline), evaluate it, and export a checkpoint directory.

    The defaults are a short run without adversarial training (6 epochs, lambda 1.0). The default
    checkpoints' recipe adds to them: --adv fgsm --adv-eot 8 --epochs 10 --lam 0.1 (each manifest's
    training.command says exactly).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = ModelConfig.model_fields["method"]
    arch: Arch = ModelConfig.model_fields["arch"]
    dataset: str = Field(
        "fashion_mnist",
        description="fashion_mnist | mnist | path/to.npz | path/to/image_folder (one subfolder per class)",
    )
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW, cosine decay, 3% warm-up)")
    weight_decay: float = Field(5e-4, ge=0)
    feature_dim: int = ModelConfig.model_fields["feature_dim"]
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
    adv: AdvKind = AdvConfig.model_fields["kind"]
    adv_eps: float | None = Field(None, ge=0, le=1, description="L-inf radius (default 0.1 for 28x28, 8/255 larger)")
    adv_steps: int | None = Field(None, ge=1, description="inner steps for pgd/trades (default 10)")
    adv_alpha: float | None = Field(
        None, gt=0, description="inner step size (default fgsm 1.25 eps, else 2.5 eps/steps)"
    )
    adv_eot: int = Field(1, ge=1, description="noise draws averaged per inner gradient (fresh each step)")
    # The outer objective's settings are AdvConfig's fields (one declaration; the flags keep their names).
    adv_ramp: float = AdvConfig.model_fields["ramp"]
    trades_beta: float = AdvConfig.model_fields["beta"]
    adv_objective: AdvObjective = AdvConfig.model_fields["objective"]
    adv_inner_loss: AdvInnerLoss = AdvConfig.model_fields["inner_loss"]
    ccat_rho: float = AdvConfig.model_fields["ccat_rho"]
    disagree_weight: float = AdvConfig.model_fields["disagree_weight"]
    disagree_draws: int = AdvConfig.model_fields["disagree_draws"]
    adv_radius: AdvRadius = AdvConfig.model_fields["radius"]
    adv_clean_share: float = AdvConfig.model_fields["clean_share"]
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
        check_objective(self.adv, self.adv_objective, self.adv_inner_loss, self.adv_radius)
        return self

    def head_config(self) -> dict[str, Any]:
        """The settings of this run's head, from the fields its ``Config`` declares."""
        return self.model_dump(include=set(get_head(self.method).Config.model_fields))

    def model_settings(self) -> dict[str, Any]:
        """The ``ModelConfig`` fields this run sets (arch, method, feature_dim, mu_bound) and its ``head``;
        the rest (input shape, classes, normalisation) come from the data."""
        return {**self.model_dump(include=set(ModelConfig.model_fields)), "head": self.head_config()}


M = TypeVar("M", bound=BaseModel)


def _bounds(field: FieldInfo) -> str:
    """A field's bounds as help text, e.g. ``>= 0, < 1`` (empty without any)."""
    marks = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return ", ".join(f"{sym} {getattr(m, k)}" for m in field.metadata for k, sym in marks.items() if hasattr(m, k))


def _add_argument(parser: ArgumentParser, *names: str, **kwargs: Any) -> Any:
    """argparse's ``add_argument``, with list options taking several values after one flag
    (``--suite standard published``) as well as one per flag (``--suite standard --suite published``)."""
    if kwargs.get("action") == "append" and names[0].startswith("-"):
        kwargs.update(action="extend", nargs="+")
        metavar = kwargs.get("metavar")
        if isinstance(metavar, str) and metavar.startswith("list[") and metavar.endswith("]"):
            kwargs["metavar"] = metavar[len("list[") : -1]  # one value's metavar, repeated by nargs
    return parser.add_argument(*names, **kwargs)


def command_line(model: type[BaseModel], prog: str) -> type[BaseSettings]:
    """The pydantic-settings CLI class of ``model``: one flag per field (kebab case, ``none`` for None,
    ``--x/--no-x`` for booleans), each field's help ending with its bounds; the command line only
    (no environment variables leak in)."""
    fields: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if bounds := _bounds(field):
            field = copy.copy(field)
            field.description = f"{field.description or ''} [{bounds}]".strip()
            fields[name] = (model.model_fields[name].annotation, field)

    class _Source(BaseSettings):
        model_config = SettingsConfigDict(
            extra="forbid",
            frozen=True,
            cli_prog_name=prog,
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
            return (init_settings,)

    cli = create_model(model.__name__ + "CLI", __base__=(model, _Source), __doc__=model.__doc__, **fields)
    return cli  # type: ignore[no-any-return]


def parse_command_line(model: type[M], argv: list[str] | None, prog: str) -> M:
    """``model`` from command-line arguments; a bad value exits with status 2 and says why."""
    cli_cls = command_line(model, prog)
    source = CliSettingsSource(cli_cls, add_argument_method=_add_argument)
    try:
        cli = CliApp.run(cli_cls, cli_args=list(argv or []), cli_settings_source=source)
    except (ValidationError, SettingsError) as e:
        if isinstance(e, ValidationError):
            detail = "; ".join(
                f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}" for err in e.errors()
            )
        else:
            detail = str(e)
        print(f"{prog}: error: {detail}", file=sys.stderr)
        raise SystemExit(2) from None
    return model.model_validate(cli.model_dump())


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``TrainConfig`` from command-line arguments; a bad value exits with status 2 and says why."""
    return parse_command_line(TrainConfig, argv, "python -m training.train")

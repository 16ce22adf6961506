"""Site configuration (`site.yaml`), validated at the edge with pydantic.

Relative paths in a config file are resolved against the file's own folder, so a site
folder can be moved or copied as a whole.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fedtl.shared.yamlconfig import FieldError, load_model

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds fit in 32 bits
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class TaskType(str, Enum):
    classification = "classification"
    multilabel = "multilabel"
    regression = "regression"


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = Path(value).expanduser()
    return value if value.is_absolute() or base is None else (Path(base) / value)


def resolve_state_dir(value: Path, info: ValidationInfo) -> Path:
    """A state folder, relative to the config file; it may not exist yet, but must not be a file."""
    from fedtl.shared.safe_paths import check_folder

    path = _resolve(value, info)
    check_folder(path, "state_dir")  # an UnsafePath is a ValueError: reported at this field's line
    return path


def resolve_encoder_spec(value: str, info: ValidationInfo) -> str:
    """``minilm``, ``tiny``, or a model folder (relative to the config file)."""
    if value in ("minilm", "tiny"):
        return value
    return str(_resolve(Path(value), info))


_URI_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def has_scheme(uri: str) -> bool:
    """Does an MLflow tracking URI name its scheme (``sqlite:///``, ``http://``, ``file:``, ``databricks``)?"""
    return bool(_URI_SCHEME.match(uri)) or uri == "databricks"


def resolve_tracking_uri(value: str, info: ValidationInfo) -> str:
    """An MLflow tracking URI from a config file: it must name its scheme, and a relative SQLite path
    is taken relative to the file (as every other path in it)."""
    if not has_scheme(value):
        raise ValueError(f"{value!r} has no scheme: use sqlite:///PATH/mlflow.db for a local store, or "
                         "http://HOST:PORT for a tracking server")
    prefix = "sqlite:///"
    if value.startswith(prefix) and not value[len(prefix):].startswith("/"):
        return prefix + str(_resolve(Path(value[len(prefix):]), info).resolve())
    return value


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot run here (None: it can). site.yaml's check and the trainer's, in one place."""
    if device == "cuda" and not cuda_available():
        return "device 'cuda' needs a CUDA GPU, and none is visible here; use auto or cpu"
    return None


def precision_problem(precision: str, device: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` (a name or a resolved torch device type; None: it can)."""
    if precision == "fp16" and (device == "cpu" or not cuda_available()):
        return "precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32 (or auto)"
    return None


class TaskConfig(BaseModel):
    """One private task at a site: its data, columns, and how it is learned."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="the task's name: its head's file name and its metrics' key")
    type: TaskType = Field(description="classification (one label), multilabel (a set of labels) or regression")
    data: list[Path] = Field(min_length=1, description="CSV, JSONL or Parquet files with the examples")
    text_columns: list[str] = Field(min_length=1, description="joined with a space into the input text")
    target_column: str = Field(description="the column (CSV/Parquet) or key (JSONL) holding the target")
    labels: list[str] | None = Field(
        default=None, description="the label set (classification/multilabel); default: labels seen in training"
    )
    label_separator: str = Field(default="|", min_length=1, description="multilabel: separator inside a cell")
    validation_split: float = Field(default=0.2, gt=0.0, lt=1.0, description="share of the rows held out for "
        "validation (a seeded, deterministic split; not with validation_data)")
    validation_data: list[Path] | None = Field(default=None, description="explicit validation files")
    loss_weight: float = Field(default=1.0, gt=0.0, description="weight of this task's loss in the site's sum over "
        "tasks (loss_weighting: static)")
    max_examples: int | None = Field(default=None, gt=1, description="deterministic subsample of the data")

    @field_validator("data", "validation_data", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, (str, Path)) else value

    @field_validator("text_columns", mode="before")
    @classmethod
    def _column_or_columns(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("data", "validation_data")
    @classmethod
    def _resolve_paths(cls, value: list[Path] | None, info: ValidationInfo) -> list[Path] | None:
        return None if value is None else [_resolve(p, info) for p in value]

    @model_validator(mode="after")
    def _labels_fit_type(self) -> TaskConfig:
        if self.labels is not None:
            if self.type == TaskType.regression:
                raise FieldError("labels", "'labels' applies to classification and multilabel tasks, not regression")
            if len(set(self.labels)) != len(self.labels):
                raise FieldError("labels", "'labels' lists a label twice")
            if self.type == TaskType.classification and len(self.labels) < 2:
                raise FieldError("labels", "a classification task needs at least 2 labels")
        if "label_separator" in self.model_fields_set and self.type != TaskType.multilabel:
            raise FieldError("label_separator", f"label_separator applies to multilabel tasks, not {self.type.value}")
        if self.validation_data and "validation_split" in self.model_fields_set:
            raise FieldError("validation_split", "validation_data gives the validation rows, so validation_split "
                                                 "would be ignored; remove one of them")
        return self


class TrainingConfig(BaseModel):
    """Local training at a site: FedRep-style head phase, then encoder phase."""

    model_config = ConfigDict(extra="forbid")

    head_epochs: int = Field(default=30, ge=0, description="epochs over cached frozen-encoder features")
    encoder_epochs: int = Field(default=1, ge=0, description="epochs training encoder and heads together")
    batch_size: int = Field(default=32, ge=1, description="examples per encoder-phase step, per task group")
    head_lr: float = Field(default=3e-3, gt=0, description="head learning rate in the head phase")
    encoder_lr: float = Field(default=3e-5, gt=0, description="peak learning rate of the encoder (AdamW)")
    finetune_head_lr: float = Field(default=3e-4, gt=0, description="head learning rate in the encoder phase")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay, encoder and heads")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="share of the schedule's steps spent warming the "
        "learning rate up from 0")
    lr_schedule: Literal["linear", "constant"] = Field(
        default="constant", description="after warm-up: constant (the default: with linear decay over the "
        "federation its last rounds barely move the encoder; benchmarks/README.md), or linear decay to 0")
    lr_schedule_span: Literal["federation", "round"] = Field(
        default="federation", description="federation: one warm-up and decay over all rounds, each round "
        "continuing where the last one stopped (as one long local run would); round: a fresh one every round")
    max_grad_norm: float = Field(default=1.0, gt=0, description="gradients are clipped to this L2 norm every step")
    max_steps: int | None = Field(default=None, ge=1, description="cap on encoder-phase steps per call")
    max_length: int = Field(default=128, ge=8, le=4096, description="tokens per input after truncation")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="seed of the split, shuffling and "
                      "initialisation: a run is reproducible on CPU")
    loss_weighting: Literal["static", "uncertainty"] = Field(
        default="static", description="static: task loss_weight; uncertainty: learned (Kendall et al. 2018)"
    )
    keep_best: bool = Field(
        default=True, description="never end worse on validation than the frozen-encoder probe"
    )
    baseline: Literal["finetuned", "probe"] = Field(
        default="finetuned", description="the local-only model a site serves for each task the federation's model "
        "validates worse on: the encoder fine-tuned alone on the federation's whole step budget in round 1 (finetuned, the "
        "default: what the site would train without joining, at the cost of one local run), or heads on the "
        "pretrained encoder (probe: cheaper; benchmarks/README.md)")
    head_fit: Literal["converged", "sgd"] = Field(
        default="converged", description="heads on frozen features: fitted to convergence (ridge by GCV for "
                                         "regression, L-BFGS logistic regression with a cross-validated penalty "
                                         "otherwise) or head_epochs of AdamW")
    refit_heads: bool = Field(
        default=True, description="after encoder training, refit the heads on the trained encoder's features")
    serve_all_rows: bool = Field(
        default=True, description="once validation has chosen the model the site serves, refit its heads "
        "(converged fits) on training plus validation rows; reported validation scores stay the training-only fit's")
    prefix_cache_mb: int = Field(
        default=2048, ge=0, description="memory for cached frozen-prefix outputs under last:N (0: off)"
    )


class SitePrivacyConfig(BaseModel):
    """What this site demands of a federation's differential privacy before its update leaves.

    The coordinator sets the clip and noise (``federation.yaml``'s ``privacy:``); a site that
    must not rely on it refuses rounds below its own floor, so a misconfigured or dishonest
    coordinator cannot get an update with less noise than the site agreed to.
    """

    model_config = ConfigDict(extra="forbid")

    min_noise_multiplier: float = Field(default=0.0, ge=0, description="refuse rounds with less noise than "
                                                                         "this (0: privacy not required)")
    max_clip_norm: float | None = Field(default=None, gt=0, description="refuse rounds that clip updates at a "
                                                                         "larger norm than this")
    max_epsilon: float | None = Field(default=None, gt=0, description="this site's lifetime budget: refuse a round "
                                      "that would take the epsilon in its ledger (state_dir/privacy_ledger.json, "
                                      "every private round it ever sent, across runs) past this")
    delta: float = Field(default=1e-5, gt=0, lt=1, description="the delta at which the ledger counts epsilon")
    withhold_metrics: bool = Field(default=True, description="in a private round, send the noised update and "
                                   "nothing else derived from the data: example count 1 (every site weighs the "
                                   "same), no losses or validation scores (they stay in this site's history)")

    def refusal(self, clip: float | None, noise: float | None) -> str | None:
        """Why a round with this clip and noise multiplier is refused, or None."""
        required = self.min_noise_multiplier > 0 or self.max_clip_norm is not None or self.max_epsilon is not None
        if not required:
            return None
        if clip is None or noise is None:
            return "this site requires differential privacy (site.yaml privacy:) and the round has none"
        if noise < self.min_noise_multiplier:
            return (f"the round's noise multiplier {noise:.4g} is below this site's minimum "
                    f"{self.min_noise_multiplier:g} (site.yaml privacy.min_noise_multiplier)")
        if self.max_clip_norm is not None and clip > self.max_clip_norm:
            return (f"the round clips updates at {clip:g}, above this site's maximum {self.max_clip_norm:g} "
                    "(site.yaml privacy.max_clip_norm)")
        return None


class SiteMlflowConfig(BaseModel):
    """The site's own MLflow (opt-in): the model it serves and its metrics, logged round by round.

    This is the site's store, not the coordinator's: heads go there, and nothing from it ever
    crosses the wire.
    """

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(description="the site's MLflow: sqlite:///PATH/mlflow.db (relative to this file) or "
                                          "http://HOST:PORT")
    experiment: str = Field(default="fedtl-site", min_length=1, description="the experiment the site's runs go to "
                            "(one run per federation run)")
    registered_model: str | None = Field(default=None, min_length=1, description="register the model served after "
                                         "the federation's last round under this name (alias 'served'); "
                                         "null: don't register")
    log_models: Literal["every_round", "last_round"] = Field(
        default="every_round", description="log the served model as an MLflow model after every round, or only "
        "after the federation's last one (metrics are logged every round either way)")

    @field_validator("tracking_uri")
    @classmethod
    def _resolve_uri(cls, value: str, info: ValidationInfo) -> str:
        return resolve_tracking_uri(value, info)


class SiteConfig(BaseModel):
    """`site.yaml`: one data owner, its private tasks and how it trains."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="the site's name in the federation: its reports, metrics and key")
    state_dir: Path = Field(description="heads, caches and history; relative to this file")
    encoder: str = Field(default="minilm", description="minilm | tiny | path to a Hugging Face model folder")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the site trains: auto takes the "
        "GPU when there is one")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(default="auto", description="mixed precision on a GPU: "
        "auto is bf16 where supported, else fp16; fp32 on the CPU")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="how the site trains its heads and "
        "the encoder each round")
    privacy: SitePrivacyConfig = Field(default_factory=SitePrivacyConfig, description="the differential privacy this "
        "site demands before its update leaves")
    tasks: list[TaskConfig] = Field(min_length=1, description="the site's tasks: each gets a private head; all share the encoder")
    mlflow: SiteMlflowConfig | None = Field(default=None, description="the site's own MLflow, where it logs the "
                                            "model it serves and its metrics (off unless set)")

    @field_validator("state_dir")
    @classmethod
    def _resolve_state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_state_dir(value, info)

    @field_validator("encoder")
    @classmethod
    def _resolve_encoder(cls, value: str, info: ValidationInfo) -> str:
        return resolve_encoder_spec(value, info)

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        if (why := device_problem(value)) is not None:
            raise ValueError(why)
        return value

    @field_validator("precision")
    @classmethod
    def _precision_fits_device(cls, value: str, info: ValidationInfo) -> str:
        if (why := precision_problem(value, str(info.data.get("device", "auto")))) is not None:
            raise ValueError(why)
        return value

    @field_validator("tasks")
    @classmethod
    def _unique_task_names(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        seen: set[str] = set()
        for task in tasks:
            if task.name in seen:
                raise ValueError(f"two tasks are named '{task.name}'; task names must be unique")
            seen.add(task.name)
        return tasks


def load_site_config(path: Path | str) -> SiteConfig:
    """Read and validate `site.yaml`; errors name the file, line and field."""
    return load_model(SiteConfig, path)

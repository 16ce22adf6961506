"""The round protocol: every key that crosses the wire between coordinator and sites.

One exchange per round. The coordinator sends a Message whose RecordDict holds

- ``ARRAYS`` (ArrayRecord): the update mode's encoder tensors, packed into one Array with a
  manifest of names, dtypes and shapes (``fedtl.shared.records``: ``to_record``/``from_record``), and
- ``CONFIG`` (ConfigRecord): the round config, built and parsed by ``RoundConfig``.

A site replies with

- ``ARRAYS``: its encoder delta (same tensor names),
- ``METRICS`` (MetricRecord): the same numeric keys at every site (``SiteMetric``), which
  Flower's strategies weight by ``num-examples`` and average, and
- ``REPORT`` (ConfigRecord): its name, tasks and per-task metrics (``ReportKey`` plus
  ``section/task/metric`` names made by ``task_key`` and read by ``parse_task_key``).

Server, client, tracking, plots and the CLI use these names; none spells a key itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

from flwr.app import ConfigRecord

# ---------------------------------------------------------------- records of a message
ARRAYS = "arrays"    # ArrayRecord: encoder tensors down, encoder delta up
METRICS = "metrics"  # MetricRecord: SiteMetric keys
REPORT = "report"    # ConfigRecord: ReportKey keys and per-task metrics
CONFIG = "config"    # ConfigRecord: RoundConfig (coordinator -> site)


# ---------------------------------------------------------------- coordinator -> site
@dataclass(frozen=True)
class RoundConfig:
    """What a site needs to know to train one round. Field ``x_y`` travels as key ``x-y``.

    ``server_round`` is set by Flower's strategies (``configure_train``) and ``proximal_mu``
    by FedProx; the coordinator sets the rest.
    """

    update_mode: str
    encoder: str
    encoder_seed: int = 0
    run_id: int = 0
    server_round: int = 0
    encoder_epochs: int | None = None
    max_steps: int | None = None
    proximal_mu: float = 0.0
    personalization: str = "fedrep"    # what the site trains and serves: fedrep | ditto | similarity
    ditto_lambda: float | None = None  # ditto: pull of the personal model towards the global one
    num_rounds: int | None = None      # the federation's rounds: a site's lr schedule spans them all
    up_codec: str | None = None        # how the site packs its delta (shared/codecs.py); None: fp32
    down_codec: str | None = None      # how ARRAYS are packed; None: the global tensors in fp32
    base_digest: str | None = None     # down_codec: ARRAYS are a change to the encoder with this digest
                                       # ("": ARRAYS are the whole reference encoder, fp32)
    lora_rank: int | None = None       # update_mode lora: the adapters a site adds (shared/lora.py)
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_targets: tuple[str, ...] | None = None
    lora_lr_scale: float | None = None  # the site's encoder_lr times this, for the adapters
    dp_clip: float | None = None       # privacy: clip the update to this L2 norm ...
    dp_noise: float | None = None      # ... and add N(0, (dp_noise * dp_clip)^2) per value (shared/privacy.py)

    @staticmethod
    def key(field_name: str) -> str:
        return field_name.replace("_", "-")

    def to_record(self) -> ConfigRecord:
        values = {self.key(f.name): getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return ConfigRecord({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RoundConfig:
        """Parse a received round config; unknown keys are ignored, missing required ones raise."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = cls.key(f.name)
            if key in record:
                values[f.name] = record[key]
        missing = [cls.key(f.name) for f in fields(cls)
                   if f.default is MISSING and f.default_factory is MISSING and f.name not in values]
        if missing:
            raise ValueError(f"round config lacks {missing}; is the coordinator running fedtl?")
        casts = _casts(cls)
        return cls(**{name: casts[name](value) for name, value in values.items()})


@functools.cache
def _casts(cls: type) -> dict[str, Callable[[Any], Any]]:
    """Each field's conversion of a received value, from the field's own type: ``int | None``
    takes int, ``tuple[str, ...]`` a tuple of str (Flower records carry lists)."""
    out: dict[str, Callable[[Any], Any]] = {}
    for name, hint in get_type_hints(cls).items():
        args = [a for a in get_args(hint) if a is not type(None)] if isinstance(hint, UnionType) else [hint]
        (kind,) = args
        if get_origin(kind) is tuple:
            item = get_args(kind)[0]
            out[name] = lambda v, item=item: tuple(item(t) for t in v)
        else:
            out[name] = kind
    return out


# ---------------------------------------------------------------- process configs (not on the wire)
class RunConfigKey:
    """Keys of the run config `fedtl coordinator` submits and the ServerApp reads
    (declared, with defaults, in server/flower_app/pyproject.toml)."""

    CONFIG_PATH = "config-path"    # absolute path of federation.yaml
    STATE_DIR = "state-dir"        # where the ServerApp writes history, checkpoints and resume points
    RESUME = "resume"              # 1: continue from the latest resume point
    TRACKING_URI = "tracking-uri"  # MLflow tracking URI as the coordinator resolved it ("": off)
    SITE_NODES = "site-nodes"      # with site keys: the node id -> site name file (server/identity.py); "": off


class NodeConfigKey:
    """Keys of a SuperNode's node config (``--node-config``), read by the ClientApps it starts."""

    SOCKET = "socket"              # the site worker's unix socket (set by `fedtl site`)
    SITE = "site"                  # the site's name: set by `fedtl site` for Flower's logs and operators
    TIMEOUT = "timeout"            # seconds the shim waits for the worker (optional; default one hour)
    PARTITION_ID = "partition-id"  # which virtual site a simulated node is (set by Flower's simulation)


# ---------------------------------------------------------------- site -> coordinator: metrics
class SiteMetric:
    """Keys of a reply's MetricRecord (numbers only, the same at every site)."""

    NUM_EXAMPLES = "num-examples"        # training examples: FedAvg's weight
    TRAIN_LOSS = "train_loss"            # mean over the site's tasks
    SCORE = "score"                      # mean primary metric of the federated model
    SCORE_GLOBAL = "score_global"        # ... of heads refitted on the received encoder
    SCORE_SITE = "score_site"            # ... of the model the site serves
    UPDATE_NORM = "update_norm"
    SECONDS = "seconds"                  # the site's training time this round
    STARTUP_SECONDS = "startup_seconds"  # ClientApp process start -> warm worker holds the message

    AGGREGATED = (TRAIN_LOSS, SCORE, SCORE_GLOBAL, SCORE_SITE, UPDATE_NORM, SECONDS)


# ---------------------------------------------------------------- site -> coordinator: report
class ReportKey:
    """Plain keys of a reply's REPORT record."""

    SITE = "site"              # the site's name
    TASKS = "tasks"            # its task names, in order
    PRIMARY = "primary"        # each task's primary metric, same order
    DEVICE = "device"
    ENCODER = "encoder"
    KEPT = "kept"              # "finetuned" or "probe": what the round's training kept
    SITE_MODEL = "site_model"  # "federated", "baseline" or "mixed" (task by task): the model the site serves


class Section:
    """Groups of per-task metrics in a REPORT, flattened as ``section/task/metric``."""

    VAL = "val"            # validation metrics of the site's federated model after this round (the one
                           # its personalization method serves: ditto's personal model, else the shared one)
    SHARED = "shared"      # the model trained from the received encoder, whose delta was sent
    PROBE = "probe"        # heads refitted on the received (global) encoder, frozen
    BEFORE = "before"      # the stored heads on the received encoder, before training
    SERVED = "served"      # the model the site serves (federated or baseline)
    BASELINE = "baseline"  # the site's local-only baseline (frozen pretrained encoder)
    TRAIN_LOSS = "train_loss"  # ``train_loss/task``: the task's mean training loss
    SECONDS = "seconds"        # ``seconds/phase``: embed, head, encoder, eval, total, baseline, handled
    RESOURCES = "resources"    # ``resources/figure``: peak_memory_mb, gpu_peak_memory_mb, gpu_memory_mb

    TASK_METRICS = (VAL, SHARED, PROBE, BEFORE, SERVED, BASELINE)


SEP = "/"


def task_key(section: str, task: str, metric: str | None = None) -> str:
    """``val/sentiment/macro_f1``; without ``metric``: ``train_loss/sentiment``."""
    return SEP.join((section, task) if metric is None else (section, task, metric))


def parse_task_key(key: str) -> tuple[str, str, str] | None:
    """``val/sentiment/macro_f1`` -> (section, task, metric); None for any other key."""
    parts = key.split(SEP, 2)
    if len(parts) == 3 and parts[0] in Section.TASK_METRICS:
        return parts[0], parts[1], parts[2]
    return None


def flatten_sections(sections: Mapping[str, Any]) -> dict[str, float]:
    """{"val": {"t": {"f1": 0.5}}, "seconds": {"total": 3.0}} -> {"val/t/f1": 0.5, "seconds/total": 3.0}."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}{SEP}{key}" if prefix else str(key), inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = float(value)

    walk("", sections)
    return out


def report_value(report: Mapping[str, Any], section: str, task: str, metric: str | None = None) -> float | None:
    value = report.get(task_key(section, task, metric))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def primary_metrics(report: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(task, primary metric) pairs of a site's report."""
    yield from zip(report.get(ReportKey.TASKS, []), report.get(ReportKey.PRIMARY, []))

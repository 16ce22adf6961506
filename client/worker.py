"""The site worker: a long-lived process that keeps the encoder, data and heads warm.

Flower starts a fresh ClientApp process for every message, and importing torch plus
transformers alone takes seconds. The worker pays that once per daemon start; the thin
ClientApp shim (``fedtl.client.shim``) forwards each round's message here over a local
unix socket and returns the reply.

What leaves the worker in a reply: the encoder delta for the update mode's tensors, the
number of examples, metrics and timings. Never heads, never data.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from safetensors.numpy import save as save_arrays

from fedtl.client.ditto import Ditto
from fedtl.client.head_store import HeadStore
from fedtl.client.local_training import load_site_data, prepare_tasks
from fedtl.client.loss_weighting import LossWeighting
from fedtl.client.prefix_cache import PrefixCache, frozen_prefix_layers
from fedtl.client.privacy_ledger import LEDGER, PrivacyLedger
from fedtl.client.resources import resource_figures, start_round
from fedtl.client.site_choice import choose
from fedtl.client.site_tracking import SiteRoundRecord, SiteTracker
from fedtl.client.trainer import (
    LocalTrainer,
    PreparedTask,
    TrainerOptions,
    TrainResult,
    mean_primary,
    resolve_device,
    resolve_precision,
)
from fedtl.client.warm_start import WarmStart
from fedtl.client.wire_codecs import SiteCodecs
from fedtl.client.worker_api import Timing
from fedtl.shared import faults
from fedtl.shared.atomic import write_bytes_atomic, write_json_atomic
from fedtl.shared.config import SiteConfig, TrainingConfig
from fedtl.shared.encoders import load_encoder
from fedtl.shared.lora import LoraSettings, add_adapters, round_settings
from fedtl.shared.privacy import privatize
from fedtl.shared.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    REPORT,
    ReportKey,
    RoundConfig,
    Section,
    SiteMetric,
    flatten_sections,
)
from fedtl.shared.records import digest, from_record, l2_norm, to_record
from fedtl.shared.update_modes import UpdateMode, exchanged_names
from fedtl.v1 import site_pb2

log = logging.getLogger(__name__)

@dataclass
class SiteRound:
    """One training round at this site, filled in by ``SiteWorker.train``'s steps in order."""

    config: RoundConfig
    training: TrainingConfig
    handled_at: float  # unix time the warm worker got the message
    frozen: int = 0  # frozen prefix layers of the update mode
    global_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    started: float = 0.0  # unix time training started
    trainer: LocalTrainer | None = None
    result: TrainResult | None = None  # the shared path's training
    served: Any = None  # what the site reports as its model this round: result, or ditto's personal model
    personal: Any = None  # ditto's personal model's result
    delta: dict[str, np.ndarray] = field(default_factory=dict)
    privacy: dict[str, float] | None = None
    wire: dict[str, np.ndarray] = field(default_factory=dict)  # the update as coded for the wire
    site_entry: dict[str, Any] = field(default_factory=dict)  # what site_model.json now says
    seconds: dict[str, float] = field(default_factory=dict)
    startup: float = float("nan")
    norm: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # peak memory (client/resources.py)

    @property
    def site_model(self) -> str:
        """Which model the site serves: "federated", "baseline" or "mixed" (some tasks each)."""
        return self.site_entry.get("model", "federated")

    @property
    def site_metrics(self) -> dict[str, dict[str, float]]:
        """The served model's validation metrics."""
        return self.site_entry.get("metrics", {})


class SiteWorker:
    """Holds one site's encoder, tokenised tasks and heads; handles train/evaluate messages."""

    def __init__(self, config: SiteConfig, encoder_spec: str | None = None, warm: WarmStart | None = None):
        self.config = config
        self.root = config.state_dir / "federated"
        self._ledger: PrivacyLedger | None = None
        self.store = HeadStore(self.root / "heads")
        self.baseline_store = HeadStore(self.root / "baseline")  # the local-only baseline's heads ...
        self.baseline_tensors = self.root / "baseline" / "encoder.safetensors"  # ... and, fine-tuned, its tensors
        self.baseline_tuned_path = self.root / "baseline" / "tuned_tasks.json"  # the tasks served over those
        self.device = resolve_device(config.device)
        self.autocast = resolve_precision(self.device, config.precision)
        self.datas = load_site_data(config)
        self.prefix_cache = PrefixCache(config.training.prefix_cache_mb * 2**20)
        self.optimizer_state: dict[str, dict[str, torch.Tensor]] = {}  # AdamW moments, kept across rounds
        self._frozen = 0  # frozen prefix layers of this round's update mode
        self._schedule_part = (0, 1)  # this round's place in the lr schedule (round k of n)
        self.lock = threading.Lock()
        self.rounds_done = 0
        self.codecs = SiteCodecs()  # the reference encoder of a coded downlink, the uplink's residual
        self.baseline: dict[str, dict[str, float]] | None = self._read_json(self.root / "baseline.json")
        self.warm = warm  # --warm-start: a pulled global encoder that stands for the coordinator's
        self._load_encoder(str(warm.folder) if warm is not None else encoder_spec or config.encoder, seed=0)
        self.tracking = SiteTracker(config) if config.mlflow is not None else None  # the site's own MLflow

    # ------------------------------------------------------------ state
    @staticmethod
    def _read_json(path: Path) -> Any:
        return json.loads(path.read_text()) if path.exists() else None

    def _load_encoder(self, spec: str, seed: int) -> None:
        """Load the pretrained encoder (``seed`` only matters for ``tiny``: it must match the coordinator's)."""
        t0 = time.perf_counter()
        self.encoder = load_encoder(spec, seed=seed).to(self.device)
        self.encoder.eval()
        self.encoder_spec, self.encoder_seed = spec, seed
        self.param_names = [n for n, _ in self.encoder.named_parameters()]
        self._pristine = True  # the encoder's tensors are still the pretrained ones
        self.adapters: LoraSettings | None = None  # update mode lora: the adapters on the encoder
        self.codecs.reset()
        self.tasks: list[PreparedTask] = prepare_tasks(
            self.datas, self.encoder, self.store, self.config.training.max_length, self.config.training.seed
        )
        self.weighting = LossWeighting(
            [t.name for t in self.tasks],
            {t.name: t.data.task.loss_weight for t in self.tasks},
            learned=self.config.training.loss_weighting == "uncertainty",
        )
        self.ditto = Ditto(self.root / "personal", self.encoder,
                           lambda tasks, training, **kw: self._trainer(tasks, training, self._frozen, **kw))
        log.info("site %s: encoder %s ready on %s in %.1fs", self.config.name, spec, self.device,
                 time.perf_counter() - t0)

    def status(self) -> site_pb2.StatusReply:
        return site_pb2.StatusReply(
            site=self.config.name, tasks=[t.name for t in self.tasks], encoder=self.encoder_spec,
            device=str(self.device), rounds_done=self.rounds_done, ready=True,
        )

    # ------------------------------------------------------------ messages
    def handle(self, message_type: str, content: RecordDict, timing: Timing) -> RecordDict:
        with self.lock:  # one message at a time: the model is shared state
            if message_type == "train":
                return self.train(content, timing)
            if message_type == "evaluate":
                return self.evaluate(content)
            raise ValueError(f"site worker cannot handle message type {message_type!r}")

    def _ensure_encoder(self, config: RoundConfig) -> None:
        """Hold the same pretrained encoder as the coordinator (with the same adapters, under lora)."""
        spec, seed = config.encoder, config.encoder_seed
        adapters = round_settings(config)
        if self._holds_warm_start_of(spec, adapters):
            self.encoder_seed = seed  # the folder holds the coordinator's tensors; the seed places adapters
        elif (spec, seed) != (self.encoder_spec, self.encoder_seed) or (self.adapters not in (None, adapters)):
            log.info("coordinator uses encoder %s (seed %d); switching from %s", spec, seed, self.encoder_spec)
            self._load_encoder(spec, seed)
            self.rounds_done = 0
            self.optimizer_state.clear()
        if adapters is not None and self.adapters is None:
            self._add_adapters(adapters)

    def _holds_warm_start_of(self, spec: str, adapters: LoraSettings | None) -> bool:
        """Whether the loaded encoder is a pulled checkpoint of the coordinator's encoder ``spec``.

        Under lora a checkpoint after round 0 has the adapters merged in, so it is not the base
        the adapters go on: the site then needs the coordinator's encoder itself."""
        warm = self.warm
        if warm is None or spec != warm.stands_for or self.encoder_spec != str(warm.folder):
            return False
        if adapters is not None and warm.round > 0:
            log.info("update mode lora: the warm-start checkpoint (round %d) has adapters merged in; "
                     "loading the base encoder %s", warm.round, spec)
            return False
        return True

    def _add_adapters(self, settings: LoraSettings) -> None:
        """LoRA adapters on the encoder, initialised as the coordinator's (same seed): only they train."""
        add_adapters(self.encoder, settings, seed=self.encoder_seed)
        self.encoder.to(self.device)
        self.adapters = settings
        self.param_names = [n for n, _ in self.encoder.named_parameters()]
        self.optimizer_state.clear()
        self.codecs.reset()

    def _pretrained_tensors(self, names: list[str]) -> dict[str, np.ndarray]:
        """The pretrained values of ``names`` (from the encoder while untouched, else loaded again)."""
        encoder = self.encoder
        if not self._pristine:
            encoder = load_encoder(self.encoder_spec, seed=self.encoder_seed)
            if self.adapters is not None:
                add_adapters(encoder, self.adapters, seed=self.encoder_seed)
        params = dict(encoder.named_parameters())
        return {n: params[n].detach().float().cpu().numpy().copy() for n in names}

    def _apply_global(self, config: RoundConfig, content: RecordDict,
                      train: bool = False) -> tuple[UpdateMode, dict[str, np.ndarray]]:
        """Load the coordinator's encoder tensors into the local encoder; return them.

        A training message may carry them coded (``client/wire_codecs.py``): what is loaded
        and returned is the encoder they stand for."""
        self._ensure_encoder(config)
        mode = UpdateMode.parse(config.update_mode)
        arrays = from_record(content[ARRAYS])
        expected = exchanged_names(self.param_names, mode)
        if train:
            params = dict(self.encoder.named_parameters())
            arrays = self.codecs.receive(config, arrays, {n: tuple(params[n].shape) for n in expected},
                                         lambda: self._pretrained_tensors(expected))
        if sorted(arrays) != expected:
            extra, missing = sorted(set(arrays) - set(expected)), sorted(set(expected) - set(arrays))
            raise ValueError(f"coordinator sent tensors that do not fit update mode {mode}: "
                             f"unexpected {extra[:3]}, missing {missing[:3]}")
        params = dict(self.encoder.named_parameters())
        with torch.no_grad():
            for name, value in arrays.items():
                if tuple(value.shape) != tuple(params[name].shape):
                    raise ValueError(f"tensor {name}: shape {value.shape} from the coordinator, "
                                     f"{tuple(params[name].shape)} here")
                params[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
        self._pristine = False
        return mode, arrays

    def _training_config(self, config: RoundConfig):
        updates: dict[str, Any] = {"seed": self.config.training.seed + config.server_round, "keep_best": True}
        if config.encoder_epochs is not None:
            updates["encoder_epochs"] = config.encoder_epochs
        if config.max_steps is not None:
            updates["max_steps"] = config.max_steps
        if UpdateMode.parse(config.update_mode).kind == "lora" and config.lora_lr_scale:
            updates["encoder_lr"] = self.config.training.encoder_lr * config.lora_lr_scale
        return self.config.training.model_copy(update=updates)

    def _trainer(self, tasks: list[PreparedTask], training, frozen_layers: int, encoder: torch.nn.Module | None = None,
                 **kwargs) -> LocalTrainer:
        """A trainer of ``encoder`` (default: the worker's) and ``tasks``, in this round's place of the schedule."""
        options = {"schedule_part": self._schedule_part, **kwargs}
        return LocalTrainer(encoder if encoder is not None else self.encoder, tasks, training, TrainerOptions(
            self.device, self.autocast, frozen_layers=frozen_layers, prefix_cache=self.prefix_cache, **options))

    def _schedule_position(self, config: RoundConfig) -> tuple[int, int]:
        """Where this round sits in the site's lr schedule: round k of n, or a schedule of its own.

        Restarting warm-up and decay every round costs a site much of what its steps could
        give (benchmarks/README.md); spanning the federation's rounds, the rounds together follow
        the schedule of one long local run.
        """
        if self.config.training.lr_schedule_span == "round" or not config.num_rounds or config.server_round < 1:
            return (0, 1)
        return (min(config.server_round, config.num_rounds) - 1, config.num_rounds)

    def _fit_copies(self, training, frozen_layers: int, serve: bool = False,
                    **kwargs) -> tuple[TrainResult, list[PreparedTask]]:
        """Train copies of the heads (the site's own stay as they are) with ``_trainer(**kwargs)``;
        ``serve``: then refit them on every row for serving (the metrics stay the training-only fit's)."""
        copies = [replace(t, head=copy.deepcopy(t.head)) for t in self.tasks]
        trainer = self._trainer(copies, training, frozen_layers, **kwargs)
        result = trainer.fit()
        if serve and training.serve_all_rows:
            trainer.fit_heads_on_all_rows()
        return result, copies

    def _probe(self, training, frozen_layers: int = 0,
               serve: bool = False) -> tuple[dict[str, dict[str, float]], list[PreparedTask]]:
        """Heads fitted on frozen features of the current encoder, on copies of the heads."""
        result, copies = self._fit_copies(training.model_copy(update={"encoder_epochs": 0}), frozen_layers, serve)
        return result.metrics["probe"], copies

    def _frozen_layers(self, mode: UpdateMode) -> int:
        return frozen_prefix_layers(self.encoder, set(exchanged_names(self.param_names, mode)))

    def _ensure_baseline(self, training, frozen_layers: int = 0, rounds: int = 1,
                         trainable: set[str] | None = None) -> dict[str, dict[str, float]]:
        """Local-only baseline, once per site: heads fitted on the frozen *pretrained* encoder, or
        (``training.baseline: finetuned``) for each task the better on validation of that and the
        encoder fine-tuned alone on the federation's budget.

        Its heads (and fine-tuned tensors) are kept under ``baseline/``: for each task the federation
        serves worse than that on validation, the site keeps serving the baseline model.
        """
        if self.baseline is None:
            t0 = time.perf_counter()
            if self.config.training.baseline == "finetuned" and trainable and self.adapters is None:
                self.baseline, heads = self._finetuned_baseline(training, frozen_layers, rounds, trainable)
            else:
                if self.config.training.baseline == "finetuned":
                    log.warning("site %s: baseline: finetuned needs an update mode without adapters; "
                                "keeping the probe as the baseline", self.config.name)
                self.baseline, heads = self._probe(training, frozen_layers, serve=True)
                self._keep_baseline_tensors([], {})
            for task in heads:
                self.baseline_store.save(task.spec, task.head.state_dict(), {"metrics": self.baseline[task.name],
                                                               "mode": "baseline", "encoder": self.encoder_spec})
            write_json_atomic(self.root / "baseline.json", self.baseline)
            log.info("site %s: local-only baseline recorded in %.1fs", self.config.name, time.perf_counter() - t0)
        return self.baseline

    def _finetuned_baseline(self, training, frozen_layers: int, rounds: int,
                            trainable: set[str]) -> tuple[dict[str, dict[str, float]], list[PreparedTask]]:
        """What this site would train without joining, task by task: a copy of the pretrained encoder
        fine-tuned alone for ``rounds`` rounds' steps in one schedule, heads refit on every row; a task
        that validates better on the probe (heads on the pretrained encoder) keeps the probe, as a site
        training alone would serve it: one task's fine-tuning may cost another (keep-best per task)."""
        encoder = copy.deepcopy(self.encoder)
        budget = training.model_copy(update={
            "max_steps": training.max_steps * rounds if training.max_steps else None,
            "encoder_epochs": training.encoder_epochs * rounds, "keep_best": False})
        result, heads = self._fit_copies(budget, frozen_layers, serve=True, encoder=encoder, schedule_part=(0, 1),
                                         encoder_trainable=trainable.__contains__, optimizer_state={})
        probe, tuned = result.metrics["probe"], result.metrics.get("finetuned", {})  # none: no encoder step ran
        primary = {t.name: t.spec.primary_metric for t in self.tasks}
        tuned_tasks = [t.name for t in self.tasks
                       if t.name in tuned and tuned[t.name][primary[t.name]] >= probe[t.name][primary[t.name]]]
        metrics = {name: tuned[name] for name in tuned_tasks}
        if len(tuned_tasks) < len(self.tasks):  # those tasks keep heads on the pretrained encoder
            probe_metrics, probe_heads = self._probe(training, frozen_layers, serve=True)
            heads = [h if h.name in tuned_tasks else p for h, p in zip(heads, probe_heads)]
            metrics.update((t.name, probe_metrics[t.name]) for t in self.tasks if t.name not in tuned_tasks)
        params = dict(encoder.named_parameters())
        self._keep_baseline_tensors(tuned_tasks, {n: params[n].detach().float().cpu().numpy() for n in sorted(trainable)})
        log.info("site %s: baseline fine-tuned alone; tasks served over it: %s", self.config.name, tuned_tasks or "none")
        return {t.name: metrics[t.name] for t in self.tasks}, heads

    def _keep_baseline_tensors(self, tasks: list[str], tensors: dict[str, np.ndarray]) -> None:
        """The fine-tuned baseline's tensors and the tasks served over them (none: no tensors kept)."""
        self.baseline_tuned_path.parent.mkdir(parents=True, exist_ok=True)
        if tasks:
            write_bytes_atomic(self.baseline_tensors, save_arrays(tensors))
        else:
            self.baseline_tensors.unlink(missing_ok=True)
        write_json_atomic(self.baseline_tuned_path, tasks)

    def _baseline_tuned_tasks(self) -> set[str]:
        """The tasks whose baseline is served over its fine-tuned tensors (a state written before
        the choice was per task: every task, where the tensors exist)."""
        if self.baseline_tuned_path.exists():
            return set(json.loads(self.baseline_tuned_path.read_text()))
        return {t.name for t in self.tasks} if self.baseline_tensors.exists() else set()

    def train(self, content: RecordDict, timing: Timing) -> RecordDict:
        """One round at this site, step by step; each step fills in the round's ``SiteRound``."""
        r = self._receive(content)
        self._fit(r)
        self._make_update(r)
        self._choose_and_keep(r)
        self._record(r, timing)
        log.info("site %s: round %d done: serves its %s model, score %.3f, update norm %.3g, %.1f s",
                 self.config.name, r.config.server_round, r.site_model, mean_primary(r.site_metrics, self.tasks),
                 r.norm, r.seconds["handled"])  # one line per round, for a journal or a pipe
        if self.tracking is not None:
            self.tracking.round_done(self._tracking_record(r), r.site_entry)
        return self._reply(r)

    def _tracking_record(self, r: SiteRound) -> SiteRoundRecord:
        return SiteRoundRecord(
            flower_run_id=r.config.run_id, round=r.config.server_round, num_rounds=r.config.num_rounds,
            update_mode=r.config.update_mode, served_model=r.site_model, served=r.site_metrics,
            federated=r.served.final, baseline=self.baseline or {},
            primary={t.name: t.spec.primary_metric for t in self.tasks}, resources=r.resources)

    def privacy_ledger(self) -> PrivacyLedger:
        """Every private round this site ever sent (client/privacy_ledger.py), read on first use."""
        if self._ledger is None:
            self._ledger = PrivacyLedger(self.config.state_dir / LEDGER, self.config.privacy.delta)
        return self._ledger

    def _privacy_refusal(self, config: RoundConfig) -> str | None:
        """This site's floor (site.yaml privacy:), then its lifetime epsilon budget."""
        privacy = self.config.privacy
        if (why := privacy.refusal(config.dp_clip, config.dp_noise)) is not None:
            return why
        if privacy.max_epsilon is not None and config.dp_noise is not None:
            return self.privacy_ledger().refusal(config.dp_noise, privacy.max_epsilon)
        return None

    def _receive(self, content: RecordDict) -> SiteRound:
        """Parse the round config (refusing rounds below this site's privacy floor), take the
        encoder and, in round 1, record the local-only baseline; then apply the global tensors."""
        handled_at = time.time()  # per-round start-up ends here: the warm worker has the message
        config = RoundConfig.from_record(content[CONFIG])
        if (why := self._privacy_refusal(config)) is not None:
            raise ValueError(f"site {self.config.name} refuses round {config.server_round}: {why}")
        r = SiteRound(config, self._training_config(config), handled_at)
        start_round(self.device)
        self._schedule_part = self._schedule_position(config)
        self._ensure_encoder(config)
        trainable = set(exchanged_names(self.param_names, UpdateMode.parse(config.update_mode)))
        r.frozen = self._frozen = frozen_prefix_layers(self.encoder, trainable)
        if self.baseline is None and self.rounds_done == 0:  # the encoder is still the pretrained one here
            self._ensure_baseline(r.training, r.frozen, rounds=config.num_rounds or 1, trainable=trainable)
            r.seconds["baseline"] = time.time() - handled_at
        mode, r.global_arrays = self._apply_global(config, content, train=True)
        log.info("site %s: round %d: training (%s)", self.config.name, config.server_round, mode)
        faults.hold_before_training(config.server_round)
        return r

    def _fit(self, r: SiteRound) -> None:
        """Heads on frozen features, then encoder and heads together (client/trainer.py)."""
        r.started = time.time()
        names = set(r.global_arrays)
        r.trainer = self._trainer(self.tasks, r.training, r.frozen, encoder_trainable=names.__contains__,
                                  weighting=self.weighting, proximal_mu=r.config.proximal_mu,
                                  optimizer_state=self.optimizer_state)
        r.result = r.served = r.trainer.fit()

    def _make_update(self, r: SiteRound) -> None:
        """What leaves the site: the trained tensors minus the received ones, clipped and noised when
        the federation is private, then coded for the wire."""
        trained = r.trainer.finetuned_encoder or dict(self.encoder.named_parameters())
        r.delta = {n: trained[n].detach().float().cpu().numpy() - r.global_arrays[n] for n in sorted(r.global_arrays)}
        faults.poison_update(r.delta)
        config = r.config
        if config.dp_clip is not None and config.dp_noise is not None:  # privacy: only the noised update leaves
            self.privacy_ledger().record(config.run_id, config.server_round, config.dp_noise, config.dp_clip)
            r.delta, trained_norm = privatize(r.delta, config.dp_clip, config.dp_noise)
            r.privacy = {"clip_norm": config.dp_clip, "noise_multiplier": config.dp_noise, "trained_norm": trained_norm}
        r.wire = self.codecs.send(config, r.delta)  # the delta itself, or its coding (with error feedback)

    def _choose_and_keep(self, r: SiteRound) -> None:
        """Keep the round's model on disk, train the personal one (ditto), choose the model this site
        serves and refit its heads on every row for serving; save the heads."""
        names = sorted(r.global_arrays)
        params = dict(self.encoder.named_parameters())  # the shared path's kept model, as the site serves it
        write_bytes_atomic(self.root / "encoder.safetensors",
                           save_arrays({n: params[n].detach().float().cpu().numpy() for n in names}))
        if r.config.personalization == "ditto":
            lam = r.config.ditto_lambda if r.config.ditto_lambda is not None else 0.0
            r.served = r.personal = self.ditto.round(self.tasks, r.training, set(names), r.global_arrays, lam)
        r.site_entry = self._choose_site_model(r.served.final, r.config.server_round, r.personal is not None)
        # the last round refits them where the site serves its own model too: site_model.json's candidates
        # then hold the federation's model as it would be served (benchmarks/choice.py scores them)
        last = bool(r.config.num_rounds) and r.config.server_round >= r.config.num_rounds
        if (r.site_model != "baseline" or last) and r.personal is None and r.training.serve_all_rows:
            r.seconds["serve_fit"] = r.trainer.fit_heads_on_all_rows()
        for task in self.tasks:
            self.store.save(task.spec, task.head.state_dict(),
                            {"round": r.config.server_round, "metrics": r.result.final[task.name], "mode": "federated"})
        self.rounds_done += 1

    def _record(self, r: SiteRound, timing: Timing) -> None:
        """The round's seconds and its line in the site's own history."""
        # total: the trainer's work; handled: the whole round at the site, message in to reply out
        # (decoding, state writes and the baseline included), what benchmarks/site_vs_bare.py compares
        done = time.time()
        r.seconds = dict(r.result.seconds, **r.seconds, total=done - r.started, handled=done - r.handled_at)
        r.seconds.setdefault("baseline", 0.0)
        if r.personal is not None:
            r.seconds["personal"] = sum(r.personal.seconds.values())
        r.startup = r.handled_at - timing.process_started_at if timing.process_started_at else float("nan")
        r.norm = l2_norm(r.delta)  # of what is sent: with privacy on, the trained norm stays in the history
        r.resources = resource_figures(self.device)
        self._append_history({
            "round": r.config.server_round, "run_id": r.config.run_id, "received": digest(r.global_arrays),
            "sent": digest(r.wire), "heads": self._heads_digest(), "kept": r.result.kept, "update_norm": r.norm,
            **({"privacy": r.privacy} if r.privacy is not None else {}),
            "metrics": r.served.final, "seconds": r.seconds, "startup_seconds": r.startup, "resources": r.resources,
        })

    def _reply(self, r: SiteRound) -> RecordDict:
        """The reply: the coded update, the numbers every site sends, and this site's report."""
        if r.privacy is not None and self.config.privacy.withhold_metrics:
            return self._private_reply(r)
        result = r.result
        metrics = MetricRecord({
            SiteMetric.NUM_EXAMPLES: result.num_examples,
            SiteMetric.TRAIN_LOSS: float(np.mean(list(result.train_loss.values()))),
            SiteMetric.SCORE: mean_primary(r.served.final, self.tasks),
            SiteMetric.SCORE_GLOBAL: mean_primary(result.metrics["probe"], self.tasks),
            SiteMetric.SCORE_SITE: mean_primary(r.site_metrics, self.tasks),
            SiteMetric.UPDATE_NORM: r.norm,
            SiteMetric.SECONDS: r.seconds["total"],
            SiteMetric.STARTUP_SECONDS: r.startup if np.isfinite(r.startup) else -1.0,
        })
        report = self._report(result.kept, {
            Section.VAL: r.served.final, Section.SHARED: result.final, Section.PROBE: result.metrics["probe"],
            Section.BEFORE: result.metrics["before"], Section.SERVED: r.site_metrics,
            Section.BASELINE: self.baseline or {}, Section.TRAIN_LOSS: result.train_loss, Section.SECONDS: r.seconds,
            Section.RESOURCES: r.resources,
        })
        report[ReportKey.SITE_MODEL] = r.site_model
        return RecordDict({ARRAYS: to_record(r.wire), METRICS: metrics, REPORT: report})

    def _private_reply(self, r: SiteRound) -> RecordDict:
        """A private round's reply: the noised update, and of the rest only what the data does not shape:
        the example count is 1 (a count would tell the site's size), no loss or score leaves (the DP
        guarantee covers the update alone); the history keeps them. Still sent: timings, the noised
        update's norm, and which model the site serves."""
        metrics = MetricRecord({
            SiteMetric.NUM_EXAMPLES: 1,
            SiteMetric.UPDATE_NORM: r.norm,
            SiteMetric.SECONDS: r.seconds["total"],
            SiteMetric.STARTUP_SECONDS: r.startup if np.isfinite(r.startup) else -1.0,
        })
        report = self._report(r.result.kept, {Section.SECONDS: r.seconds, Section.RESOURCES: r.resources})
        report[ReportKey.SITE_MODEL] = r.site_model
        return RecordDict({ARRAYS: to_record(r.wire), METRICS: metrics, REPORT: report})

    def _choose_site_model(self, federated: dict[str, dict[str, float]], round_: int,
                           personal: bool = False) -> dict[str, Any]:
        """The model this site should serve, task by task: the federated one, unless the local-only
        baseline validates better on that task (a site's tasks may gain from joining unequally).

        Returns the entry written to site_model.json (client/predict.py reads it): ``model`` is
        "federated", "baseline" or "mixed"; each of its ``parts`` names the tasks it serves and where
        their encoder and heads are: the encoder's trained tensors over the global encoder
        (``encoder.safetensors``) with their heads, or the baseline's heads over the pretrained
        encoder or, fine-tuned alone, over its own tensors.
        """
        folder = self.ditto.root if personal else self.root
        tuned = self._baseline_tuned_tasks()
        candidates: dict[str, tuple[dict[str, Any], dict[str, dict[str, float]]]] = {  # ties: the first listed
            "federated": ({"model": "federated", "heads": str(folder / "heads"),
                           "encoder_tensors": str(folder / "encoder.safetensors"),
                           "encoder": f"{self.encoder_spec} with encoder_tensors over it",
                           "lora": dataclasses.asdict(self.adapters) if self.adapters is not None else None},
                          federated)}
        if self.baseline is not None:  # over its fine-tuned tensors, then over the pretrained encoder
            baseline_part = {"model": "baseline", "heads": str(self.baseline_store.root), "lora": None}
            candidates["baseline-tuned"] = (dict(baseline_part, encoder_tensors=str(self.baseline_tensors),
                                                 encoder=f"{self.encoder_spec} fine-tuned alone"),
                                            {n: m for n, m in self.baseline.items() if n in tuned})
            candidates["baseline"] = (dict(baseline_part, encoder_tensors=None, encoder=f"pretrained {self.encoder_spec}"),
                                      {n: m for n, m in self.baseline.items() if n not in tuned})

        def best(task: PreparedTask) -> str:
            metric = task.spec.primary_metric
            return choose({name: scores[task.name][metric] for name, (_, scores) in candidates.items()
                           if task.name in scores})

        chosen = {t.name: best(t) for t in self.tasks}
        parts = [dict(part, tasks=[t.name for t in self.tasks if chosen[t.name] == name])
                 for name, (part, _) in candidates.items() if name in chosen.values()]
        kinds = {part["model"] for part in parts}
        entry = {"model": kinds.pop() if len(kinds) == 1 else "mixed", "round": round_,
                 "metrics": {t.name: candidates[chosen[t.name]][1][t.name] for t in self.tasks},
                 "personalized": bool(personal and "federated" in chosen.values()), "parts": parts,
                 # each candidate's validation metrics per task and where it is, for the curious (learning.py)
                 "candidates": {name: {"part": part, "metrics": scores} for name, (part, scores) in candidates.items()},
                 # what client/predict.py rebuilds every part's encoder from
                 "encoder_spec": self.encoder_spec, "encoder_seed": self.encoder_seed}
        write_json_atomic(self.root / "site_model.json", entry)
        return entry

    def evaluate(self, content: RecordDict) -> RecordDict:
        """Score the global encoder here: heads refitted on its frozen features (copies)."""
        config = RoundConfig.from_record(content[CONFIG])
        training = self._training_config(config)
        mode, _ = self._apply_global(config, content)
        start = time.time()
        metrics, _ = self._probe(training, self._frozen_layers(mode))
        num_val = sum(len(t.val_ids) for t in self.tasks)
        record = MetricRecord({
            SiteMetric.NUM_EXAMPLES: num_val,
            SiteMetric.SCORE: mean_primary(metrics, self.tasks),
            SiteMetric.SECONDS: time.time() - start,
        })
        return RecordDict({METRICS: record, REPORT: self._report("", {Section.VAL: metrics})})

    # ------------------------------------------------------------ helpers
    def _report(self, kept: str, sections: dict[str, Any]) -> ConfigRecord:
        report: dict[str, Any] = {
            ReportKey.SITE: self.config.name,
            ReportKey.TASKS: [t.name for t in self.tasks],
            ReportKey.PRIMARY: [t.spec.primary_metric for t in self.tasks],
            ReportKey.DEVICE: str(self.device),
            ReportKey.ENCODER: self.encoder_spec,
            ReportKey.KEPT: kept,
        }
        report.update(flatten_sections(sections))
        return ConfigRecord(report)

    def _heads_digest(self) -> str:
        return digest({f"{t.name}.{k}": v.detach().cpu().numpy() for t in self.tasks
                       for k, v in t.head.state_dict().items()})

    def _append_history(self, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "history.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

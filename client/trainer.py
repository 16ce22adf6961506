"""The local trainer: FedRep-style head phase, then encoder phase, over a site's tasks.

1. Head phase: the encoder is frozen, so every text's embedding is computed once and the
   heads are fitted on those cached features for many cheap epochs (a linear probe).
2. Encoder phase: encoder and heads train together on the weighted sum of the task losses,
   one batch of every task per step, AdamW with linear warm-up and decay, clipped gradients.
3. Keep-best: if fine-tuning ends worse on validation than the probe did, the site keeps
   the probe's weights (linear probing then fine-tuning, Kumar et al. 2022).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import Progress

from fedtl.client.batching import EMBED_BATCH, pad_batch
from fedtl.client.loss_weighting import LossWeighting
from fedtl.client.prefix_cache import PrefixCache
from fedtl.shared.config import TrainingConfig, device_problem, precision_problem
from fedtl.shared.data import TaskData
from fedtl.shared.encoders import TextEncoder
from fedtl.shared.heads import HeadSpec, TaskHead


@dataclass
class PreparedTask:
    """A task ready to train: its data, tokenised once, and its head."""

    data: TaskData
    spec: HeadSpec
    head: TaskHead
    train_ids: list[list[int]]
    val_ids: list[list[int]]

    @property
    def name(self) -> str:
        return self.spec.task


def prepare_task(data: TaskData, encoder: TextEncoder, max_length: int, head: TaskHead | None = None) -> PreparedTask:
    spec = HeadSpec.for_data(data, encoder.hidden_size)
    return PreparedTask(
        data=data,
        spec=spec,
        head=head if head is not None else spec.build(),
        train_ids=encoder.tokenize(data.train.texts, max_length),
        val_ids=encoder.tokenize(data.val.texts, max_length),
    )


@dataclass
class TrainResult:
    """What one call of ``LocalTrainer.fit`` did. ``metrics[stage][task][metric]``."""

    metrics: dict[str, dict[str, dict[str, float]]]
    train_loss: dict[str, float]
    num_examples: int
    seconds: dict[str, float]
    steps: dict[str, int]
    kept: str  # "finetuned", or "probe" when fine-tuning did not beat the frozen-encoder probe
    loss_weights: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, dict[str, float]]:
        return self.metrics["final"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if (why := device_problem(name)) is not None:
        raise RuntimeError(why)
    return torch.device(name)


def resolve_precision(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for mixed precision, or None for plain fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if (why := precision_problem(precision, device.type)) is not None:
        raise RuntimeError(why)
    return torch.bfloat16 if precision == "bf16" else torch.float16


def mean_primary(metrics: dict[str, dict[str, float]], tasks: list[PreparedTask]) -> float:
    """One number per site: the mean of each task's primary metric (higher is better)."""
    return float(np.mean([metrics[t.name][t.spec.primary_metric] for t in tasks]))


def share_groups(tasks: list[PreparedTask]) -> list[list[PreparedTask]]:
    """Tasks over identical inputs (same texts, same split) share features and forward passes."""
    groups: list[list[PreparedTask]] = []
    for task in tasks:
        for group in groups:
            if group[0].train_ids == task.train_ids and group[0].val_ids == task.val_ids:
                group.append(task)
                break
        else:
            groups.append([task])
    return groups


def constant_schedule(warmup: int) -> Callable[[int], float]:
    return lambda step: (step + 1) / warmup if step < warmup else 1.0


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def lr_multipliers(cfg: TrainingConfig, steps: int, part: tuple[int, int] = (0, 1)) -> Callable[[int], float]:
    """The lr multiplier of each of ``steps`` steps that are part k of n equal parts of one schedule."""
    done, parts = part
    span, start = steps * parts, steps * done
    warmup = int(cfg.warmup_ratio * span)
    schedule = linear_schedule(warmup, span) if cfg.lr_schedule == "linear" else constant_schedule(warmup)
    return lambda step: schedule(start + step)


@dataclass(frozen=True)
class TrainerOptions:
    """How one ``LocalTrainer`` trains, beyond the encoder, the tasks and the site's training config."""

    device: torch.device = torch.device("cpu")
    autocast_dtype: torch.dtype | None = None  # mixed precision (bf16 / fp16), None: fp32
    progress: Progress | None = None  # rich progress bars (fedtl train-local)
    encoder_trainable: Callable[[str], bool] = lambda name: True  # which encoder tensors train
    weighting: LossWeighting | None = None  # default: the tasks' static loss weights
    proximal_mu: float = 0.0  # FedProx, Ditto: mu/2 * ||w - anchor||^2 on the trained encoder part
    anchor: dict[str, torch.Tensor] | None = None  # default: the encoder's weights when training starts
    # AdamW moments of the encoder tensors, carried from one round to the next at a site: a
    # fresh Adam's first steps are sign-like and full-size, a kick to every weight each round
    optimizer_state: dict[str, dict[str, torch.Tensor]] | None = None
    schedule_part: tuple[int, int] = (0, 1)  # (k, n): this call is part k of n of one lr schedule
    # last:N: embeddings and the first layers are a frozen prefix (no gradient, no dropout),
    # and with a cache their outputs are computed once per prefix, not every pass
    frozen_layers: int = 0
    prefix_cache: PrefixCache | None = None


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Wall seconds of the block, stored under ``key`` (the round's timing breakdown)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = time.perf_counter() - started


class LocalTrainer:
    """Trains a site's heads and (part of) the shared encoder on the site's own data."""

    def __init__(self, encoder: TextEncoder, tasks: list[PreparedTask], config: TrainingConfig,
                 options: TrainerOptions | None = None):
        o = options or TrainerOptions()
        self.encoder = encoder.to(o.device)
        self.tasks = tasks
        self.groups = share_groups(tasks)
        self.cfg = config
        self.device, self.autocast_dtype, self.progress = o.device, o.autocast_dtype, o.progress
        self.encoder_trainable = o.encoder_trainable
        self.proximal_mu, self.anchor = o.proximal_mu, o.anchor
        self.optimizer_state = o.optimizer_state
        self.schedule_part = o.schedule_part
        self.frozen_layers = o.frozen_layers if encoder.can_split(o.frozen_layers) else 0
        self.prefix_cache = o.prefix_cache
        self.cached = False
        self.finetuned_encoder: dict[str, torch.Tensor] = {}  # trained tensors, even if keep-best restored
        # features of the model fit() kept, by split (None: not computed): what heads for serving refit on
        self._kept_features: dict[str, dict[str, torch.Tensor] | None] = {"train": None, "val": None}
        for task in tasks:
            task.head.to(o.device)
        self.weighting = (o.weighting or LossWeighting(
            [t.name for t in tasks],
            {t.name: t.data.task.loss_weight for t in tasks},
            learned=config.loss_weighting == "uncertainty",
        )).to(o.device)
        self.scaler = torch.amp.GradScaler("cuda") if o.autocast_dtype == torch.float16 else None

    # ------------------------------------------------------------ helpers
    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _bar(self, description: str, total: int):
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total)

    def _advance(self, bar, **fields) -> None:
        if bar is not None and self.progress is not None:
            self.progress.update(bar, advance=1, **fields)

    def _targets(self, task: PreparedTask, split: str, index: np.ndarray | list[int] | None = None) -> torch.Tensor:
        y = (task.data.train if split == "train" else task.data.val).targets
        return torch.as_tensor(y if index is None else y[index]).to(self.device)

    @staticmethod
    def _seqs(group: list[PreparedTask], split: str) -> list[list[int]]:
        return group[0].train_ids if split == "train" else group[0].val_ids

    @staticmethod
    def _cache_name(group: list[PreparedTask], split: str) -> str:
        return f"{group[0].name}/{split}"

    def _prepare_cache(self) -> None:
        self.cached = self.prefix_cache is not None and self.prefix_cache.prepare(
            self.encoder, self.frozen_layers,
            {self._cache_name(g, split): self._seqs(g, split) for g in self.groups for split in ("train", "val")},
            self.device)

    def _forward(self, group: list[PreparedTask], split: str, index: list[int]) -> torch.Tensor:
        """Pooled features of texts ``index`` of a group's split (cached prefix when there is one)."""
        if self.cached:
            states, mask = self.prefix_cache.batch(self._cache_name(group, split), index)
            return self.encoder.suffix(states, mask, self.frozen_layers)
        seqs = self._seqs(group, split)
        ids, mask = pad_batch([seqs[i] for i in index], self.encoder.pad_token_id, self.device)
        return self.encoder(ids, mask, frozen_layers=self.frozen_layers)

    @torch.no_grad()
    def embed(self, group: list[PreparedTask], split: str) -> torch.Tensor:
        """Pooled encoder features of a group's split (in its original order), in fp32."""
        self.encoder.eval()
        seqs = self._seqs(group, split)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths pad less
        out = torch.empty((len(seqs), self.encoder.hidden_size), device=self.device)
        for start in range(0, len(order), EMBED_BATCH):
            chunk = order[start : start + EMBED_BATCH]
            with self._autocast():
                out[chunk] = self._forward(group, split, chunk).float()
        return out

    def features(self, split: str) -> dict[str, torch.Tensor]:
        """Pooled features of every task's split, computed once per group of shared inputs."""
        out = {}
        for group in self.groups:
            feats = self.embed(group, split)
            out.update({t.name: feats for t in group})
        return out

    @torch.no_grad()
    def evaluate(self, val_features: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
        """Validation metrics and loss per task. Features are computed unless given."""
        val_features = val_features or self.features("val")
        results = {}
        for task in self.tasks:
            feats = val_features[task.name]
            task.head.eval()
            outputs = task.head(feats)
            targets = self._targets(task, "val")
            metrics = task.spec.metrics(task.spec.predict(outputs), task.data.val.targets)
            metrics["loss"] = float(task.spec.loss(outputs, targets))
            results[task.name] = metrics
        return results

    # ------------------------------------------------------------ phase 1: heads on frozen features
    def train_heads(self, train_features: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
        cfg, steps = self.cfg, 0
        losses: dict[str, float] = {}
        bs = max(cfg.batch_size, 64)  # cached features: bigger batches are free
        batches = sum(math.ceil(len(t.train_ids) / bs) for t in self.tasks)
        bar = self._bar("heads (frozen encoder)", cfg.head_epochs * batches)
        for task in self.tasks:
            feats, targets = train_features[task.name], self._targets(task, "train")
            if cfg.head_fit == "converged":
                losses[task.name] = self._fit_converged(task, feats, targets)
                continue
            opt = torch.optim.AdamW(task.head.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay)
            gen = torch.Generator().manual_seed(cfg.seed)
            task.head.train()
            epoch_loss = float("nan")
            for _ in range(cfg.head_epochs):
                perm = torch.randperm(len(feats), generator=gen).to(self.device)
                total = 0.0
                for start in range(0, len(perm), bs):
                    idx = perm[start : start + bs]
                    loss = task.spec.loss(task.head(feats[idx]), targets[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    value = float(loss.detach())
                    total += value * len(idx)
                    steps += 1
                    self._advance(bar, description=f"heads: {task.name} loss {value:.3f}")
                epoch_loss = total / len(feats)
            losses[task.name] = epoch_loss
        return losses, steps

    @torch.no_grad()
    def _fit_converged(self, task: PreparedTask, feats: torch.Tensor, targets: torch.Tensor) -> float:
        """A head fitted to convergence (ridge by GCV, or logistic regression by L-BFGS with a
        cross-validated penalty); returns its training loss."""
        weight, bias = task.spec.fit_converged(feats, targets, self.cfg.seed)
        task.head.linear.weight.copy_(weight)
        task.head.linear.bias.copy_(bias)
        task.head.eval()
        return float(task.spec.loss(task.head(feats), targets))

    @torch.no_grad()
    def fit_heads_on_all_rows(self) -> float:
        """Refit every head on training *and* validation rows, on the features of the model ``fit``
        kept; returns the seconds it took.

        For serving, once validation has chosen the model: a site's validation rows are a third
        of what it has, and a head fitted on them too predicts unseen rows better
        (benchmarks/README.md, "Heads for serving"). The validation scores ``fit`` reported stay
        those of the training-only fit, the only honest ones. Converged fits only: SGD heads are
        left as trained.
        """
        if self.cfg.head_fit != "converged":
            return 0.0
        t0 = time.perf_counter()
        train = self._kept_features["train"] or self.features("train")
        val = self._kept_features["val"] or self.features("val")
        for task in self.tasks:
            if not len(task.val_ids):
                continue
            self._fit_converged(task, torch.cat([train[task.name], val[task.name]]),
                                torch.cat([self._targets(task, "train"), self._targets(task, "val")]))
        return time.perf_counter() - t0

    # ------------------------------------------------------------ phase 2: encoder + heads
    def _batches(self, task: PreparedTask, rng: random.Random) -> Iterator[list[int]]:
        """Endless shuffled batches of one task group's training indices (smaller groups cycle)."""
        n, bs = len(task.train_ids), self.cfg.batch_size
        while True:
            order = list(range(n))
            rng.shuffle(order)
            for start in range(0, n, bs):
                yield order[start : start + bs]

    def encoder_parameters(self) -> dict[str, torch.nn.Parameter]:
        params = {}
        for name, param in self.encoder.named_parameters():
            param.requires_grad_(self.encoder_trainable(name))
            if param.requires_grad:
                params[name] = param
        return params

    def _encoder_optimizer(self, named: dict[str, torch.nn.Parameter]) -> torch.optim.AdamW:
        """AdamW over the trained encoder tensors and the heads (and learned loss weights), each at
        its own learning rate, with the encoder's moments carried from the site's last round."""
        cfg = self.cfg
        head_params = [p for t in self.tasks for p in t.head.parameters()] + [
            p for p in self.weighting.parameters() if p.requires_grad
        ]
        groups = [{"params": head_params, "lr": cfg.finetune_head_lr}]
        if named:
            groups.insert(0, {"params": list(named.values()), "lr": cfg.encoder_lr})
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        if self.optimizer_state is not None:
            for name, param in named.items():
                if name in self.optimizer_state:
                    opt.state[param] = {k: v.clone() for k, v in self.optimizer_state[name].items()}
        return opt

    def _optimizer_step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
        """Backward, clip, step; through the gradient scaler under fp16."""
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()

    def train_encoder(self) -> tuple[dict[str, float], int]:
        cfg = self.cfg
        steps_per_epoch = max(math.ceil(len(g[0].train_ids) / cfg.batch_size) for g in self.groups)
        total_steps = cfg.encoder_epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        if total_steps == 0:
            return {}, 0
        named = self.encoder_parameters()
        enc_params = list(named.values())
        anchors = []
        if self.proximal_mu > 0:
            anchors = [(self.anchor[n].to(p.device) if self.anchor is not None else p.detach().clone())
                       for n, p in named.items()]
        opt = self._encoder_optimizer(named)
        params = [p for g in opt.param_groups for p in g["params"]]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multipliers(cfg, total_steps, self.schedule_part))
        rng = random.Random(cfg.seed)
        streams = [self._batches(group[0], rng) for group in self.groups]
        sums = {t.name: 0.0 for t in self.tasks}
        self.encoder.train()
        for t in self.tasks:
            t.head.train()
        bar = self._bar("encoder + heads", total_steps)
        for _step in range(total_steps):
            losses = {}
            for group, stream in zip(self.groups, streams):  # one batch per group: one forward, all its heads
                idx = next(stream)
                with self._autocast():
                    feats = self._forward(group, "train", idx)
                    outputs = {task.name: task.head(feats) for task in group}
                for task in group:
                    losses[task.name] = task.spec.loss(outputs[task.name], self._targets(task, "train", idx))
            loss = self.weighting(losses)
            if anchors:
                loss = loss + 0.5 * self.proximal_mu * sum(
                    (p - a).pow(2).sum() for p, a in zip(enc_params, anchors)
                )
            self._optimizer_step(opt, loss, params)
            sched.step()
            for name, value in losses.items():
                sums[name] += float(value.detach())
            self._advance(bar, description=f"encoder + heads: loss {float(loss.detach()):.3f}")
        self.encoder.eval()
        if self.optimizer_state is not None:
            self.optimizer_state.clear()
            self.optimizer_state.update({name: {k: v.detach().clone() for k, v in opt.state[param].items()}
                                         for name, param in named.items() if param in opt.state})
        return {name: total / total_steps for name, total in sums.items()}, total_steps

    # ------------------------------------------------------------ the whole local round
    def _snapshot(self) -> dict:
        return copy.deepcopy({
            "encoder": {k: v for k, v in self.encoder.state_dict().items()},
            "heads": {t.name: t.head.state_dict() for t in self.tasks},
            "weighting": self.weighting.state_dict(),
        })

    def _restore(self, snap: dict) -> None:
        self.encoder.load_state_dict(snap["encoder"])
        for t in self.tasks:
            t.head.load_state_dict(snap["heads"][t.name])
        self.weighting.load_state_dict(snap["weighting"])

    def fit(self) -> TrainResult:
        """Heads on frozen features (the probe), then, with encoder epochs, encoder and heads together
        and the heads refit on the tuned features; keep-best returns to the probe if it validates better."""
        torch.manual_seed(self.cfg.seed)
        seconds: dict[str, float] = {}
        steps: dict[str, int] = {}
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        with timed(seconds, "prefix_cache"):
            self._prepare_cache()
        with timed(seconds, "embed"):
            train_feats, val_feats = self.features("train"), self.features("val")
            metrics["before"] = self.evaluate(val_feats)
        with timed(seconds, "head"):
            train_loss, steps["head"] = self.train_heads(train_feats)
            metrics["probe"] = self.evaluate(val_feats)
        self._kept_features = {"train": train_feats, "val": val_feats}
        kept = "probe"
        if self.cfg.encoder_epochs > 0:
            kept = self._fit_encoder(metrics, seconds, steps, train_loss)
        metrics["final"] = metrics[kept]
        return TrainResult(metrics=metrics, train_loss=train_loss, num_examples=sum(len(t.train_ids) for t in self.tasks),
                           seconds=seconds, steps=steps, kept=kept, loss_weights=self.weighting.weights())

    def _fit_encoder(self, metrics: dict, seconds: dict[str, float], steps: dict[str, int],
                     train_loss: dict[str, float]) -> str:
        """The encoder phase of ``fit``; returns the model kept ("finetuned", or "probe" by keep-best)."""
        snapshot = self._snapshot() if self.cfg.keep_best else None
        probe_features = self._kept_features
        with timed(seconds, "encoder"):
            encoder_loss, steps["encoder"] = self.train_encoder()
        tuned_train = None
        if self.cfg.refit_heads:  # heads converged on the fine-tuned encoder's features (LP-FT, then LP again)
            with timed(seconds, "refit"):
                tuned_train = self.features("train")
                _, steps["refit"] = self.train_heads(tuned_train)
        with timed(seconds, "eval"):
            tuned_val = self.features("val")
            metrics["finetuned"] = self.evaluate(tuned_val)
        self._kept_features = {"train": tuned_train, "val": tuned_val}
        train_loss.update(encoder_loss)
        self.finetuned_encoder = {name: p.detach().clone() for name, p in self.encoder.named_parameters()
                                  if p.requires_grad}
        if snapshot is not None and mean_primary(metrics["finetuned"], self.tasks) < mean_primary(metrics["probe"],
                                                                                                  self.tasks):
            self._restore(snapshot)
            self._kept_features = probe_features
            return "probe"
        return "finetuned"

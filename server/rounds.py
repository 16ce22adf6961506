"""The federation's round loop, run inside fedtl's ServerApp.

Each round is one Flower exchange: the coordinator sends the update mode's encoder
tensors and the round config, sites reply with an encoder delta plus metrics (their
evaluation rides in the same reply). A round has three steps:

1. ``send``: sample sites and build their messages (logged on the wire log);
2. ``train_exchange``: push them and take each reply as it arrives (``receive``): its
   ``Verdict`` (``server/validation.py``) and, if accepted, folded into the round's
   ``RoundAggregator`` (``server/aggregation.py``: running sums, so memory does not grow
   with the number of sites), then released; sites that never answer are failed;
3. ``RoundAggregator.aggregate``: the configured Flower strategy turns the sites' trained
   models (global + delta) into the new global tensors, so FedAvg, FedProx, FedAdam/FedYogi,
   trimmed mean and median all work unchanged.

The outcome is a typed ``RoundResult``. After every round the loop saves a resume point
(global tensors, the strategy's state, the round's record) before observers hear of it,
so ``--resume`` after a crash at any moment continues exactly: no round lost, none twice.
A separate evaluate exchange runs only every ``evaluate_every`` rounds and at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedtl.server.aggregation import STREAMING_STRATEGIES, CountSketch, RoundAggregator, RunningSum
from fedtl.server.checkpoints import (
    LoraCheckpoint,
    latest_checkpoint,
    load_checkpoint_into,
    save_checkpoint,
    save_start_checkpoint,
)
from fedtl.server.downlink import Downlink
from fedtl.server.history import Evaluation, Problem, RoundRecord, SiteEntry
from fedtl.server.identity import SiteIdentity
from fedtl.server.lora_aggregation import product_mean
from fedtl.server.norm_bound import NormGate, lower_median
from fedtl.server.resume import ResumePoint, load_resume_point, restore_strategy, save_resume_point, strategy_state
from fedtl.server.similarity import cosine_matrix, mix, mixing_weights
from fedtl.server.strategies import build_strategy, extrapolation, strategy_settings
from fedtl.server.validation import Verdict, check_evaluation, check_update, site_name
from fedtl.server.wire_log import WireLog
from fedtl.shared.codecs import Codec, CodecError, decode
from fedtl.shared.encoders import TextEncoder, encoder_folder, load_encoder
from fedtl.shared.federation_config import FederationConfig, redact_secrets
from fedtl.shared.lora import add_adapters, target_weight
from fedtl.shared.privacy import epsilon_spent
from fedtl.shared.privacy import noise_multiplier as calibrate_noise
from fedtl.shared.protocol import ARRAYS, CONFIG, METRICS, REPORT, RoundConfig, SiteMetric
from fedtl.shared.records import digest, from_record, record_nbytes, tensor_record, to_record
from fedtl.shared.update_modes import exchanged_names

log = logging.getLogger(__name__)
POLL_MIN, POLL_MAX = 0.05, 0.5  # seconds between looks for replies (backing off while none come)
PULL_BATCH = 4  # replies pulled (and held) at a time


class RoundObserver(Protocol):
    """Receives the federation's events: the history file, MLflow, a live table.

    ``round`` may be called again for a round it already saw (after a crash, on resume):
    an observer records each round once.
    """

    def start(self, info: dict[str, Any]) -> None: ...

    def round(self, record: RoundRecord) -> None: ...

    def finish(self, status: str, summary: dict[str, Any]) -> None: ...


def _report(msg: Message) -> dict[str, Any]:
    if REPORT not in msg.content.config_records:
        return {}
    return {k: (list(v) if isinstance(v, list) else v) for k, v in msg.content[REPORT].items()}


def wait_for_sites(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of the {count} sites needed (min_sites, min_available_sites) "
                               f"connected within {timeout:.0f}s; start more sites or lower those settings")
        time.sleep(1.0)
    return nodes


# ---------------------------------------------------------------- one round, step by step
@dataclass
class Exchange:
    """What went out and what came back in one round. ``bases[node]``: the tensors that node got."""

    sent: list[Message]
    replies: list[Message] = field(default_factory=list)
    bases: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    bytes_up: int = 0
    node_bytes_up: dict[int, int] = field(default_factory=dict)

    @property
    def sampled(self) -> set[int]:
        return {m.metadata.dst_node_id for m in self.sent}

    @property
    def answered(self) -> set[int]:
        return {m.metadata.src_node_id for m in self.replies}

    def bytes_down(self) -> int:
        return sum(self.node_bytes_down().values())

    def node_bytes_down(self) -> dict[int, int]:
        return {m.metadata.dst_node_id: record_nbytes(m.content[ARRAYS]) for m in self.sent}

    def collect(self, grid: Grid, rnd: int, timeout: float, wire: WireLog,
                window: int | None = None) -> Iterator[Message]:
        """Each reply as it arrives, logged on the wire log and counted (before aggregation may
        release its tensors); at most ``window`` messages out at once."""
        for msg in receive(grid, self.sent, timeout, window):
            wire.record("up", rnd, msg)
            self.replies.append(msg)
            if not msg.has_error() and ARRAYS in msg.content.array_records:
                size = record_nbytes(msg.content[ARRAYS])
                self.bytes_up += size
                self.node_bytes_up[msg.metadata.src_node_id] = size
            yield msg


@dataclass
class Judgement:
    """Every reply's verdict, and the sampled sites that sent none."""

    accepted: list[tuple[Message, Verdict]]
    failed: list[dict[str, str]]
    rejected: list[dict[str, str]]


@dataclass
class RoundResult:
    """One finished round: its record (what the history, MLflow and the CLI see) and the new global tensors."""

    record: RoundRecord
    global_arrays: dict[str, np.ndarray]


def send(grid: Grid, strategy, rnd: int, arrays: dict[str, np.ndarray], config: RoundConfig, wire: WireLog,
         evaluate: bool = False, personal: dict[int, dict[str, np.ndarray]] | None = None,
         downlink: Downlink | None = None) -> Exchange:
    """Sample sites and build their messages. ``personal[node]``: that node gets these tensors instead;
    ``downlink``: every node gets what brings its encoder up to date (``server/downlink.py``)."""
    configure = strategy.configure_evaluate if evaluate else strategy.configure_train
    # the strategy sees the global tensors one by one (FedAdam & co. keep them for their server step);
    # what travels is the packed record (shared/records.py), built once for every node it goes to
    sent = list(configure(rnd, tensor_record(arrays), config.to_record(), grid))
    packed: ArrayRecord | None = None  # the global tensors packed, once a node gets them (not under a downlink)
    bases = {}
    encoded: dict[str, tuple[ArrayRecord, ConfigRecord]] = {}  # one record per payload, shared by its nodes
    for msg in sent:
        node = msg.metadata.dst_node_id
        bases[node] = (personal or {}).get(node, arrays)
        if downlink is not None:
            payload, base = downlink.payload(node)
            if base not in encoded:
                cfg = ConfigRecord({**msg.content[CONFIG], RoundConfig.key("base_digest"): base})
                encoded[base] = (to_record(payload), cfg)
            record, cfg = encoded[base]
            msg.content = RecordDict({**msg.content, ARRAYS: record, CONFIG: cfg})
        else:  # strategies share one RecordDict among their messages: give each its own
            if bases[node] is arrays:
                if packed is None:
                    packed = to_record(arrays)
                record = packed
            else:
                record = to_record(bases[node])
            msg.content = RecordDict({**msg.content, ARRAYS: record})
        wire.record("down", rnd, msg)
    return Exchange(sent, bases=bases)


def receive(grid: Grid, sent: list[Message], timeout: float, window: int | None = None) -> Iterator[Message]:
    """Push the messages, then yield each reply as soon as it is there, until all came or ``timeout``.

    Flower's ``send_and_receive`` returns only once every reply is in and looks every 3 s, so a
    round waited 1.5 s on average after its last site, with every reply held in memory. Here
    replies are pulled a few at a time with a short poll, so the caller can fold each one in
    and let it go.

    ``window``: at most this many messages out at once; each reply lets the next one go. Many
    sites on one host otherwise start all their ClientApp processes together, and Flower 1.39
    gives a task whose ClientApp has not checked in within 30 s to another, new ClientApp: an
    overloaded host then starts more processes than it has messages (benchmarks/README.md).
    """
    if not sent:
        return
    queue = list(sent)
    to: dict[str, Message] = {}
    pending: set[str] = set()

    def push(count: int) -> None:
        batch, queue[:count] = queue[:max(count, 0)], []
        if not batch:
            return
        for mid, msg in zip(grid.push_messages(batch), batch):
            if mid:
                to[mid] = msg
                pending.add(mid)

    push(window or len(queue))
    deadline = time.monotonic() + timeout
    wait = POLL_MIN
    while pending or queue:
        got = 0
        waiting = sorted(pending)
        for start in range(0, len(waiting), PULL_BATCH):
            for msg in grid.pull_messages(waiting[start:start + PULL_BATCH]):
                question = to.get(msg.metadata.reply_to_message_id)
                pending.discard(msg.metadata.reply_to_message_id)
                got += 1
                yield on_behalf_of(msg, question)
        if queue:
            push((window or len(queue)) - len(pending))
        if not pending and not queue:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if got:
            wait = POLL_MIN
        else:
            time.sleep(min(wait, remaining))
            wait = min(wait * 1.5, POLL_MAX)


def on_behalf_of(reply: Message, question: Message | None) -> Message:
    """The reply as coming from the site that was asked.

    When a site stops sending heartbeats, the SuperLink answers for it with an error whose sender
    is the SuperLink itself (node 1); the round would then count that site as silent too and
    name the failure "node-1". Such a reply is re-made as the site's own error reply.
    """
    if question is None or reply.metadata.src_node_id == question.metadata.dst_node_id:
        return reply
    return Message(error=reply.error, reply_to=question) if reply.has_error() else reply


def exchange(grid: Grid, strategy, rnd: int, arrays: dict[str, np.ndarray], config: RoundConfig,
             timeout: float, wire: WireLog, evaluate: bool = False,
             personal: dict[int, dict[str, np.ndarray]] | None = None, window: int | None = None) -> Exchange:
    """Sample, send, and collect every reply (evaluation: replies carry metrics only)."""
    ex = send(grid, strategy, rnd, arrays, config, wire, evaluate, personal)
    for _ in ex.collect(grid, rnd, timeout, wire, window):
        pass
    return ex


def decode_reply(msg: Message, codec: Codec, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Replace a reply's encoded delta by the fp32 tensors it stands for; the reason if it does not decode."""
    if msg.has_error() or ARRAYS not in msg.content.array_records:
        return None
    try:
        msg.content[ARRAYS] = tensor_record(decode(from_record(msg.content[ARRAYS]), codec, shapes))
    except CodecError as exc:
        return f"the {codec} update does not decode: {exc}"
    except ValueError as exc:  # the packed record itself (shared/records.py)
        return f"malformed update: {exc}"
    return None


def non_finite(arrays: dict[str, np.ndarray]) -> str | None:
    """The first tensor holding NaN or inf, or None."""
    return next((name for name, a in arrays.items() if not np.isfinite(a).all()), None)


def judge_reply(msg: Message, up: Codec, shapes: dict[str, tuple[int, ...]], global_arrays: dict[str, np.ndarray],
                fed: FederationConfig, named: dict[str, int]) -> Verdict:
    """One training reply's verdict: decoded, checked, its example count capped, its name unique."""
    if up.lossy and (reason := decode_reply(msg, up, shapes)) is not None:
        return Verdict(msg.metadata.src_node_id, safe_site_name(msg), "rejected", reason)
    verdict = check_update(msg, global_arrays, fed.max_update_norm, fed.max_site_examples)
    if verdict.ok and verdict.site in named and named[verdict.site] != verdict.node_id:
        return Verdict(verdict.node_id, verdict.site, "rejected",
                       f"site name {verdict.site!r} already answered this round from node {named[verdict.site]}")
    if verdict.note:
        log.warning("site %s: %s", verdict.site, verdict.note)
    return verdict


def safe_site_name(msg: Message) -> str:
    """The name a reply claims, for messages about it: printable, short, or its node id."""
    name = site_name(msg)
    return name if name.isprintable() and len(name) <= 64 else f"node-{msg.metadata.src_node_id}"


@dataclass
class ReplyIntake:
    """One round's training replies, each judged as it arrives: checked (``judge_reply``), its
    sender's name checked against what the transport vouches for (``SiteIdentity``), its norm
    bounded (``NormGate``), then folded into the aggregator or rejected with its reason."""

    grid: Grid
    ex: Exchange
    global_arrays: dict[str, np.ndarray]
    aggregator: RoundAggregator
    fed: FederationConfig
    identity: SiteIdentity
    gate: NormGate[tuple[Message, Verdict]]
    failed: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    named: dict[str, int] = field(default_factory=dict)  # site name -> the node whose update this round carries it
    _connected: set[int] | None = None

    def connected(self) -> set[int]:
        if self._connected is None:
            self._connected = set(self.grid.get_node_ids())
        return self._connected

    def take(self, msg: Message, up: Codec, shapes: dict[str, tuple[int, ...]]) -> None:
        try:  # a reply is untrusted input: whatever it holds, it can only be rejected, never end the run
            verdict = judge_reply(msg, up, shapes, self.global_arrays, self.fed, self.named)
            if verdict.ok and (why := self.identity.refuse(verdict.node_id, verdict.site, self.connected)):
                verdict = Verdict(verdict.node_id, verdict.site, "rejected", why)
            if verdict.ok:
                self.named[verdict.site] = verdict.node_id
                for item, refusal in self.gate.offer((msg, verdict), verdict.norm):
                    self.settle(*item, refusal)
                return
        except Exception as exc:  # noqa: BLE001 - any exception type a crafted reply can raise
            log.exception("the reply of node %s could not be judged", msg.metadata.src_node_id)
            verdict = Verdict(msg.metadata.src_node_id, safe_site_name(msg), "rejected",
                              f"malformed reply ({type(exc).__name__}: {str(exc)[:200]})")
        self.settle(msg, verdict)

    def settle(self, msg: Message, verdict: Verdict, refusal: str | None = None) -> None:
        if refusal is not None:
            verdict = Verdict(verdict.node_id, verdict.site, "rejected", refusal, verdict.norm)
        if verdict.ok:
            self.aggregator.add(msg, verdict, self.ex.bases.get(verdict.node_id, self.global_arrays))
            self.identity.bind(verdict.node_id, verdict.site)
        elif verdict.kind == "failed":
            self.failed.append({"site": verdict.site, "reason": verdict.reason})
        else:
            self.rejected.append({"site": verdict.site, "reason": verdict.reason})


def train_exchange(intake: ReplyIntake, rnd: int, wire: WireLog, downlink: Downlink | None = None) -> Judgement:
    """Receive the training replies, judging each and folding accepted ones into the intake's aggregator."""
    fed, ex = intake.fed, intake.ex
    up = Codec.parse(fed.codec.up)
    shapes = {n: a.shape for n, a in intake.global_arrays.items()}
    for msg in ex.collect(intake.grid, rnd, fed.round_timeout, wire, fed.sites_in_flight):
        if downlink is not None:
            downlink.answered(msg.metadata.src_node_id, not msg.has_error())
        intake.take(msg, up, shapes)
    for item, refusal in intake.gate.flush():
        intake.settle(*item, refusal)
    failed = intake.failed + [{"site": f"node-{n}", "reason": f"no reply within round_timeout "
                               f"({fed.round_timeout:.0f}s)"} for n in sorted(ex.sampled - ex.answered)]
    if downlink is not None:
        for node in ex.sampled - ex.answered:
            downlink.answered(node, False)
    return Judgement(intake.aggregator.accepted, failed, intake.rejected)


# ---------------------------------------------------------------- the federation
# The accountant's sampling rate. Sampling would amplify privacy only if a site's taking part were
# random and secret; the coordinator picks the sample (Flower draws a fixed count, not Poisson), so
# against the coordinator there is none: every round counts in full for every site.
FULL_PARTICIPATION = 1.0


@dataclass
class FederationRun:
    fed: FederationConfig
    state_dir: Path
    run_id: int = 0
    resume: bool = False
    observers: list[RoundObserver] = field(default_factory=list)
    # similarity: each site's own model, and which Flower node is which site (from their replies)
    site_models: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    node_sites: dict[int, str] = field(default_factory=dict)
    _sketch: CountSketch = field(default_factory=CountSketch, repr=False)  # one sign table for every round
    _sums: RunningSum = field(default_factory=RunningSum, repr=False)  # one set of sum buffers for every round
    _downlink: Downlink | None = field(default=None, repr=False)  # codec.down lossy: what the sites hold
    _lora: LoraCheckpoint | None = field(default=None, repr=False)  # update mode lora: for checkpoints
    # who each node is (server/identity.py); the typical update norm of the last round (server/norm_bound.py)
    identity: SiteIdentity = field(default_factory=SiteIdentity)
    _norm_reference: float | None = field(default=None, repr=False)

    def _emit(self, event: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:  # an observer (e.g. a tracking server) must never stop training
                log.exception("observer %s failed on %s", type(observer).__name__, event)

    def round_config(self) -> RoundConfig:
        fed = self.fed
        p = fed.personalization
        config = RoundConfig(update_mode=fed.update_mode, encoder=fed.encoder, encoder_seed=fed.seed,
                             run_id=self.run_id, encoder_epochs=fed.encoder_epochs, max_steps=fed.max_steps,
                             personalization=p.method, ditto_lambda=p.ditto_lambda if p.method == "ditto" else None,
                             num_rounds=fed.rounds)
        if fed.mode.kind == "lora":
            config = replace(config, lora_rank=fed.lora.rank, lora_alpha=fed.lora.alpha,
                             lora_dropout=fed.lora.dropout, lora_targets=tuple(fed.lora.targets),
                             lora_lr_scale=fed.lora.lr_scale)
        if fed.privacy.enabled:
            config = replace(config, dp_clip=fed.privacy.clip_norm, dp_noise=self.noise_multiplier)
        return config

    @cached_property
    def noise_multiplier(self) -> float:
        """privacy: the z that keeps all rounds within epsilon for a site that takes part in every one."""
        p = self.fed.privacy
        return calibrate_noise(p.epsilon, p.delta, FULL_PARTICIPATION, self.fed.rounds)

    def privacy_spent(self, rnd: int) -> dict[str, float] | None:
        """What the round table and MLflow show after round ``rnd`` (None with privacy off)."""
        p = self.fed.privacy
        if not p.enabled:
            return None
        return {"epsilon": epsilon_spent(self.noise_multiplier, FULL_PARTICIPATION, rnd, p.delta),
                "epsilon_budget": p.epsilon, "delta": p.delta, "noise_multiplier": self.noise_multiplier,
                "clip_norm": p.clip_norm}

    def _initial(self) -> tuple[TextEncoder, dict[str, np.ndarray], ResumePoint | None]:
        fed = self.fed
        encoder = load_encoder(fed.encoder, seed=fed.seed)  # the sites' architecture, exactly
        params = dict(encoder.named_parameters())
        if fed.mode.kind == "lora":  # the adapters as every site adds them (same seed); the encoder stays plain
            adapted = load_encoder(fed.encoder, seed=fed.seed)
            add_adapters(adapted, fed.lora.settings(), seed=fed.seed)
            params = dict(adapted.named_parameters())
            plain = dict(encoder.named_parameters())
            targets = {target_weight(n) for n in params if ".lora_A." in n}
            folder = encoder_folder(fed.encoder)
            self._lora = LoraCheckpoint(fed.lora.settings(),
                                        {t: plain[t].detach().cpu().numpy().copy() for t in targets},
                                        str(folder) if folder is not None else fed.encoder)
        names = exchanged_names(list(params), fed.mode)
        arrays = {n: params[n].detach().cpu().numpy().astype(np.float32, copy=True) for n in names}
        point = load_resume_point(self.state_dir) if self.resume else None
        if point is None and self.resume and (found := latest_checkpoint(self.state_dir)) is not None:
            done, path = found  # a state_dir from before resume points: its last Hugging Face checkpoint
            load_checkpoint_into(encoder, path, names)
            point = ResumePoint(done, {n: params[n].detach().cpu().numpy().astype(np.float32, copy=True)
                                       for n in names})
        if point is not None:
            if sorted(point.arrays) != names:
                raise RuntimeError(f"the resume point in {self.state_dir} holds other tensors than update mode "
                                   f"{fed.update_mode} exchanges; resume with the federation.yaml it was made with")
            arrays = point.arrays
            log.info("resuming after round %d", point.round)
        return encoder, arrays, point

    def run(self, grid: Grid) -> dict[str, Any]:
        fed = self.fed
        self.state_dir.mkdir(parents=True, exist_ok=True)
        wire = WireLog(self.state_dir / "wire_log.jsonl")
        encoder, global_arrays, point = self._initial()
        strategy = build_strategy(fed)
        done = 0
        if point is not None:
            restore_strategy(strategy, point.strategy)
            done = point.round
            self.site_models = point.site_models
        else:
            save_start_checkpoint(self.state_dir, encoder, global_arrays, lora=self._lora)
        if Codec.parse(fed.codec.down).lossy:  # sites hold the pretrained tensors, not a resumed encoder
            self._downlink = Downlink(Codec.parse(fed.codec.down), global_arrays, sites_hold_start=point is None)
        self._emit("start", {
            "run_id": self.run_id, "config": redact_secrets(fed.model_dump(mode="json")), "start_round": done + 1,
            "strategy_settings": strategy_settings(fed), "tensors": len(global_arrays),
            "encoder_parameters": int(sum(a.size for a in global_arrays.values())),
            "initial_digest": digest(global_arrays),
            "resumed_strategy_digest": digest(point.strategy) if point is not None else None,
            **({"privacy_noise_multiplier": self.noise_multiplier} if fed.privacy.enabled else {}),
        })
        if point is not None and point.record:
            self._emit("round", point.record)  # observers that missed it (a crash right after the save)
        rounds = 0
        try:
            for rnd in range(done + 1, fed.rounds + 1):
                result = self.train_round(rnd, grid, strategy, global_arrays, wire)
                global_arrays = result.global_arrays
                if rnd % fed.checkpoint_every == 0 or rnd == fed.rounds:
                    result.record.checkpoint = str(save_checkpoint(self.state_dir, rnd, encoder, global_arrays,
                                                            lora=self._lora))
                if (fed.evaluate_every and rnd % fed.evaluate_every == 0) or (rnd == fed.rounds and fed.final_evaluate):
                    result.record.evaluate = self.evaluate_round(rnd, grid, strategy, global_arrays, wire)
                record = result.record
                save_resume_point(self.state_dir, ResumePoint(rnd, global_arrays, strategy_state(strategy), record,
                                                              self.site_models))
                self._emit("round", record)
                rounds += 1
        except BaseException as exc:
            self._emit("finish", "failed", {"error": f"{type(exc).__name__}: {exc}", "rounds": rounds})
            raise
        summary = {"rounds": rounds, "final_digest": digest(global_arrays)}
        self._emit("finish", "completed", summary)
        return summary

    def train_round(self, rnd: int, grid: Grid, strategy, global_arrays: dict[str, np.ndarray],
                    wire: WireLog) -> RoundResult:
        fed = self.fed
        started = time.time()
        wait_for_sites(grid, fed.sites_to_start, fed.wait_for_sites)
        personal = {node: self.site_models[site] for node, site in self.node_sites.items() if site in self.site_models}
        config = replace(self.round_config(), up_codec=fed.codec.up, down_codec=fed.codec.down)
        if self._downlink is not None:
            self._downlink.prepare(global_arrays)
        ex = send(grid, strategy, rnd, global_arrays, config, wire, personal=personal, downlink=self._downlink)
        log.info("round %d: sending the encoder (%s) to %d sites", rnd, fed.update_mode, len(ex.sent))
        product = fed.mode.kind == "lora" and fed.lora.aggregation == "product"
        keep = (fed.personalization.method == "similarity" or fed.strategy.name not in STREAMING_STRATEGIES
                or product)
        aggregator = RoundAggregator(strategy, global_arrays, keep_models=keep, sketch=self._sketch, sums=self._sums,
                                     extrapolation=None if product else extrapolation(fed))
        intake = ReplyIntake(grid, ex, global_arrays, aggregator, fed, self.identity,
                             NormGate(fed.norm_bound, self._norm_reference))
        verdicts = train_exchange(intake, rnd, wire, self._downlink)
        accepted_norms = [v.norm for _, v in verdicts.accepted]
        self._norm_reference = lower_median(accepted_norms) if accepted_norms else self._norm_reference
        for entry in verdicts.rejected:
            log.warning("round %d: rejected the update of %s: %s", rnd, entry["site"], entry["reason"])
        for entry in verdicts.failed:
            log.warning("round %d: %s failed: %s", rnd, entry["site"], entry["reason"])

        self.node_sites.update({v.node_id: v.site for _, v in verdicts.accepted})
        agg_started = time.perf_counter()
        new_arrays, agg_metrics, mixing = None, {}, {}
        down = ex.node_bytes_down()
        if len(verdicts.accepted) >= fed.min_sites:
            if fed.personalization.method == "similarity":
                mixing = self.personalize(verdicts.accepted, aggregator)
            new_arrays, agg_metrics = aggregator.aggregate(rnd)
            if product and new_arrays is not None:  # the mean of B @ A, not mean(B) @ mean(A)
                weights = {v.site: int(m.content[METRICS][SiteMetric.NUM_EXAMPLES]) for m, v in verdicts.accepted}
                new_arrays = {**new_arrays, **product_mean(aggregator.models, weights)}
            if new_arrays is not None and (bad := non_finite(new_arrays)) is not None:
                log.error("round %d: the aggregate's tensor %s holds NaN or inf; the global encoder is unchanged "
                          "(it is never saved or sent)", rnd, bad)
                verdicts.rejected.append({"site": "(aggregate)", "reason": f"aggregate tensor {bad} holds NaN or inf"})
                new_arrays, agg_metrics = None, {}
        else:
            log.warning("round %d: only %d of the %d sites needed answered with a valid update; "
                        "the global encoder is unchanged", rnd, len(verdicts.accepted), fed.min_sites)
        arrays = new_arrays if new_arrays is not None else global_arrays
        record = RoundRecord(
            round=rnd, started_at=started, seconds=0.0, aggregation_seconds=time.perf_counter() - agg_started,
            sampled=len(ex.sampled), answered=len(ex.answered), accepted=len(verdicts.accepted),
            failed=verdicts.failed, rejected=verdicts.rejected, aggregated=new_arrays is not None,
            global_digest=digest(arrays), bytes_down=ex.bytes_down(), bytes_up=ex.bytes_up, metrics=agg_metrics,
            update_norms={v.site: v.norm for _, v in verdicts.accepted}, update_cosine=aggregator.cosine(),
            sites={v.site: SiteEntry(metrics=dict(m.content[METRICS]), report=_report(m),
                                     bytes_down=down.get(v.node_id, 0), bytes_up=ex.node_bytes_up.get(v.node_id, 0))
                   for m, v in verdicts.accepted},
            mixing=mixing, privacy=self.privacy_spent(rnd))
        record.seconds = time.time() - started
        log.info("round %d: %d/%d sites answered, %d accepted, aggregated=%s, %.1fs", rnd, record.answered,
                 record.sampled, record.accepted, record.aggregated, record.seconds)
        return RoundResult(record, arrays)

    def personalize(self, accepted: list[tuple[Message, Verdict]],
                    aggregator: RoundAggregator) -> dict[str, dict[str, float]]:
        """similarity: every answering site's next model is a mixture of the trained models."""
        examples = {v.site: int(m.content[METRICS][SiteMetric.NUM_EXAMPLES]) for m, v in accepted}
        alphas = mixing_weights(cosine_matrix(aggregator.deltas), examples,
                                self.fed.personalization.similarity_temperature)
        self.site_models.update(mix(aggregator.models, alphas))
        return alphas

    def evaluate_round(self, rnd: int, grid: Grid, strategy, global_arrays: dict[str, np.ndarray],
                       wire: WireLog) -> Evaluation:
        started = time.time()
        ex = exchange(grid, strategy, rnd, global_arrays, self.round_config(), self.fed.round_timeout, wire,
                      evaluate=True, window=self.fed.sites_in_flight)
        good, failed = [], []
        for m in ex.replies:  # untrusted like a training reply: a bad one is refused, never ends the run
            try:
                why = m.error.reason if m.has_error() else check_evaluation(m, self.fed.max_site_examples)
                if why is None and (why := self.identity.refuse(m.metadata.src_node_id, site_name(m),
                                                                lambda: set(grid.get_node_ids()))) is None:
                    good.append(m)
                    continue
            except Exception as exc:  # noqa: BLE001 - any exception type a crafted reply can raise
                why = f"malformed reply ({type(exc).__name__}: {str(exc)[:200]})"
            failed.append(Problem(site=safe_site_name(m), reason=why))
        aggregated = strategy.aggregate_evaluate(rnd, good) if good else None
        return Evaluation(
            seconds=time.time() - started, metrics=dict(aggregated or {}),
            sites={site_name(m): SiteEntry(metrics=dict(m.content[METRICS]), report=_report(m)) for m in good},
            failed=failed)

"""The federation's round loop, run inside fedtl's ServerApp.

Each round is one Flower exchange: the coordinator sends the update mode's encoder
tensors and the round config, sites reply with an encoder delta plus metrics (their
evaluation rides in the same reply). The coordinator validates each delta, turns the good
ones into full tensors (global + delta) and lets the configured Flower strategy aggregate
them, so FedAvg, FedProx, FedAdam/FedYogi, trimmed mean and median all work unchanged.
A separate evaluate exchange runs only every ``evaluate_every`` rounds and at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from fedtl.server.checkpoints import latest_checkpoint, load_checkpoint_into, save_checkpoint
from fedtl.server.strategies import build_strategy, strategy_settings
from fedtl.server.validation import Verdict, check_update, site_name
from fedtl.server.wire_log import WireLog
from fedtl.shared.encoders import TextEncoder, load_encoder
from fedtl.shared.federation_config import FederationConfig
from fedtl.shared.records import ARRAYS, METRICS, REPORT, digest, from_record, record_nbytes, to_record
from fedtl.shared.update_modes import exchanged_names

log = logging.getLogger(__name__)


class RoundObserver(Protocol):
    """Receives the federation's events: the history file, MLflow, a live table."""

    def start(self, info: dict[str, Any]) -> None: ...

    def round(self, record: dict[str, Any]) -> None: ...

    def finish(self, status: str, summary: dict[str, Any]) -> None: ...


@dataclass
class SiteReply:
    """What one site sent back in a round, as the coordinator records it."""

    site: str
    node_id: int
    metrics: dict[str, float]
    report: dict[str, Any]


def _report(msg: Message) -> dict[str, Any]:
    if REPORT not in msg.content.config_records:
        return {}
    return {k: (list(v) if isinstance(v, list) else v) for k, v in msg.content[REPORT].items()}


def cosine_matrix(deltas: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Pairwise cosine similarity of the sites' updates: which tasks pull the encoder apart."""
    sites = sorted(deltas)
    norms = {s: np.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in deltas[s].values())) for s in sites}
    out: dict[str, dict[str, float]] = {s: {} for s in sites}
    for i, a in enumerate(sites):
        out[a][a] = 1.0
        for b in sites[i + 1:]:
            dot = sum(float(np.dot(deltas[a][n].ravel().astype(np.float64), deltas[b][n].ravel()))
                      for n in deltas[a])
            cos = dot / (norms[a] * norms[b]) if norms[a] > 0 and norms[b] > 0 else 0.0
            out[a][b] = out[b][a] = cos
    return out


def wait_for_sites(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of the {count} sites needed (min_sites, min_available_sites) "
                               f"connected within {timeout:.0f}s; start more sites or lower those settings")
        time.sleep(1.0)
    return nodes


@dataclass
class FederationRun:
    fed: FederationConfig
    state_dir: Path
    run_id: int = 0
    resume: bool = False
    observers: list[RoundObserver] = field(default_factory=list)

    def _emit(self, event: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:  # an observer (e.g. a tracking server) must never stop training
                log.exception("observer %s failed on %s", type(observer).__name__, event)

    def _round_config(self) -> ConfigRecord:
        fed = self.fed
        config: dict[str, Any] = {
            "update-mode": fed.update_mode, "encoder": fed.encoder, "encoder-seed": fed.seed, "run-id": self.run_id,
        }
        if fed.encoder_epochs is not None:
            config["encoder-epochs"] = fed.encoder_epochs
        if fed.max_steps is not None:
            config["max-steps"] = fed.max_steps
        return ConfigRecord(config)

    def _initial(self) -> tuple[TextEncoder, dict[str, np.ndarray], int]:
        fed = self.fed
        encoder = load_encoder(fed.encoder, seed=fed.seed)  # the sites' architecture, exactly
        names = exchanged_names([n for n, _ in encoder.named_parameters()], fed.mode)
        found = latest_checkpoint(self.state_dir) if self.resume else None
        done = 0
        if found is not None:
            done, path = found
            load_checkpoint_into(encoder, path, names)
            log.info("resuming after round %d from %s", done, path)
        params = dict(encoder.named_parameters())
        arrays = {n: params[n].detach().cpu().numpy().astype(np.float32, copy=True) for n in names}
        return encoder, arrays, done

    def run(self, grid: Grid) -> dict[str, Any]:
        fed = self.fed
        self.state_dir.mkdir(parents=True, exist_ok=True)
        wire = WireLog(self.state_dir / "wire_log.jsonl")
        encoder, global_arrays, done = self._initial()
        strategy = build_strategy(fed)
        self._emit("start", {
            "run_id": self.run_id, "config": fed.model_dump(mode="json"), "start_round": done + 1,
            "strategy_settings": strategy_settings(fed), "tensors": len(global_arrays),
            "encoder_parameters": int(sum(a.size for a in global_arrays.values())),
            "initial_digest": digest(global_arrays),
        })
        history: list[dict[str, Any]] = []
        status = "completed"
        try:
            for rnd in range(done + 1, fed.rounds + 1):
                record = self._train_round(rnd, grid, strategy, global_arrays, wire)
                global_arrays = record.pop("_arrays")
                if rnd % fed.checkpoint_every == 0 or rnd == fed.rounds:
                    record["checkpoint"] = str(save_checkpoint(self.state_dir, rnd, encoder, global_arrays))
                evaluate_now = (fed.evaluate_every and rnd % fed.evaluate_every == 0) or (
                    rnd == fed.rounds and fed.final_evaluate)
                if evaluate_now:
                    record["evaluate"] = self._evaluate(rnd, grid, strategy, global_arrays, wire)
                history.append(record)
                self._emit("round", record)
        except BaseException as exc:
            status = "failed"
            self._emit("finish", status, {"error": f"{type(exc).__name__}: {exc}", "rounds": len(history)})
            raise
        summary = {"rounds": len(history), "final_digest": digest(global_arrays)}
        self._emit("finish", status, summary)
        return summary

    def _train_round(self, rnd: int, grid: Grid, strategy, global_arrays: dict[str, np.ndarray],
                     wire: WireLog) -> dict[str, Any]:
        fed = self.fed
        started = time.time()
        wait_for_sites(grid, fed.sites_to_start, fed.wait_for_sites)
        messages = list(strategy.configure_train(rnd, to_record(global_arrays), self._round_config(), grid))
        for msg in messages:
            wire.record("down", rnd, msg)
        sampled = {m.metadata.dst_node_id for m in messages}
        log.info("round %d: sent the encoder (%s) to %d sites", rnd, fed.update_mode, len(messages))
        replies = list(grid.send_and_receive(messages, timeout=fed.round_timeout))
        for msg in replies:
            wire.record("up", rnd, msg)

        verdicts = [check_update(m, global_arrays, fed.max_update_norm) for m in replies]
        answered = {m.metadata.src_node_id for m in replies}
        failed = [{"site": v.site, "reason": v.reason} for v in verdicts if v.kind == "failed"]
        failed += [{"site": f"node-{n}", "reason": f"no reply within round_timeout ({fed.round_timeout:.0f}s)"}
                   for n in sorted(sampled - answered)]
        rejected = [{"site": v.site, "reason": v.reason} for v in verdicts if v.kind == "rejected"]
        for entry in rejected:
            log.warning("round %d: rejected the update of %s: %s", rnd, entry["site"], entry["reason"])
        for entry in failed:
            log.warning("round %d: %s failed: %s", rnd, entry["site"], entry["reason"])

        accepted: list[tuple[Message, Verdict]] = [(m, v) for m, v in zip(replies, verdicts) if v.ok]
        sites = {v.site: SiteReply(v.site, v.node_id, dict(m.content[METRICS]), _report(m)) for m, v in accepted}
        deltas = {v.site: v.delta for _, v in accepted if v.delta is not None}

        agg_started = time.perf_counter()
        aggregated, agg_metrics = False, {}
        if len(accepted) >= fed.min_sites:
            for msg, verdict in accepted:  # strategies aggregate full tensors: global + delta
                msg.content[ARRAYS] = to_record({n: global_arrays[n] + d for n, d in verdict.delta.items()})
            new_arrays, metrics = strategy.aggregate_train(rnd, [m for m, _ in accepted])
            if new_arrays is not None:
                merged = dict(global_arrays)
                for name, value in from_record(new_arrays).items():
                    merged[name] = np.asarray(value, dtype=global_arrays[name].dtype)
                global_arrays = merged
                aggregated = True
            agg_metrics = dict(metrics or {})
        else:
            log.warning("round %d: only %d of the %d sites needed answered with a valid update; "
                        "the global encoder is unchanged", rnd, len(accepted), fed.min_sites)
        agg_seconds = time.perf_counter() - agg_started

        bytes_down = sum(record_nbytes(m.content[ARRAYS]) for m in messages)
        bytes_up = sum(record_nbytes(m.content[ARRAYS]) for m in replies
                       if not m.has_error() and ARRAYS in m.content.array_records)
        record = {
            "round": rnd,
            "started_at": started,
            "seconds": time.time() - started,
            "aggregation_seconds": agg_seconds,
            "sampled": len(sampled),
            "answered": len(answered),
            "accepted": len(accepted),
            "failed": failed,
            "rejected": rejected,
            "aggregated": aggregated,
            "global_digest": digest(global_arrays),
            "bytes_down": bytes_down,
            "bytes_up": bytes_up,
            "metrics": agg_metrics,
            "update_norms": {v.site: v.norm for _, v in accepted},
            "update_cosine": cosine_matrix(deltas) if len(deltas) > 1 else {},
            "sites": {name: {"metrics": s.metrics, "report": s.report} for name, s in sites.items()},
            "_arrays": global_arrays,
        }
        log.info("round %d: %d/%d sites answered, %d accepted, aggregated=%s, %.1fs", rnd, len(answered),
                 len(sampled), len(accepted), aggregated, record["seconds"])
        return record

    def _evaluate(self, rnd: int, grid: Grid, strategy, global_arrays: dict[str, np.ndarray],
                  wire: WireLog) -> dict[str, Any]:
        started = time.time()
        messages = list(strategy.configure_evaluate(rnd, to_record(global_arrays), self._round_config(), grid))
        for msg in messages:
            wire.record("down", rnd, msg)
        replies = list(grid.send_and_receive(messages, timeout=self.fed.round_timeout))
        for msg in replies:
            wire.record("up", rnd, msg)
        good = [m for m in replies if not m.has_error()]
        aggregated = strategy.aggregate_evaluate(rnd, good) if good else None
        return {
            "seconds": time.time() - started,
            "metrics": dict(aggregated or {}),
            "sites": {site_name(m): {"metrics": dict(m.content[METRICS]), "report": _report(m)} for m in good},
            "failed": [{"site": site_name(m), "reason": m.error.reason} for m in replies if m.has_error()],
        }

"""MLflow logging for a federation: one run, every round, and nothing lost in an outage.

The coordinator logs; sites never need MLflow credentials. Every tracking operation is
appended to a journal on disk (``state_dir/mlflow_journal.jsonl``) and then sent; if the
tracking server is down or slow, operations stay in the journal, training goes on, a
warning says so, and the next flush (after the next round, at the end, or at the next
coordinator start) sends them in order. Artifacts are copied next to the journal first,
so a later flush still finds them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from fedtl.server.history import Evaluation, RoundRecord
from fedtl.shared.atomic import write_text_atomic
from fedtl.shared.federation_config import redact_secrets
from fedtl.shared.mlflow_models import training_experiment
from fedtl.shared.protocol import ReportKey, Section, SiteMetric, parse_task_key, primary_metrics, report_value

log = logging.getLogger(__name__)

# Fail fast when the server is down (MLflow's defaults retry for minutes).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

BATCH = 900  # MLflow accepts up to 1000 metrics per log_batch


def default_tracking_uri(base: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else an embedded SQLite store in ``base``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(base / 'mlflow.db').resolve()}"


class Journal:
    """Pending tracking operations, in order, on disk."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()

    def append(self, op: dict[str, Any]) -> None:
        with self.lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(op, default=float) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def pending(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def rewrite(self, ops: list[dict[str, Any]]) -> None:
        from fedtl.shared.atomic import write_text_atomic

        with self.lock:
            write_text_atomic(self.path, "".join(json.dumps(op, default=float) + "\n" for op in ops))


SITES_TAG_LIMIT = 8000  # MLflow's longest tag value


def sites_tag(sites: Iterable[str]) -> str:
    """The sites of a round as one tag value; past MLflow's limit, their count and the first names."""
    names = sorted(sites)
    joined = ",".join(names)
    if len(joined) <= SITES_TAG_LIMIT:
        return joined
    head = f"{len(names)} sites: "
    return head + joined[: SITES_TAG_LIMIT - len(head) - 4].rsplit(",", 1)[0] + ",..."


class MlflowTracker:
    """A RoundObserver that mirrors the federation into one MLflow run."""

    def __init__(self, tracking_uri: str, experiment: str, state_dir: Path, run_name: str,
                 registered_model: str | None, config_path: Path | None = None, checkpoint_every: int = 0,
                 extra_params: dict[str, Any] | None = None, system_metrics_seconds: float = 0.0):
        self.uri = tracking_uri
        self.experiment = experiment
        self.state_dir = state_dir
        self.run_name = run_name
        self.registered_model = registered_model
        self.config_path = config_path
        self.checkpoint_every = checkpoint_every
        self.extra_params = dict(extra_params or {})  # e.g. a simulation's plan
        self.journal = Journal(state_dir / "mlflow_journal.jsonl")
        self.artifacts = state_dir / "mlflow_artifacts"
        self.meta_path = state_dir / "mlflow_run.json"
        self.meta: dict[str, Any] = json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}
        self.outage_since: float | None = None
        self.history: list[dict[str, Any]] = []
        self.baselines_logged: set[str] = set()
        self.params_logged: set[str] = set()
        self.config: dict[str, Any] = {}  # the federation config, from start()
        self.system_metrics_seconds = system_metrics_seconds
        self.monitor = None  # MLflow's SystemMetricsMonitor while the run is open and the store answers

    @property
    def run_id(self) -> str | None:
        return self.meta.get("run_id")

    def _save_meta(self, **fields: Any) -> None:
        from fedtl.shared.atomic import write_json_atomic

        self.meta.update(fields)
        write_json_atomic(self.meta_path, self.meta)

    # ------------------------------------------------------------ sending
    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def _ensure_run(self, client) -> str:
        if self.run_id is None:
            exp_id = training_experiment(client, self.experiment, self.uri)
            run = client.create_run(exp_id, run_name=self.run_name, tags={"fedtl.status": "running"})
            self._save_meta(run_id=run.info.run_id, experiment_id=exp_id, tracking_uri=self.uri)
        return self.run_id

    def _apply(self, client, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "params":
            items = [Param(k, str(v)[:6000]) for k, v in op["params"].items()]
            for i in range(0, len(items), 100):
                client.log_batch(run_id, params=items[i:i + 100])
        elif kind == "metrics":
            items = [Metric(k, float(v), int(op["time"] * 1000), int(op["step"])) for k, v in op["metrics"].items()]
            for i in range(0, len(items), BATCH):
                client.log_batch(run_id, metrics=items[i:i + BATCH])
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op["tags"].items()])
        elif kind == "artifact":
            path = Path(op["path"])
            if path.is_dir():
                client.log_artifacts(run_id, str(path), op.get("artifact_path"))
            elif path.exists():
                client.log_artifact(run_id, str(path), op.get("artifact_path"))
            else:
                log.warning("artifact %s is gone; not logged", path)
        elif kind == "batch":
            for inner in op["ops"]:
                self._apply(client, run_id, inner)
        elif kind == "encoder_model":
            self._log_encoder_model(client, run_id, op)
        elif kind == "register":  # an older fedtl's journal: its encoder folder is logged; register that
            self._log_encoder_model(client, run_id, {"round": 0, "register": op["name"], "tags": {},
                                                     "path": str(self._built_from_artifact(op["artifact_path"]))})
        elif kind == "terminate":
            client.set_terminated(run_id, op["status"])
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _log_encoder_model(self, client, run_id: str, op: dict[str, Any]) -> None:
        """The encoder of round ``op['round']`` as a LoggedModel of the run (at that step), and where
        ``op['register']`` names a registered model, a version of it with the provenance as tags and
        the federation's alias."""
        from fedtl.server.encoder_model import MODEL_NAME
        from fedtl.shared.mlflow_models import log_model_folder, register_logged_model

        tags = op.get("tags", {})
        model_id = log_model_folder(client, self.meta["experiment_id"], run_id, MODEL_NAME, Path(op["path"]),
                                    int(op["round"]), tags=tags, model_type="text-embedding")
        name = op.get("register")
        if name:
            version = register_logged_model(
                client, self.uri, name, model_id, run_id, f"fedtl global encoder after round {op['round']} of federation "
                f"run {self.run_name}: text in, mean-pooled embeddings out", tags=tags, alias=op.get("alias"))
            client.set_tag(run_id, "fedtl.registered_model", f"{name}/{version.version}")

    def flush(self) -> bool:
        """Send pending operations in order; True when none are left."""
        ops = self.journal.pending()
        if not ops:
            return True
        done = 0
        try:
            client = self._client()
            run_id = self._ensure_run(client)
            for op in ops:
                # Every operation is idempotent (metrics carry their own timestamp, and MLflow drops
                # exact duplicates), so one sent again after a crash mid-flush changes nothing.
                self._apply(client, run_id, op)
                done += 1
                self.journal.rewrite(ops[done:])
        except Exception as exc:  # any failure: keep the rest for later, never stop training
            self.journal.rewrite(ops[done:])
            first = self.outage_since is None
            if first:
                self.outage_since = time.time()
            log.log(logging.WARNING if first else logging.INFO,  # warn once per outage, then keep count
                    "MLflow at %s unavailable (%s: %s); %d operations buffered in %s, will retry",
                    self.uri, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "",
                    len(ops) - done, self.journal.path)
            return False
        if self.outage_since is not None:
            log.warning("MLflow is back: %d buffered operations written", len(ops))
            self.outage_since = None
        return True

    def _watch_system(self) -> None:
        """Sample this machine's CPU, memory, disk, network (and GPU) into the run as ``system/*``
        (MLflow's monitor, on its own thread). It stops by itself when the store stops answering;
        the next round that reaches the store starts it again, its steps continuing."""
        if not self.system_metrics_seconds or self.run_id is None or self.journal.pending():
            return
        if self.monitor is not None and self.monitor._process is not None and self.monitor._process.is_alive():
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_metrics_seconds,
                                                resume_logging=True, tracking_uri=self.uri)
            self.monitor.start()
        except Exception as exc:  # psutil missing, say: the federation goes on without them
            log.info("no system metrics: %s", exc)
            self.monitor = None

    def _stop_watching_system(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    # ------------------------------------------------------------ enqueueing
    def _enqueue(self, op: dict[str, Any]) -> None:
        self.journal.append(op)

    def _artifact(self, path: Path, artifact_path: str | None, copy: bool = True) -> dict[str, Any]:
        """Log a file under ``artifact_path``, or a folder as ``artifact_path/<folder name>``."""
        is_dir = path.is_dir()
        if copy:
            dest = self.artifacts / (artifact_path or "") / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(path, dest)
            path = dest
        if is_dir:
            artifact_path = f"{artifact_path}/{path.name}" if artifact_path else path.name
        return {"op": "artifact", "path": str(path), "artifact_path": artifact_path}

    def _encoder_model_ops(self, checkpoint: Path, rnd: int, register: str | None = None) -> list[dict[str, Any]]:
        """The operation that logs ``checkpoint`` as an MLflow model (built now, beside the journal, so a
        later flush finds it); none, with a warning, where it cannot be built."""
        from fedtl.server.encoder_model import save_encoder_model
        from fedtl.shared.mlflow_models import alias_for

        dest = self.artifacts / "models" / f"round-{rnd:04d}"
        if not (dest / "MLmodel").exists():
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.rmtree(dest, ignore_errors=True)  # half of one, from a crash
                dest.parent.mkdir(parents=True, exist_ok=True)
                save_encoder_model(checkpoint, tmp)  # whole, then renamed: a flush never sees half a model
                tmp.rename(dest)
            except Exception as exc:  # the Hugging Face folder is still logged; training is over
                log.warning("could not build the MLflow model of %s (%s: %s); logged as files only",
                            checkpoint, type(exc).__name__, exc)
                return []
        op: dict[str, Any] = {"op": "encoder_model", "path": str(dest), "round": rnd,
                              "tags": self._provenance(checkpoint, rnd)}
        if register:
            op.update(register=register, alias=alias_for(self.config.get("name", self.run_name)))
        return [op]

    def _built_from_artifact(self, artifact_path: str) -> Path:
        """The MLflow model of an encoder folder journaled as an artifact (``encoder/round-NNNN``)."""
        from fedtl.server.encoder_model import save_encoder_model

        dest = self.artifacts / "models" / Path(artifact_path).name
        if not (dest / "MLmodel").exists():
            save_encoder_model(self.artifacts / artifact_path, dest)
        return dest

    def _provenance(self, checkpoint: Path, rnd: int) -> dict[str, Any]:
        """Where an encoder came from, as tags of its model and registered version."""
        sites = sorted({site for record in self.history if record.round <= rnd for site in record.sites})
        tags: dict[str, Any] = {"fedtl.federation": self.config.get("name", ""), "fedtl.run": self.run_name,
                                "fedtl.round": rnd, "fedtl.sites": sites_tag(sites), "fedtl.site_count": len(sites),
                                "fedtl.encoder": self.config.get("encoder", ""),
                                "fedtl.update_mode": self.config.get("update_mode", ""),
                                "fedtl.strategy": (self.config.get("strategy") or {}).get("name", "")}
        meta = checkpoint / "fedtl.json"
        if meta.exists():
            tags["fedtl.digest"] = json.loads(meta.read_text()).get("digest", "")
        privacy = next((r.privacy for r in reversed(self.history) if r.round <= rnd and r.privacy), None)
        if privacy is not None:
            tags["fedtl.dp_epsilon"] = round(float(privacy["epsilon"]), 4)
        return tags

    def _config_artifact(self, path: Path) -> dict[str, Any]:
        """federation.yaml as the run's ``config`` artifact: the file itself, comments and all,
        unless it holds a secret; then its settings with the secrets redacted."""
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        published = redact_secrets(raw) if isinstance(raw, dict) else raw
        if published == raw:
            return self._artifact(path, "config")
        dest = self.artifacts / "config" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(dest, "# secrets redacted by fedtl before logging\n"
                          + yaml.safe_dump(published, sort_keys=False))
        return self._artifact(dest, "config", copy=False)

    # ------------------------------------------------------------ observer
    def start(self, info: dict[str, Any]) -> None:
        from importlib.metadata import version

        from fedtl.server.history import read_rounds

        self.flush()  # whatever an earlier coordinator left in the journal goes to its own run first
        start_round = info.get("start_round", 1)
        if start_round == 1 and self.run_id is not None:
            self.meta = {}  # a new federation in this state_dir: a new MLflow run
        self.history = [r for r in read_rounds(self.state_dir) if r.round < start_round]
        for record in self.history:  # what was logged before a resume is not logged again
            round_metrics(record, self.baselines_logged)
            self.params_logged.update(f"sites.{site}.tasks" for site in record.sites)
        config = self.config = info["config"]
        ops: list[dict[str, Any]] = []
        if start_round == 1:
            params = flatten_params({k: v for k, v in redact_secrets(config).items() if k != "superlink"})
            params.update({f"strategy.{k}": v for k, v in info.get("strategy_settings", {}).items()})
            for pkg in ("fedtl", "flwr", "torch", "transformers", "mlflow"):
                try:
                    params[f"version.{pkg}"] = version(pkg)
                except Exception:
                    pass
            params["encoder_parameters_exchanged"] = info.get("encoder_parameters")
            params.update(self.extra_params)
            if "privacy_noise_multiplier" in info:
                params["privacy.noise_multiplier"] = info["privacy_noise_multiplier"]
            ops.append({"op": "params", "params": {k: ("" if v is None else v) for k, v in params.items()}})
            if self.config_path is not None and self.config_path.exists():
                ops.append(self._config_artifact(self.config_path))
        ops.append({"op": "tags", "tags": {
            "fedtl.coordinator_host": socket.gethostname(), "fedtl.flower_run_id": info.get("run_id"),
            "fedtl.status": "running", "mlflow.note.content": f"fedtl federation '{config['name']}'",
        }})
        self._enqueue({"op": "batch", "ops": ops})
        self.flush()
        self._watch_system()

    def _enqueued(self, rnd: int) -> bool:
        """Has this round's batch been journaled (sent or not) already?"""
        if rnd <= int(self.meta.get("last_round", 0)):
            return True
        return any(op.get("round") == rnd for op in self.journal.pending())

    def round(self, record: RoundRecord) -> None:
        rnd = record.round
        if self._enqueued(rnd):  # replayed after a crash: it is logged once already
            return
        ops: list[dict[str, Any]] = [
            {"op": "metrics", "step": rnd, "time": time.time(), "metrics": round_metrics(record, self.baselines_logged)},
            {"op": "tags", "tags": {"fedtl.sites": sites_tag(record.sites), "fedtl.rounds_done": rnd}},
        ]
        new_sites = {site: entry.report for site, entry in record.sites.items()
                     if f"sites.{site}.tasks" not in self.params_logged}
        if new_sites:  # a site's task list, the first time it takes part
            params = {}
            for site, report in new_sites.items():
                params[f"sites.{site}.tasks"] = ",".join(report.get(ReportKey.TASKS, []))
                params[f"sites.{site}.primary_metrics"] = ",".join(report.get(ReportKey.PRIMARY, []))
                params[f"sites.{site}.device"] = report.get(ReportKey.DEVICE, "")
                params[f"sites.{site}.first_round"] = rnd
            self.params_logged.update(params)
            ops.append({"op": "params", "params": params})
        self.history.append(record)
        plots = self.state_dir / "plots"
        from fedtl.server.plots import interference_heatmap, mixing_heatmap, site_metric_plot

        if record.update_cosine:
            path = interference_heatmap(record.update_cosine, rnd, plots / f"interference-round-{rnd:03d}.png")
            ops.append(self._artifact(path, "interference"))
        if record.mixing:
            ops.append(self._artifact(mixing_heatmap(record.mixing, rnd, plots / f"mixing-round-{rnd:03d}.png"),
                                      "mixing"))
        ops.append(self._artifact(site_metric_plot(self.history, plots / "site_metrics.png"), "plots"))
        if record.checkpoint and self.checkpoint_every and rnd % self.checkpoint_every == 0:
            ops.extend(self._encoder_model_ops(Path(record.checkpoint), rnd))
        self._enqueue({"op": "batch", "round": rnd, "ops": ops})  # one line: the round is journaled whole
        self._save_meta(last_round=rnd)
        self.flush()
        self._watch_system()

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        self._stop_watching_system()  # its last samples go before the run is closed
        final = next((record for record in reversed(self.history) if record.checkpoint), None)
        if status == "completed" and final is not None:
            checkpoint = Path(final.checkpoint)
            self._enqueue(self._artifact(checkpoint, "encoder", copy=True))  # the Hugging Face folder itself
            for op in self._encoder_model_ops(checkpoint, final.round, register=self.registered_model):
                self._enqueue(op)
        self._enqueue({"op": "tags", "tags": {"fedtl.status": status, **{f"fedtl.summary.{k}": v
                                                                         for k, v in summary.items()}}})
        self._enqueue({"op": "terminate", "status": "FINISHED" if status == "completed" else "FAILED"})
        deadline = time.monotonic() + float(os.environ.get("FEDTL_MLFLOW_FINAL_WAIT", "120"))
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(5)
        if self.journal.pending():
            log.warning("MLflow still unreachable: %d operations stay in %s and are sent when the "
                        "coordinator next starts with this state_dir (fedtl coordinator --resume)",
                        len(self.journal.pending()), self.journal.path)


def flatten_params(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"strategy": {"name": "fedavg"}} -> {"strategy.name": "fedavg"}; every scalar leaf kept."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_params(value, name))
        else:
            out[name] = value
    return out


def resource_metrics(site: str, report: dict[str, Any]) -> dict[str, float]:
    """``resources/peak_memory_mb`` of a site's report as ``site/<site>/peak_memory_mb``."""
    out = {}
    for key, value in report.items():
        section, _, figure = str(key).partition("/")
        if section == Section.RESOURCES and figure and "/" not in figure:
            out[f"site/{site}/{figure}"] = value
    return out


def round_metrics(record: RoundRecord, baselines_logged: set[str]) -> dict[str, float]:
    """Everything MLflow charts for one round, with `/`-separated names that group in the UI."""
    out: dict[str, float] = {}
    agg = record.metrics
    for key in SiteMetric.AGGREGATED:
        if key in agg:
            out[f"federation/{key}_mean"] = agg[key]
    out.update({
        "federation/sites_sampled": record.sampled, "federation/sites_answered": record.answered,
        "federation/sites_accepted": record.accepted, "federation/sites_failed": len(record.failed),
        "federation/sites_rejected": len(record.rejected), "federation/bytes_down": record.bytes_down,
        "federation/bytes_up": record.bytes_up, "federation/round_seconds": record.seconds,
        "federation/aggregation_seconds": record.aggregation_seconds,
        "federation/aggregated": 1.0 if record.aggregated else 0.0,
    })
    if record.privacy is not None:  # epsilon spent so far, against the budget
        out["privacy/epsilon"] = record.privacy["epsilon"]
        out["privacy/epsilon_budget"] = record.privacy["epsilon_budget"]
    for site, norm in record.update_norms.items():
        out[f"site/{site}/update_norm"] = norm
    for site, entry in record.sites.items():
        report, m = entry.report, entry.metrics
        out[f"site/{site}/num_examples"] = m.get(SiteMetric.NUM_EXAMPLES, 0)
        out[f"site/{site}/seconds"] = m.get(SiteMetric.SECONDS, 0)
        out[f"site/{site}/startup_seconds"] = m.get(SiteMetric.STARTUP_SECONDS, 0)
        out[f"site/{site}/bytes_down"] = entry.bytes_down  # as encoded on the wire (codec.up / codec.down)
        out[f"site/{site}/bytes_up"] = entry.bytes_up
        out.update(resource_metrics(site, report))
        for task, primary in primary_metrics(report):
            first = f"{site}/{task}" not in baselines_logged
            for key, value in report.items():
                parsed = parse_task_key(key)
                if parsed is None or parsed[1] != task:
                    continue
                section, _, metric = parsed
                if section == Section.VAL:
                    out[f"site/{site}/{task}/val_{metric}"] = value
                elif section == Section.BASELINE and first:
                    out[f"site/{site}/{task}/baseline_{metric}"] = value
            loss = report_value(report, Section.TRAIN_LOSS, task)
            if loss is not None:
                out[f"site/{site}/{task}/train_loss"] = loss
            base, fed = report_value(report, Section.BASELINE, task, primary), report_value(report, Section.VAL, task, primary)
            if base is not None and fed is not None:
                out[f"site/{site}/{task}/transfer_gain"] = fed - base
            baselines_logged.add(f"{site}/{task}")
    for site, row in record.mixing.items():
        for other, share in row.items():
            out[f"mixing/{site}/{other}"] = share
    evaluation = record.evaluate or Evaluation()
    for key, value in evaluation.metrics.items():
        out[f"evaluate/{key}"] = value
    for site, entry in evaluation.sites.items():
        for key, value in entry.report.items():
            parsed = parse_task_key(key)
            if parsed is not None and parsed[0] == Section.VAL:
                out[f"evaluate/{site}/{parsed[1]}/{parsed[2]}"] = value
    return {k: float(v) for k, v in out.items() if v is not None}

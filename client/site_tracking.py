"""A site's own MLflow (opt-in, ``mlflow:`` in site.yaml): what it serves and how it got there.

One MLflow run per federation run the site takes part in. After every round the run gets the
site's metrics at ``step`` = round (per task: ``<task>/served_<metric>`` of the model it serves,
``<task>/federated_<metric>``, ``<task>/baseline_<metric>`` of its local-only model, and
``<task>/transfer_gain``) plus its resource figures, and the model it serves as an MLflow pyfunc
model (``client/site_pyfunc.py``: ``predict`` answers what ``fedtl predict`` answers). After the
federation's last round that model can be registered under a name the site chooses.

This is the site's store: heads are logged here and nowhere else. The work happens on a
background thread from a copy of the served model's files taken at the end of the round, so the
round's reply never waits on MLflow; if the store is down the site warns and trains on.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fedtl.client.predict import TaskInputs, export_site_model
from fedtl.shared.config import SiteConfig, TaskType

log = logging.getLogger(__name__)

SITE_CODE = Path(__file__).with_name("site_pyfunc.py")
MODEL_NAME = "site-model"  # the LoggedModel's name in the site's run
SERVED_ALIAS = "served"
RUNS_FILE = "mlflow_site_runs.json"  # state_dir: Flower run id -> the site's MLflow run id


@dataclass
class SiteRoundRecord:
    """What the site's MLflow gets about one round (the worker fills it in at the end of the round)."""

    flower_run_id: int
    round: int
    num_rounds: int | None
    update_mode: str
    served_model: str  # federated | baseline
    served: dict[str, dict[str, float]]  # the metrics of the model the site serves
    federated: dict[str, dict[str, float]]
    baseline: dict[str, dict[str, float]]
    primary: dict[str, str]  # task -> primary metric
    resources: dict[str, float] = field(default_factory=dict)
    snapshot: Path | None = None  # the served model's files, copied at the end of the round

    @property
    def last(self) -> bool:
        return not self.num_rounds or self.round >= self.num_rounds


def site_metrics(record: SiteRoundRecord) -> dict[str, float]:
    """The run's metrics for one round, named so the MLflow UI groups them by task."""
    out: dict[str, float] = {}
    for prefix, section in (("served", record.served), ("federated", record.federated),
                            ("baseline", record.baseline)):
        for task, metrics in section.items():
            for metric, value in metrics.items():
                out[f"{task}/{prefix}_{metric}"] = float(value)
    for task, metric in record.primary.items():
        if metric in record.federated.get(task, {}) and metric in record.baseline.get(task, {}):
            out[f"{task}/transfer_gain"] = record.federated[task][metric] - record.baseline[task][metric]
    out.update({f"site/{k}": float(v) for k, v in record.resources.items()})
    return out


class SiteTracker:
    """Logs a site's rounds to the site's own MLflow, one round at a time, off the training thread."""

    def __init__(self, site: SiteConfig):
        assert site.mlflow is not None
        self.site, self.settings = site, site.mlflow
        self.staging = site.state_dir / "mlflow_site"
        self.runs_path = site.state_dir / RUNS_FILE
        self.inputs = [TaskInputs.of(t) for t in site.tasks]
        self.pending: queue.Queue[SiteRoundRecord | None] = queue.Queue()
        self.warned = False
        self.thread = threading.Thread(target=self._drain, name=f"mlflow-{site.name}", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ the training thread's side
    def round_done(self, record: SiteRoundRecord, site_model: dict[str, Any]) -> None:
        """Copy the served model's files now (the next round overwrites them) and queue the round."""
        if self.settings.log_models == "every_round" or record.last:
            folder = self.staging / f"round-{record.round:04d}-{time.time_ns()}" / "site_model"  # its name in the model
            try:
                record.snapshot = export_site_model(site_model, self.inputs, self.site.training.max_length, folder)
            except OSError as exc:
                self._warn(f"could not copy the served model for MLflow ({exc})")
        self.pending.put(record)

    def close(self, timeout: float = 120.0) -> bool:
        """Send what is queued (up to ``timeout`` seconds); True when everything went."""
        self.pending.put(None)
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until every queued round is logged (tests; a stopping daemon calls ``close``)."""
        deadline = time.monotonic() + timeout
        while self.pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.pending.unfinished_tasks

    # ------------------------------------------------------------ the logging thread
    def _drain(self) -> None:
        while True:
            record = self.pending.get()
            try:
                if record is None:
                    return
                self._log(record)
            except Exception as exc:  # the site's MLflow never stops training
                self._warn(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            finally:
                if record is not None and record.snapshot is not None:
                    shutil.rmtree(record.snapshot.parent, ignore_errors=True)
                self.pending.task_done()

    def _warn(self, why: str) -> None:
        level = logging.WARNING if not self.warned else logging.INFO
        self.warned = True
        log.log(level, "site %s: its MLflow at %s did not take this round (%s); training goes on",
                self.site.name, self.settings.tracking_uri, why)

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.settings.tracking_uri)

    def _run(self, client, record: SiteRoundRecord) -> tuple[str, str]:
        """(experiment id, run id) of this federation run's MLflow run, made on first use."""
        from fedtl.shared.mlflow_models import training_experiment

        runs = json.loads(self.runs_path.read_text()) if self.runs_path.exists() else {}
        key = f"{self.settings.tracking_uri} {record.flower_run_id}"
        if key in runs:
            return runs[key]["experiment_id"], runs[key]["run_id"]
        exp_id = training_experiment(client, self.settings.experiment, self.settings.tracking_uri)
        run = client.create_run(exp_id, run_name=f"{self.site.name} in federation run {record.flower_run_id}",
                                tags={"fedtl.site": self.site.name, "fedtl.flower_run_id": str(record.flower_run_id)})
        from mlflow.entities import Param

        params = {"site": self.site.name, "encoder": self.site.encoder, "update_mode": record.update_mode,
                  "tasks": ",".join(t.name for t in self.site.tasks), "federation_run_id": record.flower_run_id,
                  "rounds": record.num_rounds or "", "version.fedtl": version("fedtl")}
        params.update({f"tasks.{t.name}.type": t.type.value for t in self.site.tasks})
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        from fedtl.shared.atomic import write_json_atomic

        runs[key] = {"experiment_id": exp_id, "run_id": run.info.run_id}
        write_json_atomic(self.runs_path, runs)
        return exp_id, run.info.run_id

    def _log(self, record: SiteRoundRecord) -> None:
        from mlflow.entities import Metric

        client = self._client()
        exp_id, run_id = self._run(client, record)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, record.round) for k, v in site_metrics(record).items()]
        client.log_batch(run_id, metrics=metrics, tags=[])
        client.set_tag(run_id, "fedtl.served_model", record.served_model)
        if record.snapshot is not None:
            self._log_model(client, exp_id, run_id, record)
        if record.last:
            client.set_terminated(run_id, "FINISHED")

    def _log_model(self, client, exp_id: str, run_id: str, record: SiteRoundRecord) -> None:
        from fedtl.shared.mlflow_models import log_model_folder, register_logged_model

        built = record.snapshot.parent / "mlflow_model"
        shutil.rmtree(built, ignore_errors=True)
        try:
            save_site_model(record.snapshot, built, self.site)
            tags = {"fedtl.site": self.site.name, "fedtl.round": record.round,
                    "fedtl.flower_run_id": record.flower_run_id, "fedtl.served_model": record.served_model}
            model_id = log_model_folder(client, exp_id, run_id, MODEL_NAME, built, record.round, tags=tags,
                                        model_type="fedtl-site-model")
            if self.settings.registered_model and record.last:
                version_ = register_logged_model(
                    client, self.settings.tracking_uri, self.settings.registered_model, model_id, run_id,
                    f"site {self.site.name}'s served model after round {record.round} of federation run "
                    f"{record.flower_run_id}", tags=tags, alias=SERVED_ALIAS)
                client.set_tag(run_id, "fedtl.registered_model", f"{self.settings.registered_model}/{version_.version}")
        finally:
            shutil.rmtree(built, ignore_errors=True)


def site_signature(site: SiteConfig):
    """The served model's columns: each task's text columns in; ``<task>`` (and ``<task>_probability``) out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    columns = list(dict.fromkeys(c for t in site.tasks for c in t.text_columns))
    outputs = []
    for task in site.tasks:
        if task.type == TaskType.classification:
            outputs += [ColSpec("string", task.name), ColSpec("double", f"{task.name}_probability")]
        elif task.type == TaskType.multilabel:
            outputs.append(ColSpec("string", task.name))
        else:
            outputs.append(ColSpec("double", task.name))
    return ModelSignature(inputs=Schema([ColSpec("string", c) for c in columns]), outputs=Schema(outputs)), columns


def save_site_model(exported: Path, dest: Path, site: SiteConfig) -> Path:
    """The pyfunc model of an exported served model (``export_site_model``), written to ``dest``."""
    import pandas as pd

    from fedtl.shared.mlflow_models import save_pyfunc_from_code

    signature, columns = site_signature(site)
    example = pd.DataFrame({c: ["an example text to score"] for c in columns})
    return save_pyfunc_from_code(SITE_CODE, dest, {"site_model": str(exported)}, signature, example,
                                 ("fedtl", "mlflow", "torch", "transformers", "pandas"))

"""MLflow Models that fedtl logs: a saved pyfunc folder becomes a LoggedModel of a run, once.

Both the coordinator (the global encoder) and a site (its served model, in the site's own
MLflow) build a pyfunc folder with ``mlflow.pyfunc.save_model`` and hand it here. The model is
created with the client API rather than ``mlflow.pyfunc.log_model``, which reads the global
tracking URI and active experiment: fedtl never changes either, so a process can log to its own
store while the user's code logs elsewhere. Logging is idempotent per (run, name, step): a journal
replayed after a crash finds the model it made before instead of making a second one.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STEP_TAG = "fedtl.step"  # the round a LoggedModel holds; how a replay finds it
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow's UI picks its training or GenAI views by it
TRAINING_KIND = "custom_model_development"


def artifact_root_for(uri: str) -> str | None:
    """For an embedded SQLite store, keep artifacts beside the database file."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts")
    return None


def training_experiment(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, made if missing, marked as model training for MLflow's UI."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_root_for(uri),
                                        tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    if exp.tags.get(EXPERIMENT_KIND_TAG) is None:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return exp.experiment_id


def save_pyfunc_from_code(code: Path, dest: Path, artifacts: dict[str, str], signature, input_example,
                          packages: tuple[str, ...], model_config: dict[str, Any] | None = None) -> Path:
    """Write a pyfunc model ("models from code": ``code`` calls ``set_model``) to ``dest``, its
    requirements pinned to the versions of ``packages`` installed here (else MLflow loads the model
    in a subprocess to guess them, which costs as much as the logging itself)."""
    import warnings
    from importlib.metadata import version

    import mlflow.pyfunc

    with warnings.catch_warnings():  # MLflow suggests type hints; the explicit signature says more
        warnings.filterwarnings("ignore", message=".*type hints.*")
        mlflow.pyfunc.save_model(path=str(dest), python_model=str(code), artifacts=artifacts, signature=signature,
                                 input_example=input_example, model_config=model_config,
                                 pip_requirements=[f"{pkg}=={version(pkg)}" for pkg in packages])
    return dest


def find_logged_model(client, experiment_id: str, run_id: str, name: str, step: int):
    """The READY LoggedModel this run logged under ``name`` for ``step``, or None."""
    found = client.search_logged_models(experiment_ids=[experiment_id],
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    for model in found:
        if model.tags.get(STEP_TAG) == str(step) and str(model.status).endswith("READY"):
            return model
    return None


def log_model_folder(client, experiment_id: str, run_id: str, name: str, folder: Path, step: int,
                     tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                     model_type: str | None = None) -> str:
    """Log ``folder`` (a saved MLflow model) as a LoggedModel of ``run_id`` at ``step``; its id.

    Like ``Model.log``: the MLmodel file gets the model's id and run, the artifacts are uploaded,
    the model is marked READY and linked to the run as an output at ``step`` (the UI's "Logged
    models" of the run, and the model page's source run).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    existing = find_logged_model(client, experiment_id, run_id, name, step)
    if existing is not None:
        return existing.model_id
    model = client.create_logged_model(
        experiment_id=experiment_id, name=name, source_run_id=run_id, model_type=model_type,
        tags={**{k: str(v) for k, v in (tags or {}).items()}, STEP_TAG: str(step)},
        params={k: str(v) for k, v in (params or {}).items()})
    mlmodel = Model.load(str(folder / "MLmodel"))
    mlmodel.model_id, mlmodel.run_id, mlmodel.artifact_path = model.model_id, run_id, model.artifact_location
    mlmodel.model_uuid = model.model_id
    mlmodel.save(str(folder / "MLmodel"))
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    return model.model_id


def ensure_registered_model(client, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise


def register_logged_model(client, uri: str, name: str, model_id: str, run_id: str, description: str,
                          tags: dict[str, Any] | None = None, alias: str | None = None):
    """A version of registered model ``name`` for ``model_id`` (the existing one on a replay); its
    source is ``models:/<model_id>``, which links the version to the LoggedModel in the UI."""
    ensure_registered_model(client, name, description)
    source = f"models:/{model_id}"
    version = next((v for v in client.search_model_versions(f"name='{name}'")
                    if v.run_id == run_id and v.source == source), None)
    if version is None:
        with _global_tracking_uri(uri):
            version = client.create_model_version(name, source, run_id=run_id, description=description,
                                                  tags={k: str(v) for k, v in (tags or {}).items()}, model_id=model_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


_GLOBAL_URI = threading.Lock()


@contextmanager
def _global_tracking_uri(uri: str):
    """MLflow's SQL model registry resolves a ``models:/<id>`` source through the process-wide
    tracking URI, not the client's (a TODO in its code); fedtl never sets that URI, so it is set
    for the one call (under a lock: several sites may share a process) and then restored."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _GLOBAL_URI, _use_tracking_uri(uri):
        yield


def alias_for(name: str) -> str:
    """A registered-model alias for a federation or site name: MLflow allows [A-Za-z0-9_-] and
    reserves ``latest`` and ``v<N>``."""
    alias = re.sub(r"[^\w-]", "-", name.strip()).strip("-")[:200] or "federation"
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        alias = f"federation-{alias}"
    return alias

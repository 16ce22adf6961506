"""`fedtl ui`: the MLflow UI on a federation's tracking store, until Ctrl-C."""

from __future__ import annotations

import threading
from pathlib import Path

from fedtl.cli.console import console, fail, handle_stop_signals
from fedtl.shared.processes import become_subreaper, start, stop, tool, wait_for_port


def resolve_uri(config: Path | None, tracking_uri: str | None) -> tuple[str, str | None]:
    """The tracking URI to open, and the experiment ``--config`` names (None without one)."""
    from fedtl.server.tracking import default_tracking_uri

    experiment = None
    if config is not None:
        from fedtl.shared.federation_config import load_federation_config
        from fedtl.shared.yamlconfig import ConfigError

        try:
            fed = load_federation_config(config)
        except ConfigError as exc:
            fail(str(exc))
        experiment = fed.mlflow.experiment
        if fed.mlflow.tracking_uri and not tracking_uri:
            return fed.mlflow.tracking_uri, experiment
    return tracking_uri or default_tracking_uri(Path.cwd()), experiment


TRAINING_VIEW = "workflowType=machine_learning"  # MLflow 3's UI: the model-training view, not GenAI's


def landing_path(uri: str, experiment: str | None) -> str:
    """The UI path of an experiment's runs table in MLflow's model-training view.

    MLflow 3's UI opens in its GenAI view (traces, evaluation runs) unless told otherwise, whatever
    the experiment's ``mlflow.experimentKind`` tag says; the ``workflowType`` query parameter is
    what switches it (and the UI remembers the choice). The experiment: the one named, else the one
    most recently updated; none: the experiments list.
    """
    try:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment) if experiment else None
        if exp is None:
            found = client.search_experiments(max_results=5, order_by=["last_update_time DESC"])
            exp = next((e for e in found if e.name != "Default"), found[0] if found else None)
    except Exception:  # the store is unreadable: the UI's home page still opens
        exp = None
    if exp is None:
        return f"/#/experiments?{TRAINING_VIEW}"
    return f"/#/experiments/{exp.experiment_id}/runs?{TRAINING_VIEW}"


def run_ui(config: Path | None, tracking_uri: str | None, host: str, port: int, experiment: str | None = None) -> int:
    from fedtl.server.coordinator import port_taken
    from fedtl.shared.config import has_scheme
    from fedtl.shared.mlflow_models import artifact_root_for

    uri, configured = resolve_uri(config, tracking_uri)
    experiment = experiment or configured
    if not has_scheme(uri):
        fail(f"--tracking-uri {uri!r} has no scheme: use sqlite:///PATH/mlflow.db for a local store, or "
             "http://HOST:PORT for a tracking server")
    if uri.startswith(("http://", "https://")):
        console.print(f"{uri} is already an MLflow server: open {uri.rstrip('/')}{landing_path(uri, experiment)}")
        return 0
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        fail(f"no MLflow store at {uri}; run a federation first (fedtl demo) or pass --tracking-uri")
    if (why := port_taken(host, port)) is not None:
        fail(f"--port {port}: cannot listen on {host}:{port} ({why}); choose another --port")
    cmd = [tool("mlflow"), "server", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    root = artifact_root_for(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    log_path = Path.cwd() / "mlflow-ui.log"
    done = threading.Event()
    become_subreaper()  # MLflow's server starts job runners; a stop must find every one
    handle_stop_signals(on_stop=done.set)
    proc = start(cmd, log_path, die_with_parent=True)
    try:
        probe = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
        if wait_for_port(probe, port, 90, proc, "mlflow server", log_path, cancel=done):
            shown = f"[{host}]" if ":" in host else host
            console.print(f"MLflow UI: [bold]http://{shown}:{port}{landing_path(uri, experiment)}[/]", soft_wrap=True)
            console.print(f"  (store {uri}; Ctrl-C to stop)")
        while not done.wait(1.0):
            if proc.poll() is not None:
                fail(f"mlflow server exited with code {proc.returncode}; see {log_path}")
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        stop(proc)
    return 0

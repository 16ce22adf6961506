"""fedtl's Flower ServerApp: load federation.yaml and run the round loop.

The coordinator CLI submits this app to its SuperLink with ``config-path`` and
``state-dir`` in the run config; Flower runs it in a process on the coordinator host.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtl.server.history import HistoryWriter
from fedtl.server.identity import SiteIdentity
from fedtl.server.rounds import FederationRun
from fedtl.shared.federation_config import FederationConfig, load_federation_config
from fedtl.shared.protocol import RunConfigKey

app = ServerApp()


def _log_to_file(state_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(state_dir / "serverapp.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("fedtl")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


@app.main()
def main(grid: Grid, context: Context) -> None:
    config_path = str(context.run_config.get(RunConfigKey.CONFIG_PATH, ""))
    if not config_path:
        raise RuntimeError("run config 'config-path' is empty; start federations with `fedtl coordinator`")
    fed = load_federation_config(config_path)
    state_dir = Path(str(context.run_config.get(RunConfigKey.STATE_DIR) or fed.state_dir))
    run_federation(grid, fed, Path(config_path), state_dir, context.run_id,
                   tracking_uri=str(context.run_config.get(RunConfigKey.TRACKING_URI, "")),
                   resume=bool(context.run_config.get(RunConfigKey.RESUME, 0)),
                   site_nodes=str(context.run_config.get(RunConfigKey.SITE_NODES, "")))


def run_federation(grid: Grid, fed: FederationConfig, config_path: Path, state_dir: Path, run_id: int,
                   tracking_uri: str = "", resume: bool = False, mlflow_params: dict | None = None,
                   site_nodes: str = "") -> None:
    """The federation's rounds on ``grid``, with its history and MLflow run: real or simulated sites alike.
    ``site_nodes``: the coordinator's node id -> site name map while site keys are on (server/identity.py)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handler = _log_to_file(state_dir)
    observers = [HistoryWriter(state_dir, run_id)]
    if fed.mlflow.enabled and tracking_uri:
        from fedtl.server.tracking import MlflowTracker

        observers.append(MlflowTracker(
            tracking_uri, fed.mlflow.experiment, state_dir, run_name=f"{fed.name} {time.strftime('%Y-%m-%d %H:%M')}",
            registered_model=fed.mlflow.registered_model, config_path=config_path,
            checkpoint_every=fed.mlflow.checkpoint_every, extra_params=mlflow_params,
            system_metrics_seconds=fed.mlflow.system_metrics_seconds,
        ))
    try:
        identity = SiteIdentity(Path(site_nodes) if site_nodes else None)
        FederationRun(fed, state_dir, run_id=run_id, resume=resume, observers=observers, identity=identity).run(grid)
    finally:
        logging.getLogger("fedtl").removeHandler(handler)
        handler.close()

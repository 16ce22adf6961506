"""`fedtl ui`: the MLflow UI on a federation's tracking store, until Ctrl-C."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from fedtl.cli.console import console, fail
from fedtl.shared.processes import start, stop, tool, wait_for_port


def resolve_uri(config: Path | None, tracking_uri: str | None) -> str:
    from fedtl.server.tracking import default_tracking_uri

    if tracking_uri:
        return tracking_uri
    if config is not None:
        from fedtl.shared.federation_config import load_federation_config
        from fedtl.shared.yamlconfig import ConfigError

        try:
            fed = load_federation_config(config)
        except ConfigError as exc:
            fail(str(exc))
        if fed.mlflow.tracking_uri:
            return fed.mlflow.tracking_uri
    return default_tracking_uri(Path.cwd())


def run_ui(config: Path | None, tracking_uri: str | None, host: str, port: int) -> int:
    from fedtl.server.tracking import artifact_root_for

    uri = resolve_uri(config, tracking_uri)
    if uri.startswith(("http://", "https://")):
        console.print(f"{uri} is already an MLflow server: open it in your browser.")
        return 0
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        fail(f"no MLflow store at {uri}; run a federation first (fedtl demo) or pass --tracking-uri")
    cmd = [tool("mlflow"), "server", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    root = artifact_root_for(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    log_path = Path.cwd() / "mlflow-ui.log"
    proc = start(cmd, log_path, die_with_parent=True)
    try:
        wait_for_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1", port, 90, proc, "mlflow server", log_path)
        console.print(f"MLflow UI: [bold]http://{host}:{port}[/]  (store {uri}; Ctrl-C to stop)")
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        while not done.wait(1.0):
            if proc.poll() is not None:
                fail(f"mlflow server exited with code {proc.returncode}; see {log_path}")
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        stop(proc)
    return 0

"""`fedtl coordinator`: start a Flower SuperLink, submit the fedtl app, follow the run.

The operator runs one command. Under it: ``flower-superlink`` (Fleet API gRPC for sites,
Control/Runtime HTTP API on loopback), then ``flwr run`` with fedtl's app folder and the
federation's config path, then ``flwr ls`` polls until the run finishes. The ServerApp
writes its round history to ``state_dir``; the CLI reads it for the live table.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtl.server.flower_app import app_dir
from fedtl.shared.federation_config import FederationConfig
from fedtl.shared.processes import child_env, start, stop, tool, wait_for_port

log = logging.getLogger(__name__)
CONNECTION = "fedtl"
FINISHED = "finished"


class CoordinatorError(RuntimeError):
    """The SuperLink or the run could not be started or followed."""


@dataclass
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


class Coordinator:
    def __init__(self, fed: FederationConfig, config_path: Path, tls: TLSFiles | None = None,
                 resume: bool = False):
        self.fed = fed
        self.config_path = Path(config_path).resolve()
        self.state_dir = fed.state_dir.resolve()
        self.tls = tls
        self.resume = resume
        self.flwr_home = self.state_dir / "flwr"
        self.superlink: subprocess.Popen | None = None
        self.run_id: int | None = None
        self.tracking_uri = self._tracking_uri()

    def _tracking_uri(self) -> str:
        """Resolved here, where the operator runs the command (the ServerApp runs elsewhere)."""
        from fedtl.server.tracking import default_tracking_uri

        if not self.fed.mlflow.enabled:
            return ""
        return self.fed.mlflow.tracking_uri or default_tracking_uri(Path.cwd())

    # ------------------------------------------------------------ SuperLink
    def _env(self) -> dict[str, str]:
        return child_env({"FLWR_HOME": str(self.flwr_home)})

    def start_superlink(self, timeout: float = 60.0) -> None:
        s = self.fed.superlink
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [tool("flower-superlink"), "--fleet-api-address", s.fleet_address, "--host", s.control_host,
               "--port", str(s.control_port), "--disable-runtime-dependency-installation"]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                    "--ssl-keyfile", str(self.tls.key)]
        log_path = self.state_dir / "superlink.log"
        self.superlink = start(cmd, log_path, env=self._env(), die_with_parent=True)
        log.info("SuperLink (pid %d): sites connect to %s", self.superlink.pid, s.fleet_address)
        fleet_host, fleet_port = _split_address(s.fleet_address)
        probe = "127.0.0.1" if fleet_host in ("0.0.0.0", "::") else fleet_host
        try:
            wait_for_port(s.control_host, s.control_port, timeout, self.superlink, "flower-superlink", log_path)
            wait_for_port(probe, fleet_port, timeout, self.superlink, "flower-superlink", log_path)
        except RuntimeError as exc:
            self.shutdown()
            raise CoordinatorError(str(exc)) from None
        self._write_connection()

    def _write_connection(self) -> None:
        s = self.fed.superlink
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{s.control_host}:{s.control_port}"']
        lines.append(f'root-certificates = "{self.tls.ca}"' if self.tls else "insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------ the run
    def _flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        proc = subprocess.run([tool("flwr"), *args, "--format", "json"], capture_output=True, text=True,
                              env=self._env(), timeout=timeout, cwd=self.flwr_home)
        try:
            payload = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise CoordinatorError(f"flwr {args[0]} failed ({proc.returncode}): "
                                   f"{(proc.stderr or proc.stdout).strip()[-800:]}") from None
        if not payload.get("success", False):
            raise CoordinatorError(f"flwr {args[0]}: {payload.get('error-message', payload)}")
        return payload

    def submit(self) -> int:
        app = self.flwr_home / "app"
        shutil.copytree(app_dir(), app, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
        run_config = (f"config-path='{self.config_path}' state-dir='{self.state_dir}' "
                      f"resume={1 if self.resume else 0} tracking-uri='{self.tracking_uri}'")
        payload = self._flwr("run", str(app), CONNECTION, "--run-config", run_config)
        self.run_id = int(payload["run-id"])
        log.info("submitted federation '%s' as Flower run %d", self.fed.name, self.run_id)
        return self.run_id

    def run_info(self) -> dict[str, Any]:
        assert self.run_id is not None
        runs = self._flwr("ls", CONNECTION, "--run-id", str(self.run_id))["runs"]
        return runs[0] if runs else {}

    def wait(self, poll: float = 2.0, on_poll=None) -> dict[str, Any]:
        """Poll until the run finishes; return Flower's last view of it."""
        while True:
            info = self.run_info()
            if on_poll is not None:
                on_poll(info)
            if str(info.get("status", "")).startswith(FINISHED):
                return info
            if self.superlink is not None and self.superlink.poll() is not None:
                raise CoordinatorError(f"the SuperLink exited with code {self.superlink.returncode}; "
                                       f"see {self.state_dir / 'superlink.log'}")
            time.sleep(poll)

    def stop_run(self) -> None:
        if self.run_id is not None:
            try:
                self._flwr("stop", str(self.run_id), CONNECTION, timeout=60)
            except (CoordinatorError, subprocess.TimeoutExpired) as exc:
                log.warning("could not stop run %s: %s", self.run_id, exc)

    def shutdown(self) -> None:
        stop(self.superlink)
        self.superlink = None

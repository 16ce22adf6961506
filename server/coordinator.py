"""`fedtl coordinator`: start a Flower SuperLink, submit the fedtl app, follow the run.

The operator runs one command. Under it: ``flower-superlink`` (Fleet API gRPC for sites,
Control/Runtime HTTP API on loopback), then fedtl's app is submitted and followed through
Flower's Control API from this process (``server/control.py``). The ServerApp writes its
round history to ``state_dir``; the CLI reads it for the live table. ``state_dir/flwr``
holds a ``flwr`` CLI connection named ``fedtl`` for operators (``FLWR_HOME=... flwr ls fedtl``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedtl.server.control import ControlError, FlowerControl, RunState
from fedtl.server.flower_app import app_dir
from fedtl.server.hub import HubServicer, RunView, serve_hub, stop_hub
from fedtl.server.identity import NODE_NAMES
from fedtl.server.site_registry import RefusalWatch, SiteRegistry
from fedtl.shared import faults
from fedtl.shared.federation_config import HUB_TOKEN_ENV, FederationConfig, split_address
from fedtl.shared.grpc_listeners import exposure_problem, token_problem
from fedtl.shared.processes import child_env, start, stop_many, tool, wait_for_port
from fedtl.shared.protocol import RunConfigKey
from fedtl.shared.site_keys import SiteKeyError

log = logging.getLogger(__name__)
CONNECTION = "fedtl"  # the connection name in FLWR_HOME/config.toml, for operators' own `flwr` calls


class CoordinatorError(RuntimeError):
    """The SuperLink or the run could not be started or followed."""


@dataclass
class TLSFiles:
    ca: Path
    cert: Path
    key: Path
    allowed_sites: Path | None = None  # set: only sites whose keys are listed there may join


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, no such address), or None if it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


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
        self._control: FlowerControl | None = None
        self.registry: SiteRegistry | None = None
        self.refusals: RefusalWatch | None = None
        self.run_view = RunView()  # what the hub reports of the run
        self.hub = None  # (grpc server, servicer, its Control API client) while the hub runs
        self.hub_port: int | None = None
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

    def hub_token(self) -> str | None:
        """hub.token, else hub.token_file's content, else $FEDTL_HUB_TOKEN (a secret store's), else None."""
        hub = self.fed.hub
        token, source = hub.token, "hub.token"
        if token is None and hub.token_file is not None:
            try:
                token, source = hub.token_file.read_text().strip(), f"hub.token_file {hub.token_file}"
            except OSError as exc:
                raise CoordinatorError(f"{self.config_path}: hub.token_file: cannot read {hub.token_file} "
                                       f"({exc.strerror or exc})") from None
        if token is None and os.environ.get(HUB_TOKEN_ENV):
            token, source = os.environ[HUB_TOKEN_ENV], f"${HUB_TOKEN_ENV}"
        if token is not None and (why := token_problem(token, source)) is not None:
            raise CoordinatorError(why)
        return token

    def check_hub_exposure(self) -> None:
        """A hub other hosts can reach needs TLS and a token: it hands out the encoder and every round's record."""
        hub = self.fed.hub
        host, port = split_address(hub.address)
        if not hub.enabled or (problem := exposure_problem(host, self.tls is not None,
                                                           self.hub_token() is not None)) is None:
            return
        raise CoordinatorError(
            f"{self.config_path}: hub.address {hub.address}: {problem}: anyone reaching the port could pull the "
            "encoder and read every round. Start the coordinator with --certs (not --insecure) and set "
            f"hub.token_file (or hub.token, $FEDTL_HUB_TOKEN), or listen on loopback (hub.address: 127.0.0.1:{port})")

    def check_ports(self) -> None:
        """Both SuperLink ports must be free before anything starts: say which one is not, and where it is set."""
        s = self.fed.superlink
        fleet_host, fleet_port = split_address(s.fleet_address)
        checks = [("superlink.fleet_address", fleet_host, fleet_port),
                  ("superlink.control_port", s.control_host, s.control_port)]
        if self.fed.hub.enabled:
            checks.append(("hub.address", *split_address(self.fed.hub.address)))
        for field, host, port in checks:
            if (why := port_taken(host, port)) is not None:
                raise CoordinatorError(f"{self.config_path}: {field}: cannot listen on {host}:{port} ({why}); "
                                       "another federation or program may use it: choose another port")

    def start_superlink(self, timeout: float = 60.0) -> None:
        s = self.fed.superlink
        self.check_hub_exposure()
        self.check_ports()
        allowed = self._allowed_sites()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [tool("flower-superlink"), "--fleet-api-address", s.fleet_address, "--host", s.control_host,
               "--port", str(s.control_port), "--disable-runtime-dependency-installation"]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                    "--ssl-keyfile", str(self.tls.key)]
        if allowed is not None:
            cmd.append("--enable-supernode-auth")
        log_path = self.state_dir / "superlink.log"
        self.superlink = start(cmd, log_path, env=self._env(), die_with_parent=True)
        log.info("SuperLink (pid %d): sites connect to %s", self.superlink.pid, s.fleet_address)
        fleet_host, fleet_port = split_address(s.fleet_address)
        probe = "127.0.0.1" if fleet_host in ("0.0.0.0", "::") else fleet_host
        try:
            wait_for_port(s.control_host, s.control_port, timeout, self.superlink, "flower-superlink", log_path)
            wait_for_port(probe, fleet_port, timeout, self.superlink, "flower-superlink", log_path)
        except RuntimeError as exc:
            self.shutdown()
            raise CoordinatorError(str(exc)) from None
        self._write_connection()
        if allowed is not None:
            self.registry = SiteRegistry(self.control(), allowed, names_file=self.state_dir / NODE_NAMES)
            self.refusals = RefusalWatch(log_path)
            try:
                self.registry.sync(force=True)
            except ControlError as exc:
                self.shutdown()
                raise CoordinatorError(f"could not register the allowed sites: {exc}") from None
            log.info("site authentication on: %d site(s) allowed by %s (edit it to add or revoke sites)",
                     len(self.registry.sites), allowed)

    def _allowed_sites(self) -> Path | None:
        """The allowed-sites file when site authentication is on; a bad file stops the start here."""
        if self.tls is None or self.tls.allowed_sites is None:
            return None
        try:
            SiteRegistry.check(self.tls.allowed_sites)
        except SiteKeyError as exc:
            raise CoordinatorError(str(exc)) from None
        return self.tls.allowed_sites

    def watch_sites(self) -> None:
        """Apply edits of the allowed-sites file and report refused sites (called on every poll)."""
        if self.registry is None or self.refusals is None:
            return
        try:
            self.registry.sync()
        except ControlError as exc:
            log.warning("could not apply the allowed sites yet: %s", exc)
            self.registry.retry()
        self.refusals.check()

    def _write_connection(self) -> None:
        s = self.fed.superlink
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{s.control_host}:{s.control_port}"']
        lines.append(f'root-certificates = "{self.tls.ca}"' if self.tls else "insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------ the hub
    def start_hub(self) -> int | None:
        """fedtl's own API on hub.address, with the SuperLink's TLS material; returns its port."""
        hub = self.fed.hub
        if not hub.enabled:
            return None
        s = self.fed.superlink
        nodes = FlowerControl(f"{s.control_host}:{s.control_port}", self.tls.ca if self.tls else None, timeout=2.0)
        servicer = HubServicer(self.state_dir, self.fed.name, self.fed.rounds, self.fed.update_mode, self.fed.encoder,
                               self.run_view, self.tracking_uri,
                               connected=lambda: sum(n.status == "online" for n in nodes.nodes()))
        tls = (self.tls.cert.read_bytes(), self.tls.key.read_bytes()) if self.tls else None
        token = self.hub_token()
        try:
            server, self.hub_port = serve_hub(servicer, hub.address, tls, token)
        except RuntimeError as exc:
            raise CoordinatorError(f"{self.config_path}: {exc}") from None
        self.hub = (server, servicer, nodes)
        log.info("hub (fedtl status / pull) on %s%s", hub.address, " with TLS" if tls else "")
        return self.hub_port

    def stop_hub(self, linger: float = 0.0) -> None:
        if self.hub is not None:
            server, servicer, nodes = self.hub
            self.hub = None
            stop_hub(server, servicer, linger)
            nodes.close()

    # ------------------------------------------------------------ the run
    def control(self) -> FlowerControl:
        if self._control is None:
            s = self.fed.superlink
            self._control = FlowerControl(f"{s.control_host}:{s.control_port}", self.tls.ca if self.tls else None,
                                          timeout=5.0)
        return self._control

    def submit(self) -> int:
        app = self.flwr_home / "app"  # the app folder holds only pyproject.toml (components are installed)
        app.mkdir(parents=True, exist_ok=True)
        shutil.copy2(app_dir() / "pyproject.toml", app / "pyproject.toml")
        run_config = {RunConfigKey.CONFIG_PATH: str(self.config_path), RunConfigKey.STATE_DIR: str(self.state_dir),
                      RunConfigKey.RESUME: 1 if self.resume else 0, RunConfigKey.TRACKING_URI: self.tracking_uri,
                      RunConfigKey.SITE_NODES: str(self.registry.names_file) if self.registry else ""}
        try:
            self.run_id = self.control().start_run(app, run_config)
        except ControlError as exc:
            raise CoordinatorError(str(exc)) from None
        log.info("submitted federation '%s' as Flower run %d", self.fed.name, self.run_id)
        return self.run_id

    def run_state(self) -> RunState:
        assert self.run_id is not None
        try:
            return self.control().run_state(self.run_id)
        except ControlError as exc:
            raise CoordinatorError(str(exc)) from None

    def wait(self, poll: float = 1.0, on_poll: Callable[[RunState], None] | None = None,
             patience: float = 60.0) -> RunState:
        """Follow the run until Flower says it finished (one in-process HTTP call per poll).

        A busy SuperLink may miss a poll; only ``patience`` seconds without an answer fail.
        """
        last_answer = time.monotonic()
        while True:
            if self.superlink is not None and self.superlink.poll() is not None:
                raise CoordinatorError(f"the SuperLink exited with code {self.superlink.returncode}; "
                                       f"see {self.state_dir / 'superlink.log'}")
            try:
                state = self.run_state()
            except CoordinatorError:
                if time.monotonic() - last_answer > patience:
                    raise
                time.sleep(poll)
                continue
            last_answer = time.monotonic()
            self.run_view.flower_status, self.run_view.details = state.status, state.details
            self.watch_sites()
            if on_poll is not None:
                on_poll(state)
            if state.finished:
                return state
            time.sleep(poll)

    def stop_run(self) -> None:
        if self.run_id is not None and self.superlink is not None and self.superlink.poll() is None:
            try:
                self.control().stop_run(self.run_id)
            except ControlError as exc:
                log.warning("could not stop run %s: %s", self.run_id, exc)

    def shutdown(self) -> None:
        faults.hold_stop()
        self.stop_hub()
        if self._control is not None:
            self._control.close()
            self._control = None
        # orphans too: a SuperExec or app process whose parent died before the SuperLink stopped
        stop_many([self.superlink], orphans_too=True)
        self.superlink = None

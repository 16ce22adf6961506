"""Run real federations in tests: `fedtl coordinator` and `fedtl site` as real processes.

Every process the harness starts gets its own process group and is stopped (by that
group) when the test ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedtl.shared.processes import alive, child_env, free_port, start, stop_many, tree
from tests.conftest import make_site
from tests.waiting import wait_until


def fedtl_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("fedtl")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "fedtl.cli.main", *args]


@dataclass
class Federation:
    root: Path
    fleet_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.fleet_port}"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def state_dir(self) -> Path:
        return self.root / "coordinator"

    def write_config(self, **settings: Any) -> Path:
        config = {
            "name": "test", "encoder": "tiny", "update_mode": "full", "rounds": 2, "min_sites": 2,
            "round_timeout": 120, "wait_for_sites": 120, "state_dir": str(self.state_dir),
            "superlink": {"fleet_address": self.address, "control_port": self.control_port},
            "hub": {"address": f"127.0.0.1:{self.hub_port}", "linger": 0},
            "mlflow": {"tracking_uri": self.tracking_uri, "experiment": "tests", "registered_model": "test-encoder",
                       "system_metrics_seconds": 1},
        }
        config.update(settings)
        path = self.root / "federation.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def add_site(self, name: str, **kwargs: Any) -> Path:
        return make_site(self.root / name, name=name, **kwargs)

    certs: Path | None = None  # set: run over TLS with this folder's dev CA and server certificate

    def _tls_site(self) -> list[str]:
        return ["--root-certificates", str(self.certs / "ca.crt")] if self.certs else ["--insecure"]

    def start_site(self, name: str, env: dict[str, str] | None = None,
                   tls: list[str] | None = None) -> subprocess.Popen:
        """``tls``: the site's TLS and key arguments, if not the federation's own (``_tls_site``)."""
        cmd = fedtl_cmd("site", "--config", str(self.root / name / "site.yaml"),
                        "--coordinator", self.address, *(self._tls_site() if tls is None else tls))
        proc = start(cmd, self.root / f"{name}.log", cwd=self.root, env=child_env(env) if env else None)
        self.procs[name] = proc
        return proc

    def start_sites(self, label: str, *names: str) -> subprocess.Popen:
        """One `fedtl site` process serving several sites (``label`` names its process and log)."""
        configs = [arg for name in names for arg in ("--config", str(self.root / name / "site.yaml"))]
        cmd = fedtl_cmd("site", *configs, "--coordinator", self.address, *self._tls_site())
        proc = start(cmd, self.root / f"{label}.log", cwd=self.root)
        self.procs[label] = proc
        return proc

    def start_coordinator(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        tls = ["--certs", str(self.certs)] if self.certs else ["--insecure"]
        cmd = fedtl_cmd("coordinator", "--config", str(self.root / "federation.yaml"), *tls,
                        "--json", str(self.root / "result.json"), *extra)
        proc = start(cmd, self.root / "coordinator.log", cwd=self.root, env=child_env(env) if env else None)
        self.procs["coordinator"] = proc
        return proc

    def wait_coordinator(self, timeout: float) -> int:
        proc = self.procs["coordinator"]
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"coordinator still running after {timeout}s:\n{self.log('coordinator')}") from None

    def run_to_completion(self, *sites: str, timeout: float = 300,
                          env: dict[str, dict[str, str]] | None = None) -> None:
        """Start the sites and the coordinator, assert the coordinator exits 0, stop everything."""
        try:
            for name in sites:
                self.start_site(name, (env or {}).get(name))
            self.start_coordinator()
            assert self.wait_coordinator(timeout) == 0, self.log("coordinator")
        finally:
            self.stop_all()

    def rounds(self) -> list[dict[str, Any]]:
        path = self.state_dir / "rounds.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def wait_for_round(self, n: int, timeout: float) -> None:
        def done() -> bool:
            if len(self.rounds()) >= n:
                return True
            if self.procs["coordinator"].poll() is not None:
                raise AssertionError(f"coordinator exited early:\n{self.log('coordinator')}")
            return False

        wait_until(done, timeout, lambda: f"round {n} not done:\n{self.log('coordinator')}")

    def wait_for_log(self, path: Path, needle: str, timeout: float) -> None:
        wait_until(lambda: path.exists() and needle in path.read_text(errors="replace"), timeout,
                   f"{needle!r} not in {path}")

    def site_history(self, name: str) -> list[dict[str, Any]]:
        path = self.root / name / "state" / "federated" / "history.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        text = path.read_text(errors="replace")[-4000:] if path.exists() else ""
        server = self.state_dir / "serverapp.log"
        if name == "coordinator" and server.exists():
            text += "\n--- serverapp.log\n" + server.read_text(errors="replace")[-3000:]
        return text

    def kill(self, name: str) -> None:
        """SIGKILL that one process, as a crash would: what it started must go by itself."""
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        stop_many(self.procs.values())


def pids_matching(*needles: str) -> list[int]:
    """PIDs of running processes whose command line contains every needle."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(n in cmd for n in needles):
                pids.append(int(entry.name))
    return pids


def interrupt_and_check_exit(proc: subprocess.Popen, sig: int, within: float = 10.0) -> int:
    """Send ``sig`` to a fedtl command; assert that it, and every process below it, is gone
    within ``within`` seconds of the signal. Returns the command's exit code.

    The process tree is taken just before the signal, so children in other sessions
    (Flower's SuperExec and app processes, MLflow's job runners) count too.
    """
    members = tree(proc.pid)
    sent = time.monotonic()
    os.kill(proc.pid, sig)
    try:
        code = proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(map(str, proc.args[:3]))} still running {within:.0f}s after "
                             f"signal {sig}") from None

    def living() -> list[int]:
        return [pid for pid, started in members.items() if alive(pid, started)]

    wait_until(lambda: not living(), max(0.1, within - (time.monotonic() - sent)),
               lambda: f"left running: {[_cmdline(pid) for pid in living()]}", interval=0.1)
    return code


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return f"pid {pid} (gone)"

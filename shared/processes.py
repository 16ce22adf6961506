"""Start, watch and stop the child processes fedtl runs (SuperLink, SuperNodes, sites).

Every child gets its own process group, so stopping it also stops whatever it started
(Flower's SuperExec, ClientApp and ServerApp processes), and nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def tool(name: str) -> str:
    """A console script from this environment (the venv's bin first, then PATH)."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"'{name}' is not installed in this environment; reinstall fedtl (pip install fedtl)")
    return found


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for children: this venv's bin on PATH (Flower spawns its tools by name)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None,
                  what: str = "service", log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if proc is not None and proc.poll() is not None:
            tail = ""
            if log_path is not None and log_path.exists():
                tail = "\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {host}:{port}{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")
        time.sleep(0.2)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux), so no orphan outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, die_with_parent: bool = False) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or child_env(), cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent if die_with_parent else None)
    finally:
        log.close()


def stop(proc: subprocess.Popen | None, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal the child's process group, wait, then SIGKILL the group if it lingers."""
    if proc is None:
        return None
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(timeout=10)
    finally:
        _reap_group(proc.pid)


def _reap_group(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of the group is left; SIGKILL stragglers at the end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass

"""Start, watch and stop the child processes fedtl runs (SuperLink, SuperNodes, sites, MLflow).

Three rules keep a stop quick and complete:

- **Fork-safe starts.** fedtl's parents run threads (gRPC servers, rich's live display), and
  Python code between ``fork`` and ``exec`` (a ``preexec_fn``) can deadlock or abort there.
  Children are started with ``start_new_session`` only (done in C), and the parent-death
  signal is set by a tiny exec wrapper *after* exec, in a fresh single-threaded process.
- **Whole trees.** Flower's SuperLink and SuperNode start their SuperExec in a new session
  (outside their process group), and MLflow's server starts job runners. Stopping a child
  signals its process group *and* every descendant found in ``/proc``; fedtl's long-running
  commands also become a child subreaper, so orphans re-parent to them and are reaped.
- **Bounded.** SIGTERM, a short grace period, then SIGKILL. Nothing waits without a deadline.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Runs in the child after exec: ask for SIGTERM when the parent dies, give up if it already
# has, then become the real program. Python (not a preexec_fn) so it is fork-safe.
_GUARD = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None,use_errno=True).prctl(1,signal.SIGTERM)\n"
    "os.getppid()==int(sys.argv[1]) or os._exit(1)\n"
    "try:\n os.execvp(sys.argv[2],sys.argv[2:])\n"
    "except OSError as e:\n print(f'cannot start {sys.argv[2]}: {e.strerror}',file=sys.stderr);os._exit(127)\n"
)

_running: dict[int, subprocess.Popen] = {}  # every child started here and not yet stopped
_subreaper = False  # become_subreaper() was called: orphans of our trees re-parent to us


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
                  what: str = "service", log_path: Path | None = None,
                  cancel: threading.Event | None = None) -> bool:
    """Wait until ``host:port`` accepts connections; False if ``cancel`` was set first."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if cancel is not None and cancel.is_set():
            return False
        if proc is not None and proc.poll() is not None:
            tail = ""
            if log_path is not None and log_path.exists():
                tail = "\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {host}:{port}{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")
        time.sleep(0.2)
    return True


class LogTail:
    """What a child's log gained since the last look, in whole lines (one still being written waits)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def skip_to_end(self) -> None:
        """Read only what is written from now on (a restarted child appends to the same log)."""
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> str:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return ""
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace")


def become_subreaper() -> None:
    """Orphaned descendants re-parent to this process (Linux), so a stop can find and reap them."""
    global _subreaper
    try:
        _subreaper = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
    except (OSError, AttributeError):
        pass


def start(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, die_with_parent: bool = False) -> subprocess.Popen:
    """Start ``cmd`` in its own session, output appended to ``log_path``.

    ``die_with_parent``: the child gets SIGTERM when this process dies (even by SIGKILL).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if die_with_parent and sys.platform.startswith("linux"):
        cmd = [sys.executable, "-I", "-S", "-c", _GUARD, str(os.getpid()), *cmd]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or child_env(), cwd=cwd, start_new_session=True)
    _running[proc.pid] = proc
    return proc


# ---------------------------------------------------------------- process trees (/proc)
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def _started(pid: int) -> int:
    stat = _stat(pid)
    return -1 if stat is None else stat[2]


def alive(pid: int, started: int | None = None) -> bool:
    """Running, and (given ``started``) still the same process: a zombie or a reused PID is gone."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and (started is None or stat[2] == started)


def descendants(root: int) -> set[int]:
    """Every process below ``root`` in the process tree, whatever its session or group."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[1], []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def tree(root: int) -> dict[int, int]:
    """``root`` and its descendants, each with its start time (see ``alive``)."""
    return {pid: _started(pid) for pid in {root} | descendants(root)}


def _signal(pids: Iterable[int], groups: Iterable[int], sig: int) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap_orphans() -> None:
    """Collect exit statuses of orphans re-parented to this subreaper (never of our own Popen children)."""
    for pid in descendants(os.getpid()):
        stat = _stat(pid)
        if stat is not None and stat[1] == os.getpid() and stat[0] == "Z" and pid not in _running:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def stop(proc: subprocess.Popen | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
    """Stop a child and everything below it: ``sig``, up to ``timeout`` s, then SIGKILL."""
    if proc is None:
        return None
    return stop_many([proc], timeout, sig).get(proc.pid)


def stop_many(procs: Iterable[subprocess.Popen], timeout: float = 5.0,
              sig: int = signal.SIGTERM, orphans_too: bool = False) -> dict[int, int | None]:
    """Stop several children (and their trees) together, so their grace periods overlap.

    ``orphans_too``: also stop every orphan of this subreaper (see ``orphans``) in the same
    grace period; what a command does on its way out.
    """
    procs = [p for p in procs if p is not None]
    _stop_members(_trees([p.pid for p in procs] + (orphans() if orphans_too else [])), procs, timeout, sig)
    codes: dict[int, int | None] = {}
    for proc in procs:
        try:
            codes[proc.pid] = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            codes[proc.pid] = None
        _running.pop(proc.pid, None)
    reap_orphans()
    return codes


def orphans() -> list[int]:
    """Living processes re-parented to this subreaper: their parent died, so nothing else stops them.

    A SuperNode that exits on its own leaves its SuperExec here; it is stale by definition
    (a live SuperNode's SuperExec is that SuperNode's child, never ours). Only a subreaper has
    orphans: in any other process this is empty, so it never touches children started elsewhere.
    """
    if not _subreaper:
        return []
    me = os.getpid()
    found = []
    for pid in descendants(me):
        stat = _stat(pid)
        if stat is not None and stat[1] == me and stat[0] not in ("Z", "X") and pid not in _running:
            found.append(pid)
    return found


def stop_orphans(timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
    """Stop every orphan (see ``orphans``) and its tree; returns how many orphans there were."""
    found = orphans()
    _stop_members(_trees(found), [], timeout, sig)
    reap_orphans()
    return len(found)


KILL_WAIT = 5.0  # seconds a SIGKILLed process may take to be gone (a loaded machine schedules it late)


def _trees(roots: Iterable[int]) -> dict[int, int]:
    """Every root and descendant with its start time (taken before signalling: orphans lose their link)."""
    members: dict[int, int] = {}  # pid -> start time, so a reused PID is never signalled
    for root in roots:
        members.update(tree(root))
    return members


def _stop_members(members: dict[int, int], procs: list[subprocess.Popen], timeout: float, sig: int) -> None:
    """Signal ``members`` (pid -> start time) and ``procs``' groups; SIGKILL what lives past ``timeout``,
    then wait up to KILL_WAIT for it to be gone (SIGKILL is delivered asynchronously)."""
    groups = [p.pid for p in procs if p.poll() is None]
    _signal(members, groups, sig)
    deadline, killed = time.monotonic() + timeout, False
    while True:
        for proc in procs:
            proc.poll()
        reap_orphans()  # an orphan that exited is a zombie until reaped
        living = [pid for pid, started in members.items() if alive(pid, started)]
        if not living:
            return
        if time.monotonic() > deadline:
            if killed:
                return
            _signal(living, [p.pid for p in procs if p.returncode is None], signal.SIGKILL)
            deadline, killed = time.monotonic() + KILL_WAIT, True
        elif not killed:  # children started meanwhile belong to the tree too
            for pid in living:
                members.update({d: _started(d) for d in descendants(pid) if d not in members})
        time.sleep(0.05)


def stop_all(timeout: float = 5.0) -> None:
    """Stop every child started here that is still running, and their trees."""
    stop_many(list(_running.values()), timeout)


def kill_all() -> None:
    """SIGKILL every child started here and every descendant of this process, now."""
    _signal(set(_running) | descendants(os.getpid()), list(_running), signal.SIGKILL)

"""A fork server for the processes Flower starts at a site: they start warm and share memory.

Flower 1.39's SuperExec starts a fresh ``flwr-clientapp`` process for every message. Most of
that process's cost is importing Flower (its SuperNode CLI pulls in FastAPI, SQLAlchemy and
Alembic): about 1.3 s of CPU and 120 MB before the first byte moves, per site and message,
60-75% of all the CPU a site's side spends in a round (benchmarks/scale.py). Each SuperNode
also starts its own ``flower-superexec``, ~90 MB of the same imports, per site.

The site daemon starts one fork server per process. It imports the entry points of
ENTRY_POINTS (``flower-supernode``, ``flower-superexec``, ``flwr-clientapp``) and fedtl's shim
once, then forks a child for each launch; the child is an ordinary run of that command
(Flower's own code, same arguments, environment, working directory and stdio), only without
the imports, and its pages stay shared with the server's until written. The daemon runs the
SuperNode's launcher; the SuperNode and its SuperExec find theirs first on their PATH. A
launcher hands its arguments and stdio to the server, passes stop signals on, and exits with
the child's exit code. If the server cannot be reached a launcher
becomes Flower's own command instead, so a site never depends on it.
``FEDTL_FORK_SERVER=0`` turns it off.

The server stays single-threaded (forking a threaded process is unsafe) and creates no gRPC
channel before forking: each child makes its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedtl.shared.processes import child_env, start, tool
from fedtl.shared.processes import stop as stop_process

log = logging.getLogger(__name__)

ENABLE_ENV = "FEDTL_FORK_SERVER"
# The commands Flower starts by name at a site, and their entry points (module, function).
ENTRY_POINTS = {
    "flwr-clientapp": ("flwr.supernode.cli", "flwr_clientapp"),  # by the SuperExec, per message
    "flower-superexec": ("flwr.supercore.cli", "flower_superexec"),  # by the SuperNode, once
    "flower-supernode": ("flwr.supernode.cli", "flower_supernode"),  # by the site daemon, once
}
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}  # held while a command starts, then passed on
MAX_REQUEST = 1 << 20  # bytes: arguments and environment of one launch
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")

# The launcher. Runs with -I -S: standard library only, so it starts in ~20 ms.
_LAUNCHER = """#!{python} -IS
# fedtl: run this command in the site's fork server; without one, run Flower's own.
import json, os, signal, socket, struct, sys
SERVER, FLOWER = {server!r}, {flower!r}
STOPS = {{{stops}}}
# A stop that comes while the command is being started waits (blocked) until it can be passed on.
mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    conn.connect(SERVER)
    body = json.dumps({{"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
    socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [0, 1, 2])
    started = conn.recv(4)
except OSError:
    started = b""
if len(started) != 4:  # no server, or it did not start the child: Flower's own command does the job
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop that came meanwhile ends this launcher now
    os.execv(FLOWER, [FLOWER] + sys.argv[1:])
child = struct.unpack("!i", started)[0]
for sig in STOPS:  # a stop meant for the command reaches it
    signal.signal(sig, lambda signum, frame: os.kill(child, signum))
signal.pthread_sigmask(signal.SIG_SETMASK, mask)
status = b""
while len(status) < 4:
    chunk = conn.recv(4 - len(status))
    if not chunk:
        sys.exit(1)  # the server went away with the child
    status += chunk
sys.exit(struct.unpack("!i", status)[0])
"""


def enabled() -> bool:
    """On where fork exists, unless the operator turned it off."""
    return hasattr(os, "fork") and os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Launcher:
    """Where the launchers live: put ``bin_dir`` first on the SuperNode's PATH."""

    bin_dir: Path
    socket: Path


def write_launchers(bin_dir: Path, server_socket: Path) -> Launcher:
    """Write a launcher for each of ENTRY_POINTS into ``bin_dir`` (atomically)."""
    if len(sys.executable) > 200 or any(c.isspace() for c in sys.executable):
        raise OSError(f"{sys.executable!r} cannot start a script's first line (#!): too long or with spaces")
    bin_dir.mkdir(parents=True, exist_ok=True)
    for command in ENTRY_POINTS:
        path = bin_dir / command
        text = _LAUNCHER.format(python=sys.executable, server=str(server_socket), flower=tool(command),
                                stops=", ".join(f"signal.{sig.name}" for sig in sorted(STOP_SIGNALS)))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.replace(tmp, path)
        if not os.access(path, os.X_OK):  # e.g. state_dir on a noexec mount
            raise OSError(f"{path} cannot be executed here (is {bin_dir.parent} on a noexec mount?)")
    return Launcher(bin_dir=bin_dir, socket=server_socket)


class ForkServer:
    """The fork server process of one `fedtl site` process and its launchers, started and kept up."""

    RESTART_AFTER = 30.0  # seconds between starts at least: a server that cannot start does not spin

    def __init__(self, state_dir: Path, server_socket: Path):
        self.log_path = state_dir / "fork-server.log"
        self.launcher = write_launchers(state_dir / "flower-bin", server_socket)
        self.proc = None
        self.started_at = float("-inf")

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait (at most ``timeout`` s) until it listens."""
        with contextlib.suppress(FileNotFoundError):
            self.launcher.socket.unlink()  # a stale one from a killed server: wait for the new one
        self.started_at = time.monotonic()
        self.proc = start([sys.executable, "-m", "fedtl.client.fork_server", "--socket",
                           str(self.launcher.socket), "--parent-pid", str(os.getpid())],
                          self.log_path, env=child_env(), die_with_parent=True)
        deadline = time.monotonic() + timeout
        while not self.launcher.socket.exists() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.launcher.socket.exists():
            log.warning("the fork server did not start (log: %s); Flower's processes start cold", self.log_path)

    def keep_up(self) -> None:
        """Start it again if it exited; launchers use Flower's own command meanwhile."""
        if (self.proc is not None and self.proc.poll() is not None
                and time.monotonic() - self.started_at >= self.RESTART_AFTER):
            log.warning("the fork server for Flower's processes exited with code %s; starting it again (log: %s)",
                        self.proc.returncode, self.log_path)
            self.start()

    def command(self, name: str) -> str:
        """The launcher to run for Flower's command ``name``."""
        if name not in ENTRY_POINTS:
            raise ValueError(f"the fork server does not start {name!r}")
        return str(self.launcher.bin_dir / name)

    def path_env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with the launchers first on PATH, where Flower looks for its commands."""
        return {**env, "PATH": f"{self.launcher.bin_dir}{os.pathsep}{env.get('PATH', '')}"}

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def _exit_code(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10.0)
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    try:
        if len(data) < _HEADER.size:
            raise ValueError("short request")
        size = _HEADER.unpack_from(data)[0]
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} bytes")
        body = bytearray(data[_HEADER.size:])
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        request = json.loads(body)
        if not (isinstance(request, dict) and isinstance(request.get("argv"), list) and request["argv"]
                and isinstance(request.get("env"), dict) and isinstance(request.get("cwd"), str)):
            raise ValueError("a request needs argv, env and cwd")
        if Path(str(request["argv"][0])).name not in ENTRY_POINTS:
            raise ValueError(f"{request['argv'][0]!r} is not one of {', '.join(ENTRY_POINTS)}")
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} file descriptors, expected stdin, stdout and stderr")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


def _run_child(request: dict, fds: list[int], forked_at: float, mask: set[signal.Signals]) -> int:
    """In the forked child: become the launcher's command and run it. Stops come in blocked and
    are let through (``mask``) only once the child has a fresh Python's handlers for them."""
    from fedtl.client.shim import STARTED_AT_ENV

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    # Signals as a fresh Python process has them (the server changed SIGTERM, SIGINT and SIGCHLD).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop that came since the fork acts now
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    os.environ[STARTED_AT_ENV] = repr(forked_at)  # the shim's start-up time counts from here
    os.chdir(request["cwd"])
    sys.argv = [str(a) for a in request["argv"]]
    import importlib
    import random

    random.seed()  # not the server's sequence, shared by every child
    name = Path(sys.argv[0]).name
    with contextlib.suppress(OSError):  # what ps and top show (15 bytes at most): the command, not the server
        Path("/proc/self/comm").write_text(name[:15])
    module, function = ENTRY_POINTS[name]
    main = getattr(importlib.import_module(module), function)
    try:
        main()
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def serve(server_socket: Path, parent_pid: int | None = None) -> None:
    """Listen, import once, then fork a ready Flower command for each launcher until told to stop.

    The socket listens before the imports: a launcher that comes meanwhile waits in the
    backlog instead of falling back to a cold start."""
    import gc
    import importlib

    stopping = False

    def request_stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with contextlib.suppress(FileNotFoundError):
        server_socket.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(server_socket))
    os.chmod(server_socket, stat.S_IRUSR | stat.S_IWUSR)
    listener.listen(128)
    for module, _ in ENTRY_POINTS.values():
        importlib.import_module(module)  # the cost paid once, here
    importlib.import_module("fedtl.client.shim")  # the app every ClientApp loads
    wake_read, wake_write = socket.socketpair()  # a child's exit (SIGCHLD) wakes the loop at once
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}  # child pid -> its launcher's connection
    gc.freeze()  # what is imported stays out of the children's collections: fewer pages copied
    try:
        while not stopping and (parent_pid is None or os.getppid() == parent_pid):
            for key, _ in selector.select(timeout=0.5):
                if key.fileobj is listener:
                    _accept(listener, selector, children, (wake_read, wake_write))
                elif key.fileobj is wake_read:
                    with contextlib.suppress(BlockingIOError):
                        wake_read.recv(4096)
                else:  # a launcher hung up: killed hard (it forwards gentler signals), so its child is too
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(key.data, signal.SIGKILL)  # the child's pid, registered with its connection
                    selector.unregister(key.fileobj)
            _reap(selector, children)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            server_socket.unlink()


def _accept(listener: socket.socket, selector: selectors.BaseSelector, children: dict[int, socket.socket],
            wake: tuple[socket.socket, socket.socket]) -> None:
    conn, _ = listener.accept()
    try:
        request, fds = _read_request(conn)
    except (OSError, ValueError) as bad:
        log.warning("fork server: dropped a launch request: %s", bad)
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # A stop for the child that comes just after the fork must not meet the server's handlers there.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid == 0:  # the child: never returns into the server's loop
        forked_at = time.time()
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            selector.close()
            listener.close()
            for end in wake:
                end.close()
            conn.close()
            for other in children.values():
                other.close()
            code = _run_child(request, fds, forked_at, mask)
        except BaseException:  # noqa: BLE001  reported on the launcher's stderr
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    try:
        conn.sendall(_STATUS.pack(pid))
        selector.register(conn, selectors.EVENT_READ, data=pid)
    except OSError:  # the launcher is already gone
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _reap(selector: selectors.BaseSelector, children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.sendall(_STATUS.pack(_exit_code(status)))
        conn.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="fedtl's fork server for Flower's site processes (started by `fedtl site`).")
    parser.add_argument("--socket", required=True, type=Path, help="unix socket to listen on")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is no longer the parent")
    args = parser.parse_args(argv)
    serve(args.socket, args.parent_pid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`fedtl site`: the site worker plus a Flower SuperNode, running until told to stop.

The worker loads the config, data, encoder and heads once and serves them on a unix
socket; the SuperNode connects out to the coordinator and runs the thin ClientApp shim for
each message. If the SuperNode exits (say the coordinator restarted and it gave up), the
daemon starts a new one, so the site rejoins by itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedtl.client.fork_server import ForkServer
from fedtl.client.fork_server import enabled as fork_server_enabled
from fedtl.client.warm_start import WarmStart
from fedtl.client.worker import SiteWorker
from fedtl.client.worker_api import serve
from fedtl.shared.config import SiteConfig
from fedtl.shared.processes import (
    LogTail,
    become_subreaper,
    child_env,
    free_port,
    port_open,
    reap_orphans,
    start,
    stop,
    stop_many,
    stop_orphans,
    tool,
)
from fedtl.shared.protocol import NodeConfigKey

log = logging.getLogger(__name__)
UNIX_PATH_MAX = 100
STUCK_AFTER = 20.0  # seconds of failed connection attempts, while the coordinator answers, before a restart
MAX_BACKOFF = 30.0  # seconds between SuperNode restarts at most
REFUSED_BACKOFF = 8.0  # a refused key may be allowed any moment: look again soon, without flooding its log
REFUSED = "Failed to activate SuperNode"  # Flower's SuperNode, when the SuperLink does not know its key


def socket_path(state_dir: Path, name: str = "worker.sock") -> Path:
    """A unix socket inside state_dir, or in a private temp folder named after that path if it
    is too long for a socket address (the same folder each time: nothing piles up)."""
    path = state_dir.resolve() / name
    if len(str(path)) <= UNIX_PATH_MAX:
        return path
    tag = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    preferred = base / f"fedtl-{os.getuid()}-{tag}"
    preferred.mkdir(mode=0o700, exist_ok=True)
    info = preferred.lstat()
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
        return preferred / name
    # another user made it first (or it is a link): whoever owns it could reach the worker
    folder = Path(tempfile.mkdtemp(prefix=f"fedtl-{tag}-", dir=base))
    log.warning("socket folder %s is not this user's private folder; using %s", preferred, folder)
    return folder / name


# How often Flower's SuperExec looks for a new task (a message for the ClientApp): Flower's own
# default, 1 s (half a second of waiting per message on average). Each look costs CPU in the
# SuperExec and the SuperNode it asks, all round long: at 0.1 s they took 0.06 of a core while the
# site trained, and its round took 1.135x its time alone (1.06x at 1 s, where they took 0.016)
# (benchmarks/site_vs_bare.py). Rounds last tens of seconds; the half second is the cheaper cost.
SUPEREXEC_POLL_SECONDS = 1.0
POLL_ENV = "FEDTL_SUPEREXEC_POLL_SECONDS"  # an operator's (or a benchmark's) choice


def superexec_poll_seconds() -> float:
    override = os.environ.get(POLL_ENV)
    if not override:
        return SUPEREXEC_POLL_SECONDS
    try:
        seconds = float(override)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 60:
        raise ValueError(f"{POLL_ENV}={override!r}: give seconds between 0 and 60, e.g. 0.5")
    return seconds


def supernode_env(poll_seconds: float = SUPEREXEC_POLL_SECONDS, fork_server: ForkServer | None = None) -> dict[str, str]:
    """The SuperNode's environment: how often the SuperExec it starts looks for tasks, and
    where it finds Flower's commands (the fork server's launchers, when there is one)."""
    env = child_env({"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(poll_seconds)})
    return fork_server.path_env(env) if fork_server is not None else env


@dataclass
class SuperNodeSettings:
    coordinator: str
    insecure: bool = True
    root_certificates: Path | None = None
    auth_private_key: Path | None = None
    port: int | None = None
    key_fingerprint: str | None = None  # of auth_private_key's public key, for messages


LOG_KEPT = 8192  # characters of the SuperNode's latest log kept to say why it exited
_LOG_PREFIX = re.compile(r"^\S*\s*(ERROR|WARNING|CRITICAL|INFO)\s*:?\s*", re.IGNORECASE)
_TELLING = ("error", "fail", "refused", "denied", "invalid", "not found", "no such", "version", "certificate",
            "ssl", "tls", "exception")


def exit_reason(log_text: str) -> str:
    """The SuperNode's own last word on why it stopped, as `` (reason)``, or empty when it said none.

    Its log is where Flower writes the cause (certificate missing, key refused, version
    mismatch); a person watching the site's console should not have to open it to learn that.
    """
    for line in reversed(log_text.splitlines()):
        text = _LOG_PREFIX.sub("", line.strip())
        if text and any(word in text.lower() for word in _TELLING):
            return f" ({text[:200]})"
    return ""


class SiteDaemon:
    def __init__(self, config: SiteConfig, supernode: SuperNodeSettings, encoder: str | None = None,
                 stop_event: threading.Event | None = None, warm: WarmStart | None = None):
        self.config = config
        self.settings = supernode
        self.encoder = encoder
        self.warm = warm
        self.stop_event = stop_event or threading.Event()
        self.superexec_poll = superexec_poll_seconds()
        self.server = None
        self.worker: SiteWorker | None = None
        self.supernode = None
        self.fork_server: ForkServer | None = None  # set by run_sites: shared by the sites of this process
        self.socket = socket_path(config.state_dir)
        self.log_path = config.state_dir / "supernode.log"
        self._log = LogTail(self.log_path)
        self._failing_since: float | None = None
        self._refused = False  # the SuperLink refused this SuperNode's key (site authentication)
        self._last_text = ""  # the end of what the SuperNode logged: why it exited, for the console

    def start_worker(self) -> SiteWorker:
        worker = self.worker = SiteWorker(self.config, self.encoder, warm=self.warm)
        self.server = serve(worker, self.socket)
        log.info("site %s: worker listening on %s", self.config.name, self.socket)
        return worker

    def _supernode_cmd(self) -> list[str]:
        s = self.settings
        program = self.fork_server.command("flower-supernode") if self.fork_server else tool("flower-supernode")
        cmd = [program, "--superlink", s.coordinator, "--port", str(s.port or free_port()),
               "--node-config", f"{NodeConfigKey.SOCKET}='{self.socket}' {NodeConfigKey.SITE}='{self.config.name}'"]
        if s.insecure:
            cmd.append("--insecure")
        if s.root_certificates is not None:
            cmd += ["--root-certificates", str(s.root_certificates)]
        if s.auth_private_key is not None:
            cmd += ["--auth-supernode-private-key", str(s.auth_private_key)]
        return cmd

    def start_supernode(self) -> None:
        self._log.skip_to_end()
        self._last_text = ""
        self._failing_since = None
        env = supernode_env(self.superexec_poll, self.fork_server)
        self.supernode = start(self._supernode_cmd(), self.log_path, env=env, die_with_parent=True)
        log.info("site %s: SuperNode (pid %d) connecting to %s", self.config.name, self.supernode.pid,
                 self.settings.coordinator)

    def supernode_stuck(self, now: float | None = None) -> bool:
        """Is the SuperNode failing to connect although the coordinator answers?

        Flower 1.39's SuperNode can lose its heartbeat thread when its SuperLink restarts
        ("Heartbeat sender is not running") and then retries forever without re-registering.
        Its log is the only sign, so the daemon reads what the SuperNode wrote since the last
        look and restarts it once the failures have lasted STUCK_AFTER seconds.
        """
        now = time.monotonic() if now is None else now
        text = self._new_log_text()
        if text:
            ok = max(text.rfind("Connection successful"), text.rfind("SuperNode ID:"))
            failed = text.rfind("Connection attempt failed")
            if failed > ok:
                if self._failing_since is None:  # say so on the console, once per outage
                    line = text[failed:].splitlines()[0].strip()
                    log.warning("site %s: cannot reach the coordinator at %s yet (%s); retrying",
                                self.config.name, self.settings.coordinator, line[:160])
                self._failing_since = self._failing_since or now
            elif ok >= 0:
                if self._failing_since is not None:
                    log.info("site %s: connected to the coordinator at %s", self.config.name, self.settings.coordinator)
                self._failing_since = None
        if self._failing_since is None or now - self._failing_since < STUCK_AFTER:
            return False
        host, _, port = self.settings.coordinator.rpartition(":")
        return port_open(host.strip("[]") or "127.0.0.1", int(port))

    def _new_log_text(self) -> str:
        """What the SuperNode logged since the last look; notes a refused key on the way."""
        text = self._log.read()
        if REFUSED in text:
            self._refused = True
        if text.strip():
            self._last_text = (self._last_text + text)[-LOG_KEPT:]
        return text

    def refused_message(self) -> str:
        s = self.settings
        if s.auth_private_key is None:
            return (f"site {self.config.name}: the coordinator at {s.coordinator} admits only allowed sites and this "
                    "site has no key: ask its operator for one (`fedtl certs --site NAME`) and pass --key")
        return (f"site {self.config.name}: the coordinator at {s.coordinator} refused this site's key "
                f"{s.key_fingerprint} ({s.auth_private_key}): ask its operator to add "
                f"{s.auth_private_key}.pub to its allowed sites; retrying")

    def run(self) -> int:
        """Serve until ``stop_event`` is set (the CLI sets it on SIGTERM/Ctrl-C); keep a SuperNode up."""
        return run_sites([self])

    def supervise(self) -> None:
        """Start the SuperNode and keep one up until ``stop_event`` is set."""
        self.start_supernode()
        backoff = 1.0
        while not self.stop_event.wait(1.0):
            reap_orphans()
            if self.supernode is not None and self.supernode.poll() is not None:
                stop_orphans()  # the SuperExec it started outlives it, re-parented to this process
                self._new_log_text()
                if self._refused:
                    self._refused = False
                    backoff = REFUSED_BACKOFF
                    log.error("%s in %.0fs", self.refused_message(), backoff)
                else:
                    log.warning("site %s: SuperNode exited with code %s%s; reconnecting in %.0fs (log: %s)",
                                self.config.name, self.supernode.returncode, exit_reason(self._last_text),
                                backoff, self.log_path)
                if self.stop_event.wait(backoff):
                    break
                backoff = min(backoff * 2, MAX_BACKOFF)
                self.start_supernode()
            elif self.supernode is not None and self.supernode_stuck():
                log.warning("site %s: the SuperNode keeps failing to connect although the coordinator "
                            "answers; restarting it (log: %s)", self.config.name, self.log_path)
                stop(self.supernode)
                self.start_supernode()
            elif self.supernode is not None:
                backoff = 1.0

    def shutdown(self) -> None:
        if self.server is None and self.supernode is None:
            return
        stop(self.supernode)
        self.supernode = None
        if self.server is not None:
            self.server.stop(grace=1.0).wait()
            self.server = None
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass
        tracking = self.worker.tracking if self.worker is not None else None
        if tracking is not None and not tracking.close(timeout=60):
            log.warning("site %s: its MLflow did not take the last round within 60 s; not logged", self.config.name)
        log.info("site %s: stopped", self.config.name)


def run_sites(daemons: list[SiteDaemon]) -> int:
    """Serve one or several sites from this process until their shared ``stop_event`` is set.

    Several sites in one process share torch and its libraries (about 250 MB a process), so
    many sites fit on one machine; each keeps its own worker, socket, SuperNode and state.
    Workers start one after the other first, so a bad config or data file stops everything
    before any site joins.
    """
    become_subreaper()  # the SuperNodes' SuperExecs run in their own sessions: keep them in reach
    threads = []
    fork_server = None
    try:
        for daemon in daemons:
            daemon.start_worker()
        if daemons and fork_server_enabled():  # Flower's processes at these sites start warm (see fork_server)
            state_dir = daemons[0].config.state_dir
            try:
                fork_server = ForkServer(state_dir, socket_path(state_dir, "fork-server.sock"))
            except OSError as exc:
                log.warning("Flower's processes will start cold: %s", exc)
            else:
                fork_server.start()
                for daemon in daemons:
                    daemon.fork_server = fork_server
        for daemon in daemons:
            thread = threading.Thread(target=daemon.supervise, name=f"site-{daemon.config.name}", daemon=True)
            thread.start()
            threads.append(thread)
        while alive := [thread for thread in threads if thread.is_alive()]:
            alive[0].join(timeout=1.0)
            if fork_server is not None and not daemons[0].stop_event.is_set():
                fork_server.keep_up()
    finally:
        for daemon in daemons:
            daemon.stop_event.set()
        for thread in threads:
            thread.join(timeout=10)
        # together, so grace periods overlap; orphans too: SuperExecs of SuperNodes that exited on their own
        stop_many([d.supernode for d in daemons], orphans_too=True)
        for daemon in daemons:
            daemon.supernode = None
            daemon.shutdown()
        if fork_server is not None:
            fork_server.stop()
    return 0

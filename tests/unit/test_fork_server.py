"""The fork server runs Flower's real commands, forked warm, or steps aside."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from fedtl.client import fork_server
from fedtl.client.fork_server import ForkServer
from fedtl.client.site_daemon import socket_path
from fedtl.shared.processes import alive, descendants
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork server needs fork()")


@pytest.fixture
def server(tmp_path):
    fs = ForkServer(tmp_path, socket_path(tmp_path, "fork-server.sock"))
    fs.start()
    wait_until(fs.launcher.socket.exists, 60, lambda: (tmp_path / "fork-server.log").read_text())
    yield fs
    fs.stop()


CLIENTAPP = "flwr-clientapp"


def forked_by(root: int) -> set[int]:
    """The processes whose parent is ``root`` (their own children left out)."""
    def parent(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return -1
    return {pid for pid in descendants(root) if parent(pid) == root}


def launch(fs: ForkServer, *args: str, cwd: Path, **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [str(fs.launcher.bin_dir / CLIENTAPP), *args]
    if kw.pop("background", False):
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_launcher_passes_arguments_output_and_exit_code_through(server, tmp_path):
    ok = launch(server, "--help", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "usage: flwr-clientapp" in ok.stdout
    bad = launch(server, "--runtime-api-address", "127.0.0.1:1", cwd=tmp_path)  # no token
    assert bad.returncode == 2
    assert "one of the arguments --token --token-file is required" in bad.stderr
    superexec = subprocess.run([str(server.launcher.bin_dir / "flower-superexec"), "--help"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
    assert superexec.returncode == 0, superexec.stderr
    assert "usage: flower-superexec" in superexec.stdout


def test_a_command_it_does_not_serve_is_refused_and_runs_as_flowers_own(server, tmp_path):
    other = tmp_path / "not-a-flower-command"
    shutil.copy(server.launcher.bin_dir / CLIENTAPP, other)  # its fallback is still flwr-clientapp
    out = subprocess.run([str(other), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage: flwr-clientapp" in out.stdout
    assert "is not one of flwr-clientapp, flower-superexec" in (tmp_path / "fork-server.log").read_text()


def test_each_launch_is_a_child_of_the_server_and_dies_with_its_launcher(server, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    # A ClientApp whose SuperNode never answers keeps retrying: long enough to look at it.
    launcher = launch(server, "--runtime-api-address", "127.0.0.1:1", "--token", "t", "--insecure",
                      cwd=workdir, background=True)
    try:
        child = wait_until(lambda: descendants(server.proc.pid), 30, "the server forked no ClientApp")
        (pid,) = child
        # the child changes directory, then names itself for ps and top, just after the fork
        wait_until(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == CLIENTAPP, 30,
                   lambda: f"the ClientApp is named {Path(f'/proc/{pid}/comm').read_text().strip()!r}")
        assert Path(f"/proc/{pid}/cwd").resolve() == workdir.resolve()  # the launcher's working directory
        wait_until(lambda: "Connection attempt failed" in launcher.stderr.readline(), 30,
                   "the child's log did not reach the launcher's stderr")
        launcher.kill()
        launcher.wait(timeout=10)
        wait_until(lambda: not alive(pid), 30, "the ClientApp outlived its killed launcher")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait(timeout=10)
        launcher.stderr.close()
    assert server.proc.poll() is None  # the server goes on serving


def test_a_stop_sent_to_the_launcher_reaches_the_command_and_its_exit_comes_back(server, tmp_path):
    launcher = launch(server, "--runtime-api-address", "127.0.0.1:1", "--token", "t", "--insecure",
                      cwd=tmp_path, background=True)
    try:
        # the ClientApp the server forked (its own children, if any, are not what a stop must reach first)
        (pid,) = wait_until(lambda: forked_by(server.proc.pid), 30, "the server forked no ClientApp")
        wait_until(lambda: "Connection attempt failed" in launcher.stderr.readline(), 30, "no log from the child")
        launcher.send_signal(signal.SIGTERM)  # what a stop of the site's process tree sends
        code = launcher.wait(timeout=60)
        rest = launcher.stderr.read()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        launcher.stderr.close()
    assert not alive(pid)
    assert "Task stopped." in rest  # Flower's own handler ran in the child: the signal was forwarded
    assert code == 0, rest


def has_socket(pid: int) -> bool:
    """Whether the process holds a socket: a launcher that has begun asking the server."""
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd).startswith("socket:") for fd in fds.iterdir())


def test_a_stop_that_comes_before_the_command_started_still_reaches_it(server, tmp_path):
    os.kill(server.proc.pid, signal.SIGSTOP)  # the server is slow: the launcher waits for its command
    try:
        launcher = launch(server, "--runtime-api-address", "127.0.0.1:1", "--token", "t", "--insecure",
                          cwd=tmp_path, background=True)
        wait_until(lambda: has_socket(launcher.pid), 30, "the launcher never asked the server")
        launcher.send_signal(signal.SIGTERM)
        assert launcher.poll() is None  # held until there is a command to pass it to
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    try:
        code = launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        launcher.stderr.close()
    # the command got the stop: Flower's handler ran (0) or it came before the handler (killed: 128 + 15)
    assert code in (0, 128 + signal.SIGTERM), code
    wait_until(lambda: not descendants(server.proc.pid), 30, "the stopped command outlived its launcher")
    assert server.proc.poll() is None


def test_launcher_runs_flowers_own_command_when_the_server_is_down(server, tmp_path):
    os.kill(server.proc.pid, signal.SIGTERM)
    server.proc.wait(timeout=30)
    assert not server.launcher.socket.exists()
    ok = launch(server, "--help", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "usage: flwr-clientapp" in ok.stdout
    server.keep_up()  # not again at once: a server that cannot start must not spin
    assert server.proc.poll() is not None
    server.RESTART_AFTER = 0.0  # the backoff has passed
    server.keep_up()  # and the site daemon starts it again
    wait_until(server.launcher.socket.exists, 60, "the fork server did not come back")
    assert server.proc.poll() is None


def test_supernodes_find_the_launcher_first_on_their_path(tmp_path):
    from fedtl.client.site_daemon import supernode_env

    fs = ForkServer(tmp_path, socket_path(tmp_path, "fork-server.sock"))  # not started: only the launchers are written
    try:
        env = supernode_env(fork_server=fs)
        for command in ("flwr-clientapp", "flower-superexec"):
            launcher = str(fs.launcher.bin_dir / command)
            assert shutil.which(command, path=env["PATH"]) == launcher
            assert shutil.which(command, path=supernode_env()["PATH"]) != launcher
    finally:
        fs.stop()


def test_operators_can_turn_the_fork_server_off(monkeypatch):
    monkeypatch.delenv(fork_server.ENABLE_ENV, raising=False)
    assert fork_server.enabled()
    for off in ("0", "false", "off"):
        monkeypatch.setenv(fork_server.ENABLE_ENV, off)
        assert not fork_server.enabled()


def test_a_state_dir_that_cannot_hold_programs_is_refused_with_the_reason(tmp_path):
    """On a noexec mount the launchers could not run: the site must start Flower cold instead."""
    mount = tmp_path / "noexec"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a noexec tmpfs here: {made.stderr.strip()}")
    try:
        with pytest.raises(OSError, match="noexec"):
            ForkServer(mount, socket_path(mount, "fork-server.sock"))
    finally:
        subprocess.run(["umount", str(mount)], check=True)

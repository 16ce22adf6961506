import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_clientapp_shim_imports_neither_torch_nor_transformers():
    code = ("import sys, fedtl.client.shim as s; "
            "assert s.app is not None; "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_generated_proto_code_is_up_to_date(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_protos
    finally:
        sys.path.pop(0)
    fresh = gen_protos.generate(tmp_path)
    assert fresh
    for path in fresh:
        committed = ROOT / "protos" / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} missing: run python scripts/gen_protos.py"
        assert filecmp.cmp(path, committed, shallow=False), f"{committed} is stale: run python scripts/gen_protos.py"


def test_site_daemon_detects_a_stuck_supernode(tmp_path, monkeypatch):
    import socket

    from fedtl.client import site_daemon
    from fedtl.client.site_daemon import STUCK_AFTER, SiteDaemon, SuperNodeSettings
    from fedtl.shared.config import load_site_config
    from tests.conftest import make_site

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    daemon = SiteDaemon(load_site_config(make_site(tmp_path / "s")), SuperNodeSettings(f"127.0.0.1:{port}"))
    daemon.log_path.parent.mkdir(parents=True, exist_ok=True)
    daemon.log_path.write_text("INFO: SuperNode ID: 1\n")
    assert not daemon.supernode_stuck(now=0.0)
    with daemon.log_path.open("a") as fh:
        fh.write("WARNING: Connection attempt failed, retrying in 3.2 seconds\n")
    assert not daemon.supernode_stuck(now=1.0)           # failing, but not for long
    assert daemon.supernode_stuck(now=1.0 + STUCK_AFTER)  # long enough, and the coordinator answers
    with daemon.log_path.open("a") as fh:
        fh.write("INFO: Connection successful after 2.15 seconds and 3 tries.\n")
    assert not daemon.supernode_stuck(now=100.0)          # recovered by itself
    with daemon.log_path.open("a") as fh:
        fh.write("WARNING: Connection attempt failed, retrying in 3.2 seconds\n")
    daemon.supernode_stuck(now=200.0)
    listener.close()
    monkeypatch.setattr(site_daemon, "port_open", lambda host, port: False)
    assert not daemon.supernode_stuck(now=200.0 + STUCK_AFTER)  # coordinator down: let Flower retry


def test_superexec_poll_interval_defaults_and_override(monkeypatch):
    from fedtl.client.site_daemon import POLL_ENV, SUPEREXEC_POLL_SECONDS, superexec_poll_seconds, supernode_env

    monkeypatch.delenv(POLL_ENV, raising=False)
    assert superexec_poll_seconds() == SUPEREXEC_POLL_SECONDS
    monkeypatch.setenv(POLL_ENV, "0.5")
    assert superexec_poll_seconds() == 0.5
    assert supernode_env(superexec_poll_seconds())["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.5"
    for bad in ("soon", "0", "-1", "600"):
        monkeypatch.setenv(POLL_ENV, bad)
        with pytest.raises(ValueError, match=POLL_ENV):
            superexec_poll_seconds()

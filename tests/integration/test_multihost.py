"""A coordinator and two sites on three hosts: Linux network namespaces joined by veth pairs.

The coordinator's namespace holds the SuperLink, the hub, PostgreSQL and compose's MLflow
tracking server on it (artifacts served by the server); each site's namespace reaches the
coordinator only over its own link (10.231.N.0/30) and resolves ``coordinator`` through
``/etc/netns/<ns>/hosts``, as a container does through compose's DNS. Every process runs the
command its container runs: the image's ENTRYPOINT (deploy/docker/Dockerfile) plus the
service's ``command`` in deploy/compose.yaml (MLflow's whole ``sh -c`` line), with the
containers' paths mapped to this test's folders. TLS and site keys are on; 2 rounds.

Needs root, iproute2 and Debian's PostgreSQL; skipped without them unless
FEDTL_REQUIRE_DEPLOY_TOOLS=1 (CI).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedtl.cli.main import app
from fedtl.shared.processes import start, stop_many
from tests.conftest import make_site
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SITES = ("site-a", "site-b")


POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))  # Debian's layout: one folder per major


def _require_netns() -> None:
    missing = "root" if os.geteuid() != 0 else "iproute2 (ip)" if shutil.which("ip") is None else None
    if missing is None and not POSTGRES_BIN:
        missing = "PostgreSQL (Debian's postgresql package)"
    if missing is None:
        probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        missing = None if probe.returncode == 0 else f"ip netns ({probe.stderr.strip()})"
    if missing is not None:
        if os.environ.get("FEDTL_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(f"the multi-host test needs {missing} (FEDTL_REQUIRE_DEPLOY_TOOLS=1)")
        pytest.skip(f"the multi-host test needs {missing}")


def sh(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Hosts:
    """Three namespaces: ``coordinator`` linked to each site by its own veth pair, sites not to each other."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = {"coordinator": f"fedtl{tag}c", **{s: f"fedtl{tag}{s[-1]}" for s in SITES}}
        self.site_ip = {s: f"10.231.{i}.2" for i, s in enumerate(SITES, 1)}

    def up(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        coord = self.ns["coordinator"]
        for i, site in enumerate(SITES, 1):
            here, there = f"{self.ns[site]}v0", f"{self.ns[site]}v1"
            sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
            sh("ip", "link", "set", here, "netns", coord)
            sh("ip", "link", "set", there, "netns", self.ns[site])
            sh("ip", "-n", coord, "addr", "add", f"10.231.{i}.1/30", "dev", here)
            sh("ip", "-n", self.ns[site], "addr", "add", f"10.231.{i}.2/30", "dev", there)
            sh("ip", "-n", coord, "link", "set", here, "up")
            sh("ip", "-n", self.ns[site], "link", "set", there, "up")
            self._hosts(site, f"10.231.{i}.1 coordinator\n")
        self._hosts("coordinator", "127.0.0.1 coordinator mlflow postgres\n")

    def _hosts(self, host: str, lines: str) -> None:
        """`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts: per-host names."""
        folder = Path("/etc/netns") / self.ns[host]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts").write_text("127.0.0.1 localhost\n" + lines)

    def down(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its veth ends along
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    def cmd(self, host: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *args]


def entrypoint(target: str) -> list[str]:
    """The ENTRYPOINT of a stage of deploy/docker/Dockerfile."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stage = re.search(rf"^FROM \S+ AS {target}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert stage, f"no stage {target}"
    found = re.search(r"^ENTRYPOINT (\[.*\])$", stage.group(1), re.M)
    assert found, f"stage {target} has no ENTRYPOINT"
    return json.loads(found.group(1))


def container_command(service: str, paths: dict[str, Path]) -> list[str]:
    """The service's command line in deploy/compose.yaml, its container paths mapped to ``paths``."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][service]
    target = "site" if service in SITES else service
    args = entrypoint(target) + list(compose["command"])
    return [str(paths.get(arg, arg)) for arg in args]


def mlflow_command(password_file: Path, artifacts: Path) -> list[str]:
    """compose's `sh -c "exec mlflow server ..."` line, its secret and volume mapped (one worker: 2 cores)."""
    service = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["mlflow"]
    [line] = service["command"]
    assert service["entrypoint"] == ["sh", "-c"] and line.startswith("exec mlflow server"), service
    line = line.replace("$$", "$").replace("/run/secrets/postgres_password", str(password_file))
    line = line.replace("/var/lib/mlflow/artifacts", str(artifacts)).replace("exec mlflow", f"exec {tool_path('mlflow')}")
    return ["sh", "-c", line + " --workers 1"]


class Postgres:
    """PostgreSQL as compose's postgres service sets it up: user and database `mlflow`, password from a file."""

    def __init__(self, password: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fedtl-pg-"))  # not under pytest's root-only tmp: postgres reads it
        self.password_file = self.root / "postgres_password"
        self.password_file.write_text(password)
        shutil.chown(self.root, "postgres", "postgres")
        shutil.chown(self.password_file, "postgres", "postgres")
        self.bin = POSTGRES_BIN[-1]

    def as_postgres(self, *args: str) -> list[str]:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *args]

    def init(self) -> None:
        sh(*self.as_postgres(str(self.bin / "initdb"), "-D", str(self.root / "data"), "-U", "mlflow",
                             "--auth=scram-sha-256", f"--pwfile={self.password_file}"))

    def server(self) -> list[str]:
        return self.as_postgres(str(self.bin / "postgres"), "-D", str(self.root / "data"), "-p", "5432",
                                "-k", str(self.root), "-c", "listen_addresses=127.0.0.1")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def tool_path(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def resolve(args: list[str]) -> list[str]:
    """Run this checkout's fedtl (the containers' is on their PATH)."""
    return [tool_path(args[0]), *args[1:]]


MLFLOW_QUERY = """
import json, sys
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1])
[run] = client.search_runs([client.get_experiment_by_name(sys.argv[2]).experiment_id])
accepted = [m.value for m in client.get_metric_history(run.info.run_id, "federation/sites_accepted")]
artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "encoder")]
print(json.dumps({"status": run.info.status, "sites_accepted": accepted, "artifacts": artifacts}))
"""


def test_a_federation_across_three_network_namespaces(tmp_path):
    _require_netns()
    certs = tmp_path / "certs"
    made = CliRunner().invoke(app, ["certs", "--out", str(certs), "--host", "coordinator",
                                    "--site", "site-a", "--site", "site-b"])
    assert made.exit_code == 0, made.output
    fed = yaml.safe_load((DEPLOY / "config" / "federation.yaml").read_text())  # the containers' federation.yaml
    fed.update(encoder="tiny", update_mode="full", rounds=2, state_dir=str(tmp_path / "coordinator"),
               round_timeout=120, wait_for_sites=120)
    fed["hub"]["linger"] = 15
    hub_token = secrets.token_hex(24)  # compose's hub_token secret: the hub is off loopback, so it needs one
    (tmp_path / "hub_token").write_text(hub_token)
    assert fed["hub"]["token_file"] == "/run/secrets/hub_token"
    fed["hub"]["token_file"] = str(tmp_path / "hub_token")
    (tmp_path / "federation.yaml").write_text(yaml.safe_dump(fed))
    paths = {"/etc/fedtl/federation.yaml": tmp_path / "federation.yaml", "/run/secrets/coordinator_certs": certs,
             "/run/secrets/ca.crt": certs / "ca.crt"}
    for site in SITES:
        make_site(tmp_path / site, name=site.replace("-", "_"), n=80)
        paths[f"/run/secrets/{site.replace('-', '_')}_key"] = certs / "sites" / site
    postgres = Postgres(secrets.token_hex(16))
    hosts = Hosts()
    procs: dict[str, subprocess.Popen] = {}

    def log(name: str) -> str:
        path = tmp_path / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    try:
        hosts.up()
        postgres.init()
        procs["postgres"] = start(hosts.cmd("coordinator", *postgres.server()), tmp_path / "postgres.log", cwd=tmp_path)
        ready = [str(postgres.bin / "pg_isready"), "-h", "postgres", "-p", "5432", "-U", "mlflow"]
        wait_until(lambda: subprocess.run(hosts.cmd("coordinator", *ready), capture_output=True).returncode == 0,
                   60, lambda: log("postgres"))
        sh(*hosts.cmd("coordinator", "env", f"PGPASSWORD={postgres.password_file.read_text()}",
                      str(postgres.bin / "createdb"), "-h", "postgres", "-U", "mlflow", "mlflow"))  # POSTGRES_DB
        artifacts = tmp_path / "mlflow-artifacts"
        procs["mlflow"] = start(hosts.cmd("coordinator", *mlflow_command(postgres.password_file, artifacts)),
                                tmp_path / "mlflow.log", cwd=tmp_path)
        probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()"

        def listening(host: str, address: str, port: int) -> bool:
            return subprocess.run(hosts.cmd(host, sys.executable, "-c", probe, address, str(port)),
                                  capture_output=True).returncode == 0

        wait_until(lambda: listening("coordinator", "mlflow", 5000), 120, lambda: log("mlflow"))
        procs["coordinator"] = start(hosts.cmd("coordinator", *resolve(container_command("coordinator", paths))),
                                     tmp_path / "coordinator.log", cwd=tmp_path)
        for site in SITES:
            command = container_command(site, {**paths, "/etc/fedtl/site.yaml": tmp_path / site / "site.yaml"})
            assert command[command.index("--coordinator") + 1] == "coordinator:9092"
            procs[site] = start(hosts.cmd(site, *resolve(command)), tmp_path / f"{site}.log", cwd=tmp_path / site)

        # the hub answers a site's host by name while the federation runs
        rounds_file = tmp_path / "coordinator" / "rounds.jsonl"

        def first_round() -> bool:
            assert procs["coordinator"].poll() is None, f"the coordinator exited:\n{log('coordinator')}"
            return rounds_file.exists() and bool(rounds_file.read_text().strip())

        wait_until(first_round, 300, lambda: log("coordinator"))
        status = subprocess.run(hosts.cmd("site-a", "env", f"FEDTL_HUB_TOKEN={hub_token}",
                                          *resolve(["fedtl", "status", "--coordinator", "coordinator:9094",
                                                    "--root-certificates", str(certs / "ca.crt"), "--json"])),
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["rounds_total"] == 2

        assert procs["coordinator"].wait(timeout=300) == 0, log("coordinator")
        # what the MLflow server (on PostgreSQL) holds, asked from the coordinator's host as the UI would
        query = subprocess.run(hosts.cmd("coordinator", sys.executable, "-c", MLFLOW_QUERY, "http://mlflow:5000",
                                         fed["mlflow"]["experiment"]), capture_output=True, text=True, timeout=120)
        assert query.returncode == 0, query.stderr[-3000:]
        tracked = json.loads(query.stdout.strip().splitlines()[-1])
        # one site's host has no route to the other's: separate hosts, joined only through the coordinator
        isolated = subprocess.run(hosts.cmd("site-a", sys.executable, "-c", probe, hosts.site_ip["site-b"], "9"),
                                  capture_output=True, text=True)
        assert "Network is unreachable" in isolated.stderr, isolated.stderr
    finally:
        stop_many(procs.values(), timeout=10)
        hosts.down()
        postgres.cleanup()

    rounds = [json.loads(line) for line in rounds_file.read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert record["accepted"] == 2 and sorted(record["sites"]) == ["site_a", "site_b"], record
    assert "Attempted to register SuperNode" not in log("coordinator")  # both sites' keys admitted

    assert tracked["status"] == "FINISHED" and tracked["sites_accepted"] == [2.0, 2.0], tracked
    assert tracked["artifacts"], "no encoder checkpoint reached the MLflow server's artifact store"
    assert list(artifacts.rglob("model.safetensors")), "the served artifacts are not in the server's volume"

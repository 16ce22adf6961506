"""deploy/: every file checked without a Docker engine or a running systemd.

hadolint lints the Dockerfiles, Debian's docker-compose validates the compose file, and
systemd-analyze verifies the units. Where a tool is missing the check is skipped, unless
FEDTL_REQUIRE_DEPLOY_TOOLS=1 (CI installs them and sets it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.site-cuda"]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("FEDTL_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(f"{name} is required (FEDTL_REQUIRE_DEPLOY_TOOLS=1)")
        pytest.skip(f"{name} not installed")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_lint_clean_and_run_as_a_non_root_user(dockerfile):
    result = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    text = dockerfile.read_text()
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases  # pinned base images
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    final = [s for s in stages if "ENTRYPOINT" in s]
    assert final and all("HEALTHCHECK" in s for s in final)
    assert re.findall(r"^USER (\d+):(\d+)$", text, re.M) == [("10001", "10001")]


def test_compose_file_is_valid_and_wires_coordinator_mlflow_and_sites():
    compose = DEPLOY / "compose.yaml"
    result = subprocess.run([tool("docker-compose"), "-f", str(compose), "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    spec = yaml.safe_load(compose.read_text())
    services = spec["services"]
    assert {"postgres", "mlflow", "coordinator", "site-a", "site-b"} <= set(services)
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (DEPLOY / "docker" / "Dockerfile").read_text(), re.M))
    for service in services.values():
        if "build" in service:
            assert service["build"]["target"] in targets
    assert "postgresql://" in " ".join(services["mlflow"]["command"])
    assert "5000:5000" in services["mlflow"]["ports"] and "9092:9092" in services["coordinator"]["ports"]
    for name in ("site-a", "site-b"):  # TLS and the site's own key, no --insecure anywhere
        command = services[name]["command"]
        assert "--root-certificates" in command and "--key" in command
    assert "--insecure" not in compose.read_text()


def test_the_containers_federation_yaml_is_valid_and_logs_to_the_mlflow_service():
    from fedtl.shared.federation_config import load_federation_config

    fed = load_federation_config(DEPLOY / "config" / "federation.yaml")
    assert fed.mlflow.tracking_uri == "http://mlflow:5000"
    assert fed.superlink.fleet_address.endswith(":9092") and fed.hub.address.endswith(":9094")


@pytest.mark.parametrize("unit", ["fedtl-coordinator.service", "fedtl-site@.service"])
def test_systemd_units_verify(tmp_path, unit):
    analyze = tool("systemd-analyze")
    fedtl = Path(sys.executable).with_name("fedtl")
    text = (DEPLOY / "systemd" / unit).read_text()
    assert "User=fedtl" in text and "Restart=on-failure" in text and "/var/lib/fedtl" in text
    # systemd-analyze checks that ExecStart's program exists: point it at this environment's fedtl
    name = unit.replace("@.", "@alpha.")
    (tmp_path / name).write_text(text.replace("/opt/fedtl/bin/fedtl", str(fedtl)))
    result = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr

"""deploy/: every file checked without a Docker engine or a running systemd.

hadolint lints the Dockerfiles, Debian's docker-compose validates the compose file, helm lints
and renders the chart (validated against Kubernetes schemas by kubernetes-validate), and
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
    assert fed.hub.token_file == Path("/run/secrets/hub_token"), "a hub off loopback needs a token"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert "hub_token" in compose["services"]["coordinator"]["secrets"] and "hub_token" in compose["secrets"]


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


# ---------------------------------------------------------------- the Helm chart
CHART = DEPLOY / "helm" / "fedtl"
CI_VALUES = CHART / "ci" / "sites-values.yaml"
KUBERNETES = "1.30.0"  # the oldest Kubernetes the chart is validated against (schemas from kubernetes-validate)


@pytest.fixture(scope="module")
def chart_files(tmp_path_factory) -> list[str]:
    """--set-file arguments for the TLS material and the GPU site's key, made by `fedtl certs`."""
    from typer.testing import CliRunner

    from fedtl.cli.main import app

    certs = tmp_path_factory.mktemp("certs")
    made = CliRunner().invoke(app, ["certs", "--out", str(certs), "--host", "fed-fedtl-coordinator", "--site", "lexicon"])
    assert made.exit_code == 0, made.output
    files = {f"coordinator.certs.{n.replace('.', chr(92) + '.')}": certs / n
             for n in ("ca.crt", "server.pem", "server.key", "allowed_sites.txt")}
    files["sites[1].key"] = certs / "sites" / "lexicon"
    return [arg for key, path in files.items() for arg in ("--set-file", f"{key}={path}")]


def helm_template(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("helm"), "template", "fed", str(CHART), "--namespace", "fl", *args],
                          capture_output=True, text=True)


def rendered(*args: str) -> dict[tuple[str, str], dict]:
    result = helm_template(*args)
    assert result.returncode == 0, result.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}


def container(objects: dict, kind: str, name: str) -> dict:
    [only] = objects[(kind, name)]["spec"]["template"]["spec"]["containers"]
    return only


def validate_objects(objects: dict) -> None:
    """Every rendered object against Kubernetes' schemas, strictly (unknown fields are errors)."""
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("FEDTL_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail("kubernetes-validate is required (FEDTL_REQUIRE_DEPLOY_TOOLS=1)")
        pytest.skip("kubernetes-validate not installed")
    for (kind, name), obj in objects.items():
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{kind} {name}: {exc.message} at {list(exc.path)}") from None


def test_helm_chart_lints_and_every_object_is_valid_kubernetes(chart_files):
    for values in (["--set", "coordinator.certsSecret=fedtl-certs"], ["-f", str(CI_VALUES), *chart_files]):
        lint = subprocess.run([tool("helm"), "lint", "--strict", str(CHART), *values], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        objects = rendered(*values)
        validate_objects(objects)
    kinds = sorted({kind for kind, _ in objects})
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "Service", "StatefulSet"]


def test_helm_chart_runs_the_containers_commands_with_the_values_federation(tmp_path, chart_files):
    import base64

    from fedtl.shared.config import SiteConfig
    from fedtl.shared.federation_config import load_federation_config

    objects = rendered("-f", str(CI_VALUES), *chart_files, "--set", "coordinator.fleetPort=9192")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]

    # federation.yaml: the values' settings, the chart's addresses, MLflow at its own Service
    (tmp_path / "federation.yaml").write_text(objects[("ConfigMap", "fed-fedtl-federation")]["data"]["federation.yaml"])
    fed = load_federation_config(tmp_path / "federation.yaml")
    assert (fed.rounds, fed.strategy.name, fed.personalization.method) == (5, "fedavgm", "ditto")
    assert fed.superlink.fleet_address == "0.0.0.0:9192" and fed.hub.address == "0.0.0.0:9094"
    assert fed.mlflow.tracking_uri == "http://fed-fedtl-mlflow:5000" and ("Service", "fed-fedtl-mlflow") in objects
    assert fed.hub.linger >= 24 * 3600  # a finished run keeps answering, so the Deployment does not restart it

    coordinator = container(objects, "Deployment", "fed-fedtl-coordinator")
    assert coordinator["args"] == [*compose["coordinator"]["command"], "--resume"]
    assert coordinator["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "fedtl-hub-token", "key": "token"}
    ports = {p["name"]: p["port"] for p in objects[("Service", "fed-fedtl-coordinator")]["spec"]["ports"]}
    assert ports == {"fleet": 9192, "hub": 9094}
    # without a token Secret the hub stays on the pod's loopback (the coordinator refuses it elsewhere)
    plain = rendered("-f", str(CI_VALUES), *chart_files, "--set", "coordinator.hubTokenSecret.name=")
    (tmp_path / "plain.yaml").write_text(plain[("ConfigMap", "fed-fedtl-federation")]["data"]["federation.yaml"])
    assert load_federation_config(tmp_path / "plain.yaml").hub.address == "127.0.0.1:9094"

    mlflow = container(objects, "Deployment", "fed-fedtl-mlflow")
    assert "--backend-store-uri=postgresql://mlflow:$(POSTGRES_PASSWORD)@fed-fedtl-postgres:5432/mlflow" in mlflow["args"]
    assert any(a.startswith("--allowed-hosts=fed-fedtl-mlflow,fed-fedtl-mlflow:5000") for a in mlflow["args"])

    for site, name in (("site-a", "fed-fedtl-site-clinic"), ("site-b", "fed-fedtl-site-lexicon-gpu")):
        args = container(objects, "Deployment", name)["args"]
        expected = list(compose[site]["command"])
        expected[expected.index("--coordinator") + 1] = "fed-fedtl-coordinator:9192"
        expected[expected.index("--key") + 1] = "/run/secrets/site_key"
        assert args == expected
        site_yaml = yaml.safe_load(objects[("ConfigMap", name)]["data"]["site.yaml"])
        config = SiteConfig.model_validate(site_yaml)  # a valid site.yaml; the chart owns state_dir
        assert str(config.state_dir) == "/var/lib/fedtl/state"
    # Secrets made from the given files: the coordinator's TLS material, the GPU site's key
    given = dict(arg.split("=", 1) for arg in chart_files[1::2])
    certs = objects[("Secret", "fed-fedtl-certs")]["data"]
    for name in ("ca.crt", "server.pem", "server.key", "allowed_sites.txt"):
        assert base64.b64decode(certs[name]) == Path(given["coordinator.certs." + name.replace(".", "\\.")]).read_bytes()
    key = objects[("Secret", "fed-fedtl-site-lexicon-gpu-key")]["data"]["key"]
    assert base64.b64decode(key) == Path(given["sites[1].key"]).read_bytes()
    volumes = {v["name"]: v for v in objects[("Deployment", "fed-fedtl-site-lexicon-gpu")]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["key"]["secret"]["secretName"] == "fed-fedtl-site-lexicon-gpu-key"
    assert volumes["ca"]["secret"]["secretName"] == "fed-fedtl-certs"
    gpu = container(objects, "Deployment", "fed-fedtl-site-lexicon-gpu")["resources"]
    assert gpu["limits"] == {"memory": "8Gi", "nvidia.com/gpu": 1} and gpu["requests"]["cpu"] == "2"


def test_helm_chart_refuses_to_render_without_tls_material_or_a_site_key():
    result = helm_template()
    assert result.returncode != 0 and "coordinator.certs.ca.crt is missing" in result.stderr, result.stderr
    result = helm_template("--set", "coordinator.certsSecret=c", "--set", "sites[0].name=x",
                           "--set", "sites[0].dataClaim=d", "--set", "sites[0].config.name=x")
    assert result.returncode != 0 and "sites[x]: give its private key" in result.stderr, result.stderr


def test_helm_chart_refuses_two_sites_that_would_share_a_kubernetes_name():
    values = ["--set", "coordinator.certsSecret=c"]
    for i, name in enumerate(["North_Clinic", "north-clinic"]):
        values += ["--set", f"sites[{i}].name={name}", "--set", f"sites[{i}].dataClaim=d{i}",
                   "--set", f"sites[{i}].keySecret=k{i}", "--set", f"sites[{i}].config.name={name}"]
    result = helm_template(*values)
    assert result.returncode != 0, result.stdout
    assert "sites[North_Clinic] and sites[north-clinic] would get the same Kubernetes name" in result.stderr, \
        result.stderr


def test_helm_chart_names_sites_with_long_names_validly_and_apart(chart_files):
    """Two 64-character site names that share their first 60 characters, one ending in '_': every
    object stays valid Kubernetes (names, label values <= 63 characters) and the sites stay apart."""
    long_names = ["Hospital_" + "x" * 51 + "aaa_", "Hospital_" + "x" * 51 + "bbbb"]
    values = ["--set", "coordinator.certsSecret=c"]
    for i, name in enumerate(long_names):
        values += ["--set", f"sites[{i}].name={name}", "--set", f"sites[{i}].dataClaim=d{i}",
                   "--set", f"sites[{i}].keySecret=k{i}", "--set", f"sites[{i}].config.name={name}"]
    objects = rendered(*values)
    validate_objects(objects)
    deployments = [obj for (kind, _), obj in objects.items()
                   if kind == "Deployment" and obj["metadata"]["labels"].get("app.kubernetes.io/component") == "site"]
    assert len(deployments) == 2
    names = {d["metadata"]["name"] for d in deployments}
    components = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for d in deployments}
    assert len(names) == 2 and len(components) == 2
    assert all(len(n) <= 59 for n in names) and all(len(c) <= 63 and c[-1].isalnum() for c in components)
    for d in deployments:
        assert d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] in components

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedtl.cli.main import app
from tests.conftest import make_site

runner = CliRunner()


def commands() -> list[str]:
    import typer.main

    group = typer.main.get_group(app)
    return sorted(group.commands)


def test_fedtl_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "train-local" in result.output


@pytest.mark.parametrize("command", commands())
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "fedtl.cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("fedtl ")


def test_train_local_prints_table_and_writes_json(tmp_path):
    config = make_site(tmp_path / "site", encoder_epochs=1)
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["train-local", "--config", str(config), "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output and "label" in result.output
    summary = json.loads(out.read_text())
    assert summary["site"] == "site_a" and summary["primary_metric"] == {"label": "macro_f1"}
    assert summary["metrics"]["final"]["label"]["accuracy"] > summary["metrics"]["before"]["label"]["accuracy"]


def test_train_local_bad_data_exits_nonzero_naming_the_file(tmp_path):
    config = make_site(tmp_path / "site")
    (tmp_path / "site" / "data.csv").write_text("text,label\nok,good\n,bad\n")
    result = runner.invoke(app, ["train-local", "--config", str(config), "--quiet"])
    assert result.exit_code == 1
    assert "data.csv" in result.output and "row 2" in result.output and "'text'" in result.output


def test_train_local_bad_config_exits_nonzero(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("name: 1bad\nstate_dir: s\ntasks: []\n")
    result = runner.invoke(app, ["train-local", "--config", str(bad)])
    assert result.exit_code == 1 and "site.yaml" in result.output and "line 1" in result.output


def test_examples_command_copies_editable_sites(tmp_path):
    result = runner.invoke(app, ["examples", str(tmp_path / "ex")])
    assert result.exit_code == 0
    for name in ("clinic", "pharmacy", "lexicon"):
        assert (tmp_path / "ex" / "sites" / f"{name}.yaml").exists()


def test_running_an_example_in_place_is_refused():
    from fedtl.shared.examples import examples_root

    result = runner.invoke(app, ["train-local", "--config", str(examples_root() / "sites" / "lexicon.yaml")])
    assert result.exit_code == 1 and "fedtl examples" in result.output


@pytest.mark.parametrize("address", ["localhost", "host:port", "host:70000", ":9092"])
def test_site_rejects_a_malformed_coordinator_address(tmp_path, address):
    config = make_site(tmp_path / "site")
    result = runner.invoke(app, ["site", "--config", str(config), "--coordinator", address, "--insecure"])
    assert result.exit_code == 1 and "HOST:PORT" in result.output


def test_demo_codec_flag_reaches_federation_yaml(tmp_path):
    from fedtl.cli.demo import demo_federation
    from fedtl.shared.federation_config import load_federation_config

    path = demo_federation(tmp_path, 2, {}, {"encoder": "tiny", "codec": {"up": "int8", "down": "int8"}})
    fed = load_federation_config(path)
    assert (fed.codec.up, fed.codec.down) == ("int8", "int8")
    assert load_federation_config(demo_federation(tmp_path, 2, {}, {"encoder": "tiny", "codec": None})).codec.up == "none"


@pytest.mark.parametrize(("flags", "says"), [
    (["--hub", "127.0.0.1:9094"], "--hub goes with --warm-start"),
    (["--warm-start", "--encoder", "tiny"], "either --encoder or --warm-start"),
    (["--warm-start", "--hub", "no-port"], "--hub 'no-port': 'no-port' is not HOST:PORT"),
])
def test_site_warm_start_flags_are_checked_before_anything_starts(tmp_path, flags, says):
    config = make_site(tmp_path / "site", name="site")
    result = runner.invoke(app, ["site", "--config", str(config), "--coordinator", "127.0.0.1:9092", "--insecure",
                                 *flags])
    assert result.exit_code != 0 and says in " ".join(result.output.split()), result.output


@pytest.mark.parametrize("args, says", [
    (["--sites", "5000"], "at most 1880 sites"),  # 7,520 lexicon words, 4 rows a site at least
    (["--sites", "3"], "min_sites: 5"),
    (["--task", "weather"], "choose one of polarity"),
    (["--alpha", "0"], "--alpha and --cpus-per-site must be greater than 0"),
])
def test_simulate_refuses_impossible_plans_before_starting_ray(tmp_path, args, says):
    config = tmp_path / "federation.yaml"
    config.write_text("name: sim\nencoder: tiny\nmin_sites: 5\nmlflow: {enabled: false}\n")
    result = runner.invoke(app, ["simulate", "--config", str(config), "--workdir", str(tmp_path / "w"), *args])
    assert result.exit_code != 0 and says in " ".join(result.output.split()), result.output
    assert not (tmp_path / "w").exists(), "a refused simulation wrote its workdir"

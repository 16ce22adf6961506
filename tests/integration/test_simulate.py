"""`fedtl simulate`: virtual sites on Flower's simulation engine, logged like a real federation."""

import json
import subprocess

import yaml

from tests.integration.harness import fedtl_cmd


def test_simulate_twenty_sites_two_rounds_logs_every_site_to_mlflow(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "federation.yaml"
    config.write_text(yaml.safe_dump({
        "name": "sim", "encoder": "tiny", "update_mode": "full", "rounds": 5, "min_sites": 20, "max_steps": 2,
        "final_evaluate": False, "wait_for_sites": 60,
        "mlflow": {"tracking_uri": uri, "experiment": "sim", "registered_model": None},
    }))
    def simulate(rounds: int) -> subprocess.CompletedProcess:
        return subprocess.run(fedtl_cmd("simulate", "--config", str(config), "--sites", "20", "--rounds", str(rounds),
                                        "--alpha", "0.3", "--workdir", str(tmp_path / "w"),
                                        "--json", str(tmp_path / "out.json")),
                              capture_output=True, text=True, timeout=900)

    out = simulate(rounds=2)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "DEPRECATED" not in out.stdout + out.stderr  # Flower's notice on its Python API is ours to handle

    result = json.loads((tmp_path / "out.json").read_text())
    rounds = result["rounds"]
    names = {f"sim-{i:04d}" for i in range(20)}
    assert [r["round"] for r in rounds] == [1, 2]  # --rounds overrides federation.yaml
    assert all(r["aggregated"] and set(r["sites"]) == names and not r["failed"] for r in rounds), rounds
    assert rounds[0]["global_digest"] != rounds[1]["global_digest"]

    # each virtual site trained its own heads from its own rows, kept in its own state folder
    for i in (0, 19):
        site = tmp_path / "w" / "sites" / f"site-{i:04d}"
        assert list((site / "state").rglob("*.safetensors")), f"site {i} saved no heads"
        history = [json.loads(line) for line in (site / "state" / "federated" / "history.jsonl").read_text().splitlines()]
        assert [h["round"] for h in history] == [1, 2]

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("sim").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["fedtl.status"] == "completed"
    assert run.data.params["simulation.sites"] == "20" and run.data.params["simulation.alpha"] == "0.3"
    logged = {key.split("/")[1] for key in run.data.metrics if key.startswith("site/")}
    assert logged == names
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "site/sim-0013/polarity/val_macro_f1")]
    assert steps == [1, 2]

    # a second simulation in the same folder starts afresh at every site, not from the first one's heads
    assert simulate(rounds=1).returncode == 0
    history = (tmp_path / "w" / "sites" / "site-0000" / "state" / "federated" / "history.jsonl").read_text()
    assert [json.loads(line)["round"] for line in history.splitlines()] == [1]
    assert len(client.search_runs([client.get_experiment_by_name("sim").experiment_id])) == 2

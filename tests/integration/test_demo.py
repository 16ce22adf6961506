"""`fedtl demo` with a user's own site configs: exits 0, writes its summary, leaves nothing running."""

from __future__ import annotations

import json
import subprocess

import pytest

from fedtl.shared.processes import child_env
from tests.conftest import make_site
from tests.integration.harness import fedtl_cmd, pids_matching

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]




def test_demo_with_user_sites_runs_and_cleans_up(tmp_path):
    a = make_site(tmp_path / "a", name="alpha", types=("classification",))
    b = make_site(tmp_path / "b", name="beta", types=("regression", "multilabel"), seed=1)
    c = make_site(tmp_path / "c", name="gamma", types=("classification",), seed=2)
    workdir = tmp_path / "work"
    summary = tmp_path / "summary.json"
    store = f"sqlite:///{tmp_path / 'elsewhere' / 'tracking.db'}"  # MLflow's convention: the env var wins
    (tmp_path / "elsewhere").mkdir()
    proc = subprocess.run(
        fedtl_cmd("demo", "--encoder", "tiny", "--rounds", "2", "--site", str(a), "--site", str(b),
                  "--site", str(c), "--workdir", str(workdir), "--json", str(summary)),
        capture_output=True, text=True, timeout=500, cwd=tmp_path, env=child_env({"MLFLOW_TRACKING_URI": store}),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "HTTP Request" not in proc.stdout + proc.stderr, "library request logs reach the user's console"
    data = json.loads(summary.read_text())
    assert data["status"] == "finished:completed"
    assert set(data["sites"]) == {"alpha", "beta", "gamma"}
    assert set(data["sites"]["beta"]["tasks"]) == {"score", "tags"}
    task = data["sites"]["alpha"]["tasks"]["label"]
    assert task["primary_metric"] == "macro_f1" and task["baseline"] is not None and task["federated"] is not None
    assert data["sites"]["alpha"]["site_keeps"] in ("federated", "baseline")
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert all(r["bytes_down"] > 0 and r["accepted"] == 3 for r in data["rounds"])
    _check_mlflow_store(store)
    assert not (workdir / "mlflow.db").exists()
    assert not pids_matching(str(workdir)), "the demo left processes running"


def test_demo_refuses_two_sites_with_one_name(tmp_path):
    a = make_site(tmp_path / "a", name="same")
    b = make_site(tmp_path / "b", name="same")
    proc = subprocess.run(fedtl_cmd("demo", "--encoder", "tiny", "--site", str(a), "--site", str(b),
                                    "--workdir", str(tmp_path / "w")), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "same" in (proc.stdout + proc.stderr)


def _check_mlflow_store(uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fedtl-demo")
    [run] = client.search_runs([exp.experiment_id])
    params = run.data.params
    assert params["sites.beta.tasks"] == "score,tags" and params["encoder"] == "tiny"
    assert params["update_mode"] == "last:2" and "version.torch" in params and "seed" in params
    history = lambda key: [m.step for m in client.get_metric_history(run.info.run_id, key)]  # noqa: E731
    for key in ("federation/score_mean", "federation/sites_sampled", "federation/sites_failed",
                "federation/bytes_down", "federation/aggregation_seconds", "site/gamma/update_norm",
                "site/beta/tags/val_micro_f1", "site/beta/score/train_loss", "site/alpha/label/transfer_gain"):
        assert history(key) == [1, 2], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "plots", "interference", "encoder"} <= artifacts
    [version] = client.search_model_versions("name='fedtl-encoder'")
    assert version.run_id == run.info.run_id


def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path):
    import signal

    from fedtl.shared.processes import start, stop
    from tests.integration.harness import interrupt_and_check_exit
    from tests.waiting import wait_until

    sites = [make_site(tmp_path / n, name=n, types=("classification",), seed=i) for i, n in enumerate(("a1", "b2"))]
    workdir = tmp_path / "work"
    args = ["demo", "--encoder", "tiny", "--rounds", "20", "--workdir", str(workdir)]
    for path in sites:
        args += ["--site", str(path)]
    demo = start(fedtl_cmd(*args), tmp_path / "demo.log", cwd=tmp_path)
    try:
        wait_until(lambda: (workdir / "coordinator" / "rounds.jsonl").exists(), 300,
                   lambda: (tmp_path / "demo.log").read_text(errors="replace")[-3000:])
        assert interrupt_and_check_exit(demo, signal.SIGINT) == 130
        assert not pids_matching(str(workdir)), "the demo left processes running"
    finally:
        stop(demo)


def test_predict_after_a_demo_reproduces_the_clinic_sites_validation_accuracy(tmp_path):
    """The bundled sites, one round: `fedtl predict` with clinic's served model scores its
    validation rows exactly as the site reported for that model. Clinic serves its heads as
    validated (``serve_all_rows: false``): refit on the validation rows too, they would score
    those rows better than the site reported, by design."""
    import csv

    import yaml

    from fedtl.shared.config import load_site_config
    from fedtl.shared.data import load_task_data
    from fedtl.shared.examples import copy_examples

    sites = copy_examples(tmp_path / "examples")
    config = sites["clinic"]
    spec = yaml.safe_load(config.read_text())
    spec.setdefault("training", {})["serve_all_rows"] = False
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    workdir = tmp_path / "work"
    proc = subprocess.run(fedtl_cmd("demo", "--encoder", "tiny", "--rounds", "1", "--workdir", str(workdir),
                                    *[arg for path in sites.values() for arg in ("--site", str(path))]),
                          capture_output=True, text=True, timeout=500, cwd=tmp_path,
                          env=child_env({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "insecure" in proc.stdout + proc.stderr
    site = load_site_config(config)
    served = json.loads((site.state_dir / "federated" / "site_model.json").read_text())
    out = tmp_path / "clinic-predicted.csv"
    data = site.tasks[0].data[0]
    predict = subprocess.run(fedtl_cmd("predict", "--config", str(config), "--input", str(data), "--output", str(out)),
                             capture_output=True, text=True, timeout=300)
    assert predict.returncode == 0, predict.stdout + predict.stderr
    rows, truth = list(csv.DictReader(out.open())), list(csv.DictReader(data.open()))
    assert len(rows) == len(truth)
    val = load_task_data(site.tasks[0], seed=site.training.seed).val
    hits = [rows[n - 1]["sentiment"] == truth[n - 1]["sentiment"] for _, n in val.origin]
    assert len(hits) > 50
    assert sum(hits) / len(hits) == pytest.approx(served["metrics"]["sentiment"]["accuracy"], abs=1e-9)

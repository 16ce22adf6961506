from pathlib import Path

from fedtl.server.history import RoundRecord
from fedtl.server.tracking import Journal, flatten_params, round_metrics
from fedtl.shared.mlflow_models import artifact_root_for


def test_params_keep_every_scalar_leaf():
    params = flatten_params({"name": "f", "rounds": 3, "strategy": {"name": "fedprox", "mu": 0.1},
                             "max_update_norm": None, "final_evaluate": True})
    assert params == {"name": "f", "rounds": 3, "strategy.name": "fedprox", "strategy.mu": 0.1,
                      "max_update_norm": None, "final_evaluate": True}


def test_journal_keeps_order_and_survives_rewrites(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    for i in range(3):
        journal.append({"op": "metrics", "i": i})
    assert [op["i"] for op in journal.pending()] == [0, 1, 2]
    journal.rewrite(journal.pending()[1:])
    assert [op["i"] for op in journal.pending()] == [1, 2]


def test_sqlite_artifacts_live_beside_the_database():
    assert artifact_root_for("sqlite:////data/fed/mlflow.db") == str(Path("/data/fed/mlartifacts"))
    assert artifact_root_for("http://mlflow:5000") is None


def test_round_metrics_names_and_baseline_once():
    record = RoundRecord.model_validate({
        "round": 1, "sampled": 2, "answered": 2, "accepted": 2, "failed": [], "rejected": [{"site": "x", "reason": "NaN"}],
        "bytes_down": 10, "bytes_up": 8, "seconds": 3.0, "aggregation_seconds": 0.1, "aggregated": True,
        "metrics": {"train_loss": 0.5, "score": 0.7}, "update_norms": {"a": 0.2},
        "sites": {"a": {"metrics": {"num-examples": 5, "seconds": 1.0, "startup_seconds": 0.1},
                        "report": {"tasks": ["t"], "primary": ["r2"], "val/t/r2": 0.6, "baseline/t/r2": 0.4,
                                   "train_loss/t": 0.3, "site_model": "federated"}}},
    })
    logged: set[str] = set()
    first = round_metrics(record, logged)
    assert first["federation/sites_rejected"] == 1 and first["federation/train_loss_mean"] == 0.5
    assert first["site/a/t/val_r2"] == 0.6 and first["site/a/t/baseline_r2"] == 0.4
    assert abs(first["site/a/t/transfer_gain"] - 0.2) < 1e-9 and first["site/a/update_norm"] == 0.2
    second = round_metrics(record.model_copy(update={"round": 2}), logged)
    assert "site/a/t/baseline_r2" not in second and "site/a/t/val_r2" in second


def test_secrets_reach_neither_mlflow_params_nor_the_logged_config(tmp_path):
    """hub.token and a password in a URL are redacted in the params and the config artifact;
    a config without secrets is logged as the file itself."""
    import yaml
    from mlflow import MlflowClient

    from fedtl.server.tracking import MlflowTracker
    from fedtl.shared.federation_config import REDACTED

    token = "s3cret-hub-token-0123456789"
    config = {"name": "fed", "rounds": 2, "hub": {"address": "0.0.0.0:9094", "token": token},
              "mlflow": {"tracking_uri": "http://alice:pa55word@mlflow:5000"}}
    path = tmp_path / "federation.yaml"
    path.write_text("# my federation\n" + yaml.safe_dump(config))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "exp", tmp_path / "state", "run", None, config_path=path)
    (tmp_path / "state").mkdir()
    tracker.start({"run_id": 1, "config": config, "start_round": 1})
    client = MlflowClient(tracking_uri=uri)
    params = client.get_run(tracker.run_id).data.params
    assert params["hub.token"] == REDACTED and params["hub.address"] == "0.0.0.0:9094"
    assert params["mlflow.tracking_uri"] == f"http://alice:{REDACTED}@mlflow:5000"
    logged = Path(client.download_artifacts(tracker.run_id, "config/federation.yaml", str(tmp_path / "dl")))
    text = logged.read_text()
    assert token not in text and "pa55word" not in text
    assert yaml.safe_load(text)["hub"]["token"] == REDACTED and yaml.safe_load(text)["rounds"] == 2
    everything = "".join(p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert token not in everything and "pa55word" not in everything

    # no secrets: the file itself, comments and all
    plain = tmp_path / "plain" / "federation.yaml"
    plain.parent.mkdir()
    plain.write_text("# my federation\nname: fed2\nrounds: 1\n")
    tracker = MlflowTracker(uri, "exp", tmp_path / "plain" / "state", "run2", None, config_path=plain)
    (tmp_path / "plain" / "state").mkdir()
    tracker.start({"run_id": 2, "config": {"name": "fed2", "rounds": 1}, "start_round": 1})
    logged = Path(client.download_artifacts(tracker.run_id, "config/federation.yaml", str(tmp_path / "dl2")))
    assert logged.read_text() == plain.read_text()


def test_the_sites_tag_stays_within_mlflows_limit_and_says_how_many():
    from fedtl.server.tracking import SITES_TAG_LIMIT, sites_tag

    assert sites_tag(["b", "a"]) == "a,b"
    many = sites_tag(f"sim-{i:04d}" for i in range(1000))
    assert len(many) <= SITES_TAG_LIMIT and many.startswith("1000 sites: sim-0000,sim-0001,") and many.endswith(",...")

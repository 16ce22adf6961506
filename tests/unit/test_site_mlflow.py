"""A site's own MLflow (site.yaml ``mlflow:``): its metrics every round, the model it serves as a
pyfunc model that answers exactly what ``fedtl predict`` answers, registered after the last round."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedtl.cli.main import app
from tests.unit.test_codec_rounds import federation

SITE_MLFLOW = "mlflow:\n  tracking_uri: sqlite:///site-mlflow.db\n  registered_model: site0-model\n"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Two sites, two rounds, three task types; site 0 logs to its own MLflow, site 1 does not."""
    tmp = tmp_path_factory.mktemp("site-mlflow")
    _, workers, rounds = federation(tmp, {"up": "none", "down": "none"}, rounds=2,
                                    types=("classification", "regression", "multilabel"), site_yaml={0: SITE_MLFLOW})
    assert workers[1].tracking is not None and workers[2].tracking is None
    assert workers[1].tracking.wait(120)
    return tmp, workers, rounds


def _client(tmp):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp / 's0' / 'site-mlflow.db'}")


def test_the_sites_run_holds_its_metrics_every_round_and_its_served_models(tracked):
    tmp, workers, _ = tracked
    client = _client(tmp)
    exp = client.get_experiment_by_name("fedtl-site")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["site"] == "site0"
    assert run.data.params["tasks"] == "label,score,tags" and run.data.params["rounds"] == "2"
    steps = lambda key: [m.step for m in client.get_metric_history(run.info.run_id, key)]  # noqa: E731
    for key in ("label/served_accuracy", "label/federated_macro_f1", "label/baseline_macro_f1", "label/transfer_gain",
                "score/served_r2", "tags/federated_micro_f1", "site/peak_memory_mb"):
        assert steps(key) == [1, 2], key
    history = [json.loads(line) for line in (workers[1].root / "history.jsonl").read_text().splitlines()]
    last = client.get_metric_history(run.info.run_id, "label/federated_macro_f1")[-1].value
    assert last == pytest.approx(history[-1]["metrics"]["label"]["macro_f1"])
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert sorted(o.step for o in outputs) == [1, 2]  # every_round: the model served after each round
    [version] = client.search_model_versions("name='site0-model'")  # registered once, after the last round
    assert client.get_model_version_by_alias("site0-model", "served").version == version.version
    assert version.tags["fedtl.round"] == "2" and version.run_id == run.info.run_id
    assert not (tmp / "s0" / "mlflow_site").exists() or not any((tmp / "s0" / "mlflow_site").iterdir())


def test_the_registered_site_model_answers_what_fedtl_predict_answers_row_for_row(tracked, tmp_path):
    """Same rows, identical outputs: labels, label sets, values and probabilities, to the bit."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    tmp, _, _ = tracked
    source = tmp / "s0" / "data.csv"
    out = tmp_path / "predicted.jsonl"
    result = CliRunner().invoke(app, ["predict", "--config", str(tmp / "s0" / "site.yaml"), "--input", str(source),
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    expected = pd.read_json(out, lines=True, dtype=False, precise_float=True)
    with _use_tracking_uri(f"sqlite:///{tmp / 's0' / 'site-mlflow.db'}"):
        model = mlflow.pyfunc.load_model("models:/site0-model@served")
    answered = model.predict(pd.read_csv(source)[["text"]])
    assert list(answered.columns) == ["label", "label_probability", "score", "tags"]
    assert len(answered) == len(expected) == 60
    for column in answered.columns:
        assert answered[column].tolist() == expected[column].tolist(), column
    assert model.metadata.signature.inputs.input_names() == ["text"]


def test_a_site_without_the_option_has_no_mlflow_store_and_heads_stay_in_the_sites_store(tracked):
    tmp, workers, _ = tracked
    assert not (tmp / "s1" / "site-mlflow.db").exists() and not (tmp / "s1" / "mlflow.db").exists()
    assert not (tmp / "s1" / "state" / "mlflow_site_runs.json").exists()
    assert (workers[1].config.state_dir / "mlflow_site_runs.json").exists()

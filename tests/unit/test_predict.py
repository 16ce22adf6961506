"""`fedtl predict`: the model a site serves, rebuilt from site_model.json, on a file of texts."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from fedtl.cli.main import app
from fedtl.shared.config import load_site_config
from fedtl.shared.data import load_task_data
from tests.unit.test_codec_rounds import federation

runner = CliRunner()


@pytest.mark.parametrize("update_mode", ["last:1", "lora"])
def test_predictions_reproduce_the_served_models_validation_score(tmp_path, update_mode):
    _, workers, _ = federation(tmp_path, {"up": "none", "down": "none"}, rounds=1, update_mode=update_mode)
    worker = workers[1]
    served = json.loads((worker.root / "site_model.json").read_text())
    config = tmp_path / "s0" / "site.yaml"
    out = tmp_path / "predicted.csv"
    result = runner.invoke(app, ["predict", "--config", str(config), "--input", str(tmp_path / "s0" / "data.csv"),
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    source = list(csv.DictReader((tmp_path / "s0" / "data.csv").open()))
    assert len(rows) == len(source)
    assert list(rows[0])[:len(source[0])] == list(source[0])  # input columns kept, in order
    assert {"label", "label_probability"} <= set(rows[0])
    assert all(0.5 <= float(r["label_probability"]) <= 1.0 for r in rows)  # two classes: the winner's share
    # the validation rows' accuracy is the one the site recorded for the model it serves
    site = load_site_config(config)
    task = load_task_data(site.tasks[0], seed=site.training.seed)
    val_rows = [row_no for _, row_no in task.val.origin]
    predicted = [rows[n - 1]["label"] == source[n - 1]["label"] for n in val_rows]
    assert sum(predicted) / len(predicted) == pytest.approx(served["metrics"]["label"]["accuracy"], abs=1e-9)
    if update_mode == "lora" and served["model"] == "federated":
        assert served["lora"]["rank"] == 8
    for suffix in (".jsonl", ".parquet"):  # the same predictions in the other formats
        import pandas as pd

        other = tmp_path / f"predicted{suffix}"
        assert runner.invoke(app, ["predict", "--config", str(config), "--input", str(tmp_path / "s0" / "data.csv"),
                                   "--output", str(other)]).exit_code == 0
        frame = pd.read_json(other, lines=True) if suffix == ".jsonl" else pd.read_parquet(other)
        assert frame["label"].tolist() == [r["label"] for r in rows]


def test_predict_errors_say_what_to_do(tmp_path):
    _, _, _ = federation(tmp_path, {"up": "none", "down": "none"}, rounds=1, sites=1)
    config = tmp_path / "s0" / "site.yaml"
    bad = tmp_path / "bad.csv"
    bad.write_text("other\nhello\n")
    result = runner.invoke(app, ["predict", "--config", str(config), "--input", str(bad)])
    assert result.exit_code == 1 and "bad.csv" in result.output and "row 1" in result.output and "text" in result.output
    result = runner.invoke(app, ["predict", "--config", str(config), "--input", str(bad), "--output", "x.xlsx"])
    assert result.exit_code == 1 and "unsupported output type" in result.output
    fresh = tmp_path / "fresh"
    from tests.conftest import make_site

    result = runner.invoke(app, ["predict", "--config", str(make_site(fresh, name="fresh")), "--input", str(bad)])
    assert result.exit_code == 1 and "site_model.json: not found" in result.output

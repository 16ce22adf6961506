"""`fedtl predict`: the model a site serves, rebuilt from site_model.json, on a file of texts."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from fedtl.cli.main import app
from fedtl.shared.config import load_site_config
from fedtl.shared.data import load_task_data
from fedtl.shared.lora import LoraSettings
from tests.unit.test_codec_rounds import federation

runner = CliRunner()


@pytest.mark.parametrize("update_mode", ["last:1", "lora"])
def test_predictions_reproduce_the_served_models_validation_score(tmp_path, update_mode):
    # heads served as validated: refit on the validation rows too (the default), they would score
    # those rows better than the site reported, by design
    _, workers, _ = federation(tmp_path, {"up": "none", "down": "none"}, rounds=1, update_mode=update_mode,
                               training={"serve_all_rows": False})
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
        assert served["parts"][0]["lora"]["rank"] == LoraSettings().rank
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


def test_serve_answers_predict_calls_like_the_file_path(tmp_path):
    import signal

    import grpc

    from fedtl.shared.processes import free_port, port_open, start, stop
    from fedtl.v1 import predict_pb2, predict_pb2_grpc
    from tests.integration.harness import fedtl_cmd
    from tests.waiting import wait_until

    federation(tmp_path, {"up": "none", "down": "none"}, rounds=1, sites=1)
    config, data = tmp_path / "s0" / "site.yaml", tmp_path / "s0" / "data.csv"
    expected = tmp_path / "expected.csv"
    assert runner.invoke(app, ["predict", "--config", str(config), "--input", str(data), "--output",
                               str(expected)]).exit_code == 0
    port = free_port()
    proc = start(fedtl_cmd("predict", "--config", str(config), "--serve", str(port)), tmp_path / "serve.log")
    try:
        wait_until(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, 60, "predict --serve did not listen")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        source = list(csv.DictReader(data.open()))[:20]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = predict_pb2_grpc.PredictorStub(channel)
            reply = stub.Predict(predict_pb2.PredictRequest(rows=[predict_pb2.Row(columns={"text": r["text"]})
                                                                  for r in source]), timeout=30)
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(predict_pb2.PredictRequest(rows=[predict_pb2.Row(columns={"other": "x"})]), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "row 1" in err.value.details()
        want = list(csv.DictReader(expected.open()))[:20]
        assert [r.tasks[0].label for r in reply.rows] == [w["label"] for w in want]
        assert [r.tasks[0].probability for r in reply.rows] == pytest.approx([float(w["label_probability"]) for w in want])
        assert reply.model.site == "site0" and reply.model.round == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        stop(proc)

"""Real federations: a Flower SuperLink and SuperNodes as separate processes on loopback,
fedtl site workers behind the ClientApp shim, the tiny encoder."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtl.server.wire_log import read_wire_log
from fedtl.shared.encoders import load_encoder
from fedtl.shared.processes import alive, tree
from tests.capture import Capture, require_tcpdump, tcp_streams
from tests.integration.harness import Federation, interrupt_and_check_exit, pids_matching
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
SITE_MLFLOW = "mlflow:\n  tracking_uri: sqlite:///own-mlflow.db\n  registered_model: site-a-model\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One federation, two sites with different tasks, two rounds, run to completion."""
    fed = Federation(tmp_path_factory.mktemp("federation"))
    site_a = fed.add_site("site_a", types=("classification",))
    site_a.write_text(site_a.read_text() + SITE_MLFLOW)  # site_a logs to its own MLflow too
    fed.add_site("site_b", types=("regression", "multilabel"), seed=1)
    fed.write_config(rounds=2, min_sites=2)
    capture = Capture(fed.fleet_port, fed.root / "fleet.pcap") if shutil.which("tcpdump") else nullcontext()
    with capture:  # what really crosses loopback (test_the_wire_itself_...)
        fed.run_to_completion("site_a", "site_b", timeout=400)
    return fed


def test_rounds_ran_and_the_global_encoder_changed(finished):
    rounds = finished.rounds()
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["accepted"] == 2 and r["aggregated"] for r in rounds)
    status = json.loads((finished.state_dir / "status.json").read_text())
    assert status["status"] == "completed"
    digests = [status["info"]["initial_digest"]] + [r["global_digest"] for r in rounds]
    assert len(set(digests)) == 3  # changed in every round

    pretrained = load_encoder("tiny").state_dict()
    trained = load_encoder(rounds[-1]["checkpoint"]).state_dict()
    changed = [k for k in pretrained if not torch.equal(pretrained[k], trained[k])]
    assert len(changed) > 10
    result = json.loads((finished.root / "result.json").read_text())
    assert result["run"]["status"] == "finished:completed"


def test_without_a_terminal_coordinator_and_sites_log_one_line_per_round(finished):
    """Their output goes to files here, as under a service manager: every round shows as it ends."""
    coordinator = (finished.root / "coordinator.log").read_text()
    assert [line.count("round 1/2 done: 2/2 sites accepted, 0 failed, 0 rejected") for line in
            coordinator.splitlines() if "round 1/2 done" in line] == [1]
    assert coordinator.index("round 1/2 done") < coordinator.index("round 2/2 done") < coordinator.index("per site")
    for site in ("site_a", "site_b"):
        text = (finished.root / f"{site}.log").read_text()
        assert f"site {site}: round 1 done: serves its" in text and f"site {site}: round 2 done" in text


def test_heads_live_in_each_sites_state_dir_and_changed(finished):
    for site, tasks in (("site_a", ["label"]), ("site_b", ["score", "tags"])):
        heads = finished.root / site / "state" / "federated" / "heads"
        for task in tasks:
            assert (heads / f"{task}.safetensors").exists() and (heads / f"{task}.json").exists()
        history = finished.site_history(site)
        assert [h["round"] for h in history] == [1, 2]
        assert history[0]["heads"] != history[1]["heads"]
    assert not (finished.root / "site_b" / "state" / "federated" / "heads" / "label.json").exists()


def test_metrics_arrived_per_site_and_task(finished):
    rounds = finished.rounds()
    for r in rounds:
        assert set(r["sites"]) == {"site_a", "site_b"}
        assert r["metrics"]["train_loss"] > 0 and 0 <= r["metrics"]["score"] <= 1
        report_a = r["sites"]["site_a"]["report"]
        assert "val/label/accuracy" in report_a and "baseline/label/macro_f1" in report_a
        assert "val/score/r2" in r["sites"]["site_b"]["report"]
        assert r["bytes_down"] > 0 and r["bytes_up"] > 0
        assert set(r["update_cosine"]) == {"site_a", "site_b"}
    final_eval = rounds[-1]["evaluate"]
    assert set(final_eval["sites"]) == {"site_a", "site_b"}
    for r in rounds:  # a site never serves a model worse than its local-only baseline
        for entry in r["sites"].values():
            assert entry["report"]["site_model"] in ("federated", "baseline")
            assert entry["metrics"]["score_site"] >= entry["metrics"]["score"] - 1e-9
    site_model = json.loads((finished.root / "site_a" / "state" / "federated" / "site_model.json").read_text())
    assert site_model["model"] in ("federated", "baseline") and site_model["round"] == 2
    # per-round start-up at the site (shim process start -> training) is measured and reported
    assert all(r["sites"][s]["metrics"]["startup_seconds"] > 0 for r in rounds for s in r["sites"])


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_privacy_no_head_tensor_and_no_input_text_crosses_the_wire(finished):
    entries = read_wire_log(finished.state_dir / "wire_log.jsonl")
    assert {(e["direction"], e["message_type"]) for e in entries} == {
        ("down", "train"), ("up", "train"), ("down", "evaluate"), ("up", "evaluate")}
    assert sum(e["direction"] == "up" for e in entries) == 6  # 2 sites x (2 train + 1 evaluate)

    encoder_names = {n for n, _ in load_encoder("tiny").named_parameters()}
    head_names = set()
    for site in ("site_a", "site_b"):
        for meta in (finished.root / site / "state" / "federated" / "heads").glob("*.safetensors"):
            from safetensors import safe_open

            with safe_open(meta, "pt") as f:
                head_names |= {f"{meta.stem}.{k}" for k in f.keys()} | set(f.keys())
    assert head_names
    for entry in entries:
        for record in entry.get("arrays", {}).values():
            assert set(record) <= encoder_names, set(record) - encoder_names
            assert not set(record) & head_names

    texts = site_texts(finished, "site_a", "site_b")
    wire_strings = list(_strings(entries))
    dump = "\n".join(wire_strings)
    leaked = [t for t in texts if t in dump]
    assert not leaked, leaked[:3]
    # and no cell of the data travels on its own either (labels are names of classes: allowed in reports)
    assert not set(texts) & set(wire_strings)


def head_tensor_names(fed: Federation, *sites: str) -> set[str]:
    """Each head tensor's full name (``task.key``) as the sites store them."""
    from safetensors import safe_open

    names = set()
    for site in sites:
        for path in (fed.root / site / "state" / "federated" / "heads").glob("*.safetensors"):
            with safe_open(path, "pt") as f:
                names |= {f"{path.stem}.{k}" for k in f.keys()}
    return names


def site_texts(fed: Federation, *sites: str) -> list[str]:
    texts = []
    for site in sites:
        with (fed.root / site / "data.csv").open() as fh:
            texts += [row["text"] for row in csv.DictReader(fh)]
    return texts


def test_the_wire_itself_carries_encoder_tensors_but_no_head_and_no_text(finished):
    """tcpdump on loopback during the plain-gRPC federation: the encoder's tensor names are there
    (the capture sees the traffic), no head tensor name and no input text is."""
    require_tcpdump()
    wire = b"".join(tcp_streams(finished.root / "fleet.pcap").values())
    assert len(wire) > 100_000
    encoder_names = [n for n, _ in load_encoder("tiny").named_parameters()]
    seen = [n for n in encoder_names if n.encode() in wire]
    assert len(seen) >= len(encoder_names) // 2, seen
    heads = head_tensor_names(finished, "site_a", "site_b")
    assert heads and not [n for n in heads if n.encode() in wire]
    texts = site_texts(finished, "site_a", "site_b")
    assert texts and not [t for t in texts if t.encode() in wire]


def test_late_joiner_starts_from_the_current_global_encoder(tmp_path):
    fed = Federation(tmp_path)
    fed.add_site("early", types=("classification",))
    fed.add_site("late", types=("regression",), seed=2)
    fed.write_config(rounds=20, min_sites=1, final_evaluate=False)
    try:
        fed.start_site("early")
        coordinator = fed.start_coordinator()
        fed.wait_for_round(1, timeout=240)
        fed.start_site("late")

        def late_took_part() -> int | None:  # however long the late site takes to start
            assert coordinator.poll() is None, fed.log("coordinator")
            history = fed.site_history("late")
            return history[0]["round"] if history else None

        first = wait_until(late_took_part, 300, lambda: fed.log("late"))
        fed.wait_for_round(first, timeout=120)
        assert interrupt_and_check_exit(coordinator, signal.SIGINT) == 130  # enough rounds: Ctrl-C
    finally:
        fed.stop_all()
    rounds = fed.rounds()
    assert set(rounds[0]["sites"]) == {"early"}
    late = fed.site_history("late")
    assert first >= 2 and "late" in rounds[first - 1]["sites"]
    # it received exactly the global encoder the coordinator held after the previous round
    assert late[0]["received"] == rounds[first - 2]["global_digest"]


def test_one_process_serves_several_sites_each_with_its_own_state(tmp_path):
    """`fedtl site --config a --config b --config c`: three sites, one process, each a full participant;
    the coordinator keeps at most two of them working at once (``sites_in_flight``), as for co-hosted sites."""
    fed = Federation(tmp_path)
    names = ("host_a", "host_b", "host_c")
    for i, name in enumerate(names):
        fed.add_site(name, types=("classification",) if i % 2 == 0 else ("regression",), seed=i)
    fed.write_config(rounds=2, min_sites=3, min_available_sites=3, final_evaluate=False, sites_in_flight=2)
    try:
        host = fed.start_sites("host", *names)
        fed.start_coordinator()
        assert fed.wait_coordinator(400) == 0, fed.log("coordinator") + fed.log("host")
        assert pids_matching(" site ", str(tmp_path / "host_b" / "site.yaml")) == [host.pid], "one process for all"
        assert interrupt_and_check_exit(host, signal.SIGTERM) == 0  # and every site's SuperNode went with it
    finally:
        fed.stop_all()
    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(set(r["sites"]) == set(names) for r in rounds)
    for name in names:  # each site kept its own heads and history in its own state folder
        assert [h["round"] for h in fed.site_history(name)] == [1, 2]
        assert list((tmp_path / name / "state").rglob("*.safetensors")), f"{name} saved no heads"


def test_a_site_killed_mid_round_does_not_stop_the_round(tmp_path):
    fed = Federation(tmp_path)
    fed.add_site("steady", types=("classification",))
    fed.add_site("doomed", types=("classification",), seed=3)
    # both sites must be connected before round 1 starts; one answer is enough to aggregate. The
    # dead site is noticed at round_timeout or when the SuperLink misses two of its heartbeats
    # (~60 s), so the timeout must leave the steady site time to answer on a loaded 2-core
    # machine (its first round starts a ClientApp process and a baseline)
    fed.write_config(rounds=1, min_sites=1, min_available_sites=2, round_timeout=60, final_evaluate=False)
    never = tmp_path / "never-released"
    try:
        fed.start_site("steady")
        fed.start_site("doomed", env={"FEDTL_INJECT_FAULT": f"hold:1:{never}"})
        fed.start_coordinator()
        fed.wait_for_log(fed.root / "doomed.log", "holding round 1", timeout=240)  # it is mid-round now
        doomed_marker = str(fed.root / "doomed")
        assert pids_matching("flower-supernode", doomed_marker)
        fed.kill("doomed")
        assert fed.wait_coordinator(300) == 0, fed.log("coordinator")
        wait_until(lambda: not pids_matching("flower-supernode", doomed_marker), 15,
                   "the killed site's SuperNode outlived it")
    finally:
        fed.stop_all()
    [first] = fed.rounds()
    assert set(first["sites"]) == {"steady"} and first["aggregated"]
    assert first["sampled"] == 2 and len(first["failed"]) == 1, first  # the doomed site, once
    assert fed.site_history("doomed") == []


def test_mlflow_run_holds_every_round_artifacts_and_a_registered_model(finished):
    from mlflow import MlflowClient

    client = MlflowClient(finished.tracking_uri)
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["fedtl.status"] == "completed"
    # MLflow's UI opens the model-training views for this experiment, and the run says what it is
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name.startswith("test 20")  # federation name + start time
    assert run.data.params["encoder"] == "tiny" and run.data.params["strategy.name"] == "fedexp"
    assert "version.flwr" in run.data.params and run.data.tags["fedtl.sites"] == "site_a,site_b"
    steps = lambda key: [m.step for m in client.get_metric_history(run.info.run_id, key)]  # noqa: E731
    for key in ("federation/train_loss_mean", "federation/sites_answered", "federation/bytes_up",
                "federation/round_seconds", "federation/aggregation_seconds", "site/site_a/update_norm",
                "site/site_a/label/val_macro_f1", "site/site_b/score/val_r2", "site/site_b/tags/train_loss",
                "site/site_a/label/transfer_gain"):
        assert steps(key) == [1, 2], key
    assert steps("site/site_a/label/baseline_macro_f1") == [1]
    assert steps("site/site_b/peak_memory_mb") == [1, 2]  # each site's resources, from its report
    assert run.data.metrics["site/site_a/peak_memory_mb"] > 50
    # MLflow's system metrics of the coordinator's machine, sampled every second here
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    assert steps("evaluate/site_b/score/r2") == [2]

    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "plots", "interference", "encoder"} <= top
    encoder_files = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "encoder/round-0002")}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= encoder_files
    # the Hugging Face folder stays a plain artifact of the run
    local = client.download_artifacts(run.info.run_id, "encoder/round-0002", str(finished.root / "dl"))
    assert load_encoder(local).hidden_size == 32
    # the final encoder is an MLflow LoggedModel of the run at step 2, registered with its provenance
    [output] = client.get_run(run.info.run_id).outputs.model_outputs
    assert output.step == 2
    model = client.get_logged_model(output.model_id)
    assert model.name == "global-encoder" and model.source_run_id == run.info.run_id
    [version] = client.search_model_versions("name='test-encoder'")
    assert version.run_id == run.info.run_id and version.source == f"models:/{model.model_id}"
    assert run.data.tags["fedtl.registered_model"] == f"test-encoder/{version.version}"
    tags = version.tags
    assert tags["fedtl.sites"] == "site_a,site_b" and tags["fedtl.round"] == "2" and tags["fedtl.federation"] == "test"
    assert tags["fedtl.update_mode"] and tags["fedtl.digest"] == finished.rounds()[-1]["global_digest"]
    assert client.get_model_version_by_alias("test-encoder", "test").version == version.version


def _all_files(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _all_files(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_a_sites_own_mlflow_gets_its_heads_and_the_coordinators_store_never_does(finished):
    """site_a logs its served model (heads included) to its own store; site_b has no store; the
    coordinator's run and models hold no head file and no site's run."""
    from mlflow import MlflowClient

    own = MlflowClient(f"sqlite:///{finished.root / 'site_a' / 'own-mlflow.db'}")
    [version] = own.search_model_versions("name='site-a-model'")
    folder = Path(own.get_logged_model(version.source.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    assert list((folder / "artifacts" / "site_model").glob("part-*/heads/label.safetensors"))  # a part per encoder
    assert not (finished.root / "site_b" / "own-mlflow.db").exists()

    coordinator = MlflowClient(finished.tracking_uri)
    exp = coordinator.get_experiment_by_name("tests")
    [run] = coordinator.search_runs([exp.experiment_id])
    files = _all_files(coordinator, run.info.run_id)
    for model in coordinator.search_logged_models([exp.experiment_id]):
        files += [str(p) for p in Path(model.artifact_location.removeprefix("file://")).rglob("*")]
    assert files and not [f for f in files if "heads" in f or f.endswith(("label.safetensors", "score.safetensors",
                                                                             "tags.safetensors"))]
    assert coordinator.get_experiment_by_name("fedtl-site") is None


def test_the_registered_encoder_loads_as_a_pyfunc_model_with_the_pulled_folders_embeddings(finished):
    """MLflow users load ``models:/<name>/<version>``; it must embed as the Hugging Face folder does
    (mean-pooled last hidden states), to float32 rounding (1e-5)."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from transformers import AutoModel, AutoTokenizer

    texts = ["the nurse was kind", "delivery was late again and nobody called", ""]
    with _use_tracking_uri(finished.tracking_uri):
        model = mlflow.pyfunc.load_model("models:/test-encoder@test")
    assert model.metadata.signature.inputs.input_names() == ["text"]
    embedded = model.predict(pd.DataFrame({"text": texts}))
    folder = finished.rounds()[-1]["checkpoint"]
    tokenizer, backbone = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        states = backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = ((states * mask).sum(1) / mask.sum(1).clamp(min=1e-6)).numpy()
    assert embedded.shape == (3, 32) and embedded.dtype == "float32"
    assert abs(embedded - expected).max() < 1e-5
    assert {k: str(v) for k, v in MlflowClient(finished.tracking_uri).get_registered_model("test-encoder").aliases.items()} \
        == {"test": "1"}


def test_mlflow_models_serve_answers_with_the_registered_encoder(finished, tmp_path):
    """``mlflow models serve -m models:/test-encoder/1 --env-manager local``, the real server process."""
    import requests

    from fedtl.shared.processes import free_port, start, stop, tool, wait_for_port

    port = free_port()
    # as in an activated environment: MLflow starts uvicorn from PATH
    env = dict(os.environ, MLFLOW_TRACKING_URI=finished.tracking_uri,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    server = start([tool("mlflow"), "models", "serve", "-m", "models:/test-encoder/1", "--env-manager", "local",
                    "--host", "127.0.0.1", "--port", str(port)], tmp_path / "serve.log", env=env)
    try:
        wait_for_port("127.0.0.1", port, 180, server, "mlflow models serve", tmp_path / "serve.log")
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                               json={"dataframe_split": {"columns": ["text"], "data": [["kind staff"], ["late"]]}})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert len(predictions) == 2 and len(predictions[0]) == 32
        bad = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60, json={"dataframe_split": {
            "columns": ["wrong"], "data": [["x"]]}})
        assert bad.status_code == 400  # the signature names the column it needs
    finally:
        stop(server)


def test_a_nan_update_is_rejected_and_logged_and_the_round_goes_on(tmp_path):
    fed = Federation(tmp_path)
    fed.add_site("honest", types=("classification",))
    fed.add_site("broken", types=("classification",), seed=4)
    fed.write_config(rounds=1, min_sites=1, min_available_sites=2, final_evaluate=False)
    fed.run_to_completion("honest", "broken", env={"broken": {"FEDTL_INJECT_FAULT": "nan_update"}})
    [record] = fed.rounds()
    assert record["accepted"] == 1 and set(record["sites"]) == {"honest"} and record["aggregated"]
    [rejected] = record["rejected"]
    assert rejected["site"] == "broken"
    assert "NaN" in rejected["reason"] and "tensor" in rejected["reason"], rejected
    assert "rejected the update of broken" in (fed.state_dir / "serverapp.log").read_text()
    trained = load_encoder(record["checkpoint"]).state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())


def test_site_rejoins_a_restarted_coordinator_which_resumes_from_its_checkpoint(tmp_path):
    from mlflow import MlflowClient

    fed = Federation(tmp_path)
    fed.add_site("solo", types=("classification",))
    fed.write_config(rounds=1, min_sites=1, final_evaluate=False)
    try:
        fed.start_site("solo")
        fed.start_coordinator()
        assert fed.wait_coordinator(300) == 0, fed.log("coordinator")
        first = fed.rounds()[0]
        fed.write_config(rounds=2, min_sites=1, final_evaluate=False)
        fed.start_coordinator("--resume")  # same ports: the site's daemon reconnects by itself
        assert fed.wait_coordinator(400) == 0, fed.log("coordinator")
        assert fed.procs["solo"].poll() is None  # the site daemon kept running across both runs
    finally:
        fed.stop_all()
    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == [1, 2]
    history = fed.site_history("solo")
    assert [h["round"] for h in history] == [1, 2] and history[0]["run_id"] != history[1]["run_id"]
    assert history[1]["received"] == first["global_digest"]  # resumed from round 1's encoder
    client = MlflowClient(fed.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1  # the resumed federation continues its MLflow run
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "federation/round_seconds")]
    assert steps == [1, 2]




def forked_names(root: int) -> set[str]:
    """Names (comm) of the processes below ``root`` that the site's fork server forked."""
    names = set()
    for pid in tree(root):
        try:
            if b"fedtl.client.fork_server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return names


def test_ctrl_c_stops_the_coordinator_and_sigterm_stops_a_site(tmp_path):
    fed = Federation(tmp_path)
    fed.add_site("solo", types=("classification",))
    fed.write_config(rounds=20, min_sites=1, final_evaluate=False)
    try:
        site = fed.start_site("solo")
        coordinator = fed.start_coordinator()
        fed.wait_for_round(1, timeout=240)
        # Ctrl-C mid-federation: the coordinator, its SuperLink, SuperExec and ServerApp are
        # gone within 10 s
        assert interrupt_and_check_exit(coordinator, signal.SIGINT) == 130
        assert not pids_matching("flower-superlink", f"127.0.0.1:{fed.fleet_port}")
        assert len(fed.rounds()) < 20
        # SIGTERM (systemd, kill) as soon as the SuperLink is up: the same clean, quick stop
        coordinator = fed.start_coordinator()
        wait_until(lambda: pids_matching("flower-superlink", f"127.0.0.1:{fed.fleet_port}"), 60,
                   "the restarted coordinator started no SuperLink")
        assert interrupt_and_check_exit(coordinator, signal.SIGTERM) == 130
        assert not pids_matching("flower-superlink", f"127.0.0.1:{fed.fleet_port}")
        # the site's SuperNode and SuperExec were forked from its fork server (Flower's own code, warm)
        wait_until(lambda: {"flower-supernod", "flower-superexe"} <= forked_names(site.pid), 60,
                   lambda: f"forked by the site's fork server: {forked_names(site.pid)}")
        site_tree = tree(site.pid)
        # the site daemon: SIGTERM stops it, its SuperNode and that SuperNode's SuperExec
        assert interrupt_and_check_exit(site, signal.SIGTERM) == 0
        assert not pids_matching("flower-", str(fed.root / "solo")), "the site's SuperNode outlived it"
        wait_until(lambda: not [p for p, t in site_tree.items() if alive(p, t)], 10, "the site left processes")
        assert "stopped" in fed.log("solo")
    finally:
        fed.stop_all()


def test_a_second_ctrl_c_kills_at_once(tmp_path):
    fed = Federation(tmp_path)
    fed.add_site("solo", types=("classification",))
    fed.write_config(rounds=5, min_sites=1, final_evaluate=False)
    try:
        fed.start_site("solo", env={"FEDTL_INJECT_FAULT": f"hold:1:{tmp_path / 'never'}"})
        # the clean stop hangs (until a file that never appears exists): without that, a quick
        # clean stop could finish before the second Ctrl-C arrives, and the test would race it
        coordinator = fed.start_coordinator(env={"FEDTL_INJECT_FAULT": f"hold_stop:{tmp_path / 'never'}"})
        fed.wait_for_log(fed.root / "solo.log", "holding round 1", timeout=240)
        members = tree(coordinator.pid)
        os.kill(coordinator.pid, signal.SIGINT)
        fed.wait_for_log(fed.root / "coordinator.log", "holding the stop", timeout=10)
        assert coordinator.poll() is None, "the injected hang did not hold the stop"
        os.kill(coordinator.pid, signal.SIGINT)
        assert coordinator.wait(timeout=5) == 130
        assert "second interrupt" in fed.log("coordinator")
        wait_until(lambda: not [p for p, t in members.items() if alive(p, t)], 5, "processes left")
    finally:
        fed.stop_all()


def test_resume_after_sigkill_mid_round_logs_every_round_once_with_the_saved_moments(tmp_path):
    """SIGKILL the coordinator during round 3 of 4, resume: same MLflow run, steps 1..4 once each,
    and FedAdam's moments are those saved with round 2."""
    from mlflow import MlflowClient

    from fedtl.server.resume import load_resume_point
    from fedtl.shared.records import digest

    fed = Federation(tmp_path)
    fed.add_site("solo", types=("classification",))
    fed.write_config(rounds=4, min_sites=1, final_evaluate=False, strategy={"name": "fedadam", "eta": 0.001})
    release = tmp_path / "release-round-3"
    try:
        fed.start_site("solo", env={"FEDTL_INJECT_FAULT": f"hold:3:{release}"})
        coordinator = fed.start_coordinator()
        fed.wait_for_log(fed.root / "solo.log", "holding round 3", timeout=300)  # mid-round 3
        members = tree(coordinator.pid)
        os.kill(coordinator.pid, signal.SIGKILL)  # a crash: no clean shutdown of anything
        coordinator.wait(timeout=10)
        wait_until(lambda: not [p for p, t in members.items() if alive(p, t)], 30,
                   "the killed coordinator's SuperLink and ServerApp did not go away")
        saved = load_resume_point(fed.state_dir)
        assert saved.round == 2 and any(k.startswith("v_t/") for k in saved.strategy)
        run_id = json.loads((fed.state_dir / "mlflow_run.json").read_text())["run_id"]
        release.touch()
        fed.start_coordinator("--resume")
        assert fed.wait_coordinator(400) == 0, fed.log("coordinator")
    finally:
        fed.stop_all()
    status = json.loads((fed.state_dir / "status.json").read_text())
    assert status["info"]["start_round"] == 3 and status["info"]["resumed_strategy_digest"] == digest(saved.strategy)
    assert [r["round"] for r in fed.rounds()] == [1, 2, 3, 4]
    client = MlflowClient(fed.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in ("federation/round_seconds", "federation/bytes_up", "site/solo/label/val_macro_f1",
                "site/solo/update_norm"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3, 4], key
    assert [m.step for m in client.get_metric_history(run_id, "site/solo/label/baseline_macro_f1")] == [1]


@pytest.mark.parametrize("personalization", [{"method": "similarity", "similarity_temperature": 0.1},
                                             {"method": "ditto", "ditto_lambda": 0.1}])
def test_personalized_federations_serve_each_site_its_own_model(tmp_path, personalization):
    """3 sites, 2 rounds on real SuperNodes: each site serves its personalized model."""
    from safetensors.numpy import load_file

    fed = Federation(tmp_path)
    sites = {"north": ("classification",), "south": ("regression",), "east": ("multilabel",)}
    for i, (name, types) in enumerate(sites.items()):
        fed.add_site(name, types=types, seed=10 + i, baseline="probe")  # the personal model, not a local one
    fed.write_config(rounds=2, min_sites=3, final_evaluate=False, update_mode="last:1",
                     personalization=personalization)
    fed.run_to_completion(*sites, timeout=400)
    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == [1, 2] and all(r["accepted"] == 3 for r in rounds)
    served = {}
    for name in sites:
        info = json.loads((fed.root / name / "state" / "federated" / "site_model.json").read_text())
        assert info["round"] == 2
        if info["model"] == "federated":
            served[name] = load_file(info["parts"][0]["encoder_tensors"])
    if personalization["method"] == "similarity":
        mixing = rounds[0]["mixing"]
        assert set(mixing) == set(sites) and all(abs(sum(row.values()) - 1) < 1e-9 for row in mixing.values())
        # round 2: every site received its own mixture, none the plain global encoder
        received = {name: fed.site_history(name)[1]["received"] for name in sites}
        assert len(set(received.values())) == 3 and rounds[0]["global_digest"] not in received.values()
    else:
        for name in sites:
            info = json.loads((fed.root / name / "state" / "federated" / "site_model.json").read_text())
            assert info["personalized"] and "personal" in info["parts"][0]["encoder_tensors"]
            assert (fed.root / name / "state" / "federated" / "personal" / "heads").is_dir()
    # the personalized models differ from site to site
    tensors = list(served.values())
    if len(tensors) > 1:
        name = sorted(tensors[0])[0]
        assert not np.array_equal(tensors[0][name], tensors[1][name])

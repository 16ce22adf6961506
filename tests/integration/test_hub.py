"""The coordinator's hub (protos/fedtl/v1/hub.proto) on a real TLS federation: status, rounds, encoder."""

from __future__ import annotations

import hashlib
import json
import threading

import grpc
import pytest
from typer.testing import CliRunner

from fedtl.cli.main import app
from fedtl.shared.hub_client import HubClient, HubError
from fedtl.shared.safe_paths import MARKER, made_by
from fedtl.v1 import hub_pb2
from tests.integration.harness import Federation
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
TOKEN = "hub-token-for-tests-0123456789"
State = hub_pb2.Status


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_tensors(folder, other) -> None:
    from safetensors.torch import load_file

    ours, theirs = load_file(folder / "model.safetensors"), load_file(other / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    assert all(ours[name].equal(theirs[name]) for name in ours)


def test_hub_reports_status_rounds_and_serves_the_encoder(tmp_path):
    certs = tmp_path / "certs"
    assert CliRunner().invoke(app, ["certs", "--out", str(certs), "--host", "127.0.0.1"]).exit_code == 0
    fed = Federation(tmp_path)
    fed.certs = certs
    for name in ("north", "south"):
        fed.add_site(name, types=("classification",))
    hub_address = f"127.0.0.1:{fed.hub_port}"
    # the coordinator's encoder is a folder of its own: the sites warm-start from the hub instead
    from fedtl.shared.encoders import load_encoder

    base = load_encoder("tiny", seed=7)
    base.backbone.save_pretrained(tmp_path / "coordinator-encoder")
    base.tokenizer.save_pretrained(tmp_path / "coordinator-encoder")
    fed.write_config(rounds=3, min_sites=2, final_evaluate=False, encoder=str(tmp_path / "coordinator-encoder"),
                     hub={"address": hub_address, "token": TOKEN, "linger": 20})
    client = HubClient(hub_address, certs / "ca.crt", TOKEN, timeout=5)
    states: list[int] = []
    watched: list[int] = []
    try:
        fed.start_coordinator()  # before the sites: the federation is waiting for them

        def answered():
            try:
                return client.status()
            except HubError:
                return None

        first = wait_until(answered, 120, lambda: fed.log("coordinator"))
        assert first.state == State.WAITING and first.current_round == 0 and first.rounds_total == 3
        assert first.federation == "test" and first.update_mode == "full"

        watcher = threading.Thread(target=lambda: watched.extend(r.round for r in client.watch(1)))
        watcher.start()
        warm = ["--root-certificates", str(certs / "ca.crt"), "--warm-start", "--hub", hub_address]
        for name in ("north", "south"):
            fed.start_site(name, env={"FEDTL_HUB_TOKEN": TOKEN}, tls=warm)
        while watcher.is_alive():  # the stream ends when the federation does
            states.append(client.status().state)
            watcher.join(0.2)
        final = client.status()
        assert final.state == State.FINISHED and final.current_round == 3
        assert final.last_round.accepted == 2 and {s.site for s in final.last_round.sites} == {"north", "south"}
        assert final.mlflow_run_id and final.mlflow_tracking_uri == fed.tracking_uri
        assert [r.round for r in client.rounds()] == [1, 2, 3]

        # the encoder: byte-identical to the checkpoint, loadable, resumable, and refused kindly
        checkpoint = fed.state_dir / "checkpoints" / "round-0003"
        result = CliRunner().invoke(app, ["pull", "--coordinator", hub_address, "--out", str(tmp_path / "pulled"),
                                          "--root-certificates", str(certs / "ca.crt"), "--token", TOKEN])
        assert result.exit_code == 0, result.output
        # the model's files, without the marker each folder carries of the command that made it
        files = sorted(p.relative_to(checkpoint) for p in checkpoint.rglob("*") if p.is_file() and p.name != MARKER)
        assert files and files == sorted(p.relative_to(tmp_path / "pulled") for p in (tmp_path / "pulled").rglob("*")
                                         if p.is_file() and p.name != MARKER)
        assert made_by(tmp_path / "pulled") == "fedtl pull"
        for rel in files:
            assert sha256(tmp_path / "pulled" / rel) == sha256(checkpoint / rel), rel
        from transformers import AutoModel

        AutoModel.from_pretrained(tmp_path / "pulled")

        weights = (checkpoint / "model.safetensors").read_bytes()
        cut = len(weights) // 3
        resumed = list(client.chunks(3, "model.safetensors", cut))
        assert resumed[0].path == "model.safetensors" and resumed[0].offset == cut
        assert b"".join(c.data for c in resumed if c.path == "model.safetensors") == weights[cut:]
        assert all(len(c.data) <= 1 << 20 for c in resumed)
        assert resumed[0].sha256 == hashlib.sha256(weights).hexdigest() and resumed[0].file_size == len(weights)

        for request, code, says in (((99,), grpc.StatusCode.NOT_FOUND, "no checkpoint of round 99 (kept: round-"),
                                    ((3, "no-such-file", 0), grpc.StatusCode.INVALID_ARGUMENT, "'no-such-file' is not"),
                                    ((3, "model.safetensors", len(weights) + 1), grpc.StatusCode.OUT_OF_RANGE,
                                     "past the end of model.safetensors")):
            with pytest.raises(grpc.RpcError) as err:
                list(client.chunks(*request))
            assert err.value.code() == code and says in err.value.details(), err.value.details()
        for token in (None, "wrong-token-0123456789"):
            with pytest.raises(HubError, match="UNAUTHENTICATED"):
                HubClient(hub_address, certs / "ca.crt", token, timeout=5).status()
        with pytest.raises(HubError, match="UNAVAILABLE"):
            HubClient(hub_address, None, TOKEN, timeout=5).status()  # plain text to a TLS hub

        result = CliRunner().invoke(app, ["status", "--coordinator", hub_address, "--root-certificates",
                                          str(certs / "ca.crt"), "--token", TOKEN, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["state"] == "FINISHED"
        assert fed.wait_coordinator(120) == 0, fed.log("coordinator")
    finally:
        client.close()
        fed.stop_all()

    assert watched == [1, 2, 3]  # every round exactly once
    for name in ("north", "south"):  # warm start: each site pulled round 0 and trained from it, never switching
        pulled = tmp_path / name / "state" / "warm-start" / "round-0000"
        log = fed.log(name)
        assert "warm start from the federation's encoder of round 0" in log, log
        assert "switching from" not in log, log
        assert_same_tensors(pulled, tmp_path / "coordinator-encoder")
        kept = json.loads((tmp_path / name / "state" / "federated" / "site_model.json").read_text())
        assert kept["encoder_spec"] == str(pulled), kept
    assert states[0] in (State.WAITING, State.RUNNING) and State.RUNNING in states
    assert states == sorted(states)  # waiting -> running -> finished, never back
    assert "hub: fedtl status --coordinator 127.0.0.1:" in fed.log("coordinator").replace("\n", "")


def test_pulling_the_real_minilm_encoder_within_grpc_default_limits(tmp_path):
    """~90 MB of weights through default-sized gRPC messages: chunks of at most 1 MiB, checked by SHA-256."""
    import shutil

    from fedtl.server.hub import HubServicer, RunView, serve_hub, stop_hub
    from fedtl.shared.atomic import write_json_atomic
    from fedtl.shared.encoders import minilm_path

    checkpoint = tmp_path / "state" / "checkpoints" / "round-0001"
    shutil.copytree(minilm_path(), checkpoint)
    write_json_atomic(tmp_path / "state" / "checkpoints" / "latest.json", {"round": 1, "path": checkpoint.name})
    servicer = HubServicer(tmp_path / "state", "minilm", 1, "full", "minilm", RunView())
    server, port = serve_hub(servicer, "127.0.0.1:0")
    client = HubClient(f"127.0.0.1:{port}")
    try:
        sizes = []
        assert client.pull(tmp_path / "pulled", 0, lambda done, total: sizes.append((done, total))) == 1
    finally:
        client.close()
        stop_hub(server, servicer)
    total = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
    assert total > 80_000_000 and sizes[-1] == (total, total)
    for path in checkpoint.rglob("*"):
        if path.is_file():
            assert sha256(tmp_path / "pulled" / path.relative_to(checkpoint)) == sha256(path)
    from transformers import AutoModel

    AutoModel.from_pretrained(tmp_path / "pulled")

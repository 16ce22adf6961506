"""Update mode lora: config at the edge, only adapters on the wire, checkpoints that load, product averaging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedtl.server.lora_aggregation import product_mean
from fedtl.shared.federation_config import FederationConfig
from fedtl.shared.update_modes import is_adapter
from tests.unit.test_codec_rounds import federation


def test_a_target_that_matches_nothing_names_the_modules_there_are(tmp_path):
    with pytest.raises(ValueError, match=r"'qkv' matches no linear module.*attention.self.query.*intermediate.dense"):
        FederationConfig.model_validate({"encoder": "tiny", "update_mode": "lora", "state_dir": tmp_path,
                                         "lora": {"targets": ["query", "qkv"]}})
    with pytest.raises(ValueError, match="works with strategy fedavg"):
        FederationConfig.model_validate({"encoder": "tiny", "update_mode": "lora", "state_dir": tmp_path,
                                         "lora": {"aggregation": "product"}, "strategy": {"name": "fedadam"}})
    with pytest.raises(ValueError, match="set strategy.server_learning_rate to 1"):  # not a step silently dropped
        FederationConfig.model_validate({"encoder": "tiny", "update_mode": "lora", "state_dir": tmp_path,
                                         "lora": {"aggregation": "product"},
                                         "strategy": {"name": "fedavg", "server_learning_rate": 2.0}})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return federation(tmp_path_factory.mktemp("lora"), {"up": "none", "down": "none"}, rounds=2,
                      update_mode="lora", lora={"rank": 4, "alpha": 8, "targets": ["query", "value"]},
                      checkpoint_every=1)


def test_only_adapter_tensors_travel_both_ways(lora_run):
    run, workers, rounds = lora_run
    from fedtl.server.wire_log import read_wire_log

    entries = read_wire_log(run.state_dir / "wire_log.jsonl")
    names = {n for e in entries for record in e.get("arrays", {}).values() for n in record}
    assert names and all(is_adapter(n) for n in names)
    assert {e["direction"] for e in entries} == {"down", "up"}
    full = sum(p.numel() for p in workers[1].encoder.parameters() if True) * 4
    assert all(r["bytes_down"] / len(r["sites"]) <= full / 100 for r in rounds)
    assert all(w.adapters is not None and w.adapters.rank == 4 for w in workers.values())


def test_checkpoint_is_a_merged_encoder_and_a_peft_adapter_that_agree(lora_run):
    from peft import PeftModel
    from transformers import AutoModel

    from fedtl.shared.encoders import load_encoder

    run, _, _ = lora_run
    folder = run.state_dir / "checkpoints" / "round-0002"
    merged = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["r"] == 4
    base = load_encoder("tiny").backbone.eval()  # the pretrained encoder the adapters go on
    with_adapter = PeftModel.from_pretrained(base, folder / "adapter").eval()
    ids = torch.randint(5, 1000, (3, 12))
    with torch.no_grad():
        a = merged(input_ids=ids).last_hidden_state
        b = with_adapter(input_ids=ids).last_hidden_state
        plain = load_encoder("tiny").backbone.eval()(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, plain, atol=1e-4)  # the adapters trained: the checkpoint is not the pretrained one


def test_product_averaging_is_the_mean_change_where_factor_averaging_is_not():
    rng = np.random.default_rng(0)
    name_a, name_b = "m.q.lora_A.default.weight", "m.q.lora_B.default.weight"
    shared_a = rng.standard_normal((2, 6)).astype(np.float32)
    sites = {s: {name_a: shared_a, name_b: rng.standard_normal((5, 2)).astype(np.float32)} for s in "xy"}
    weights = {"x": 1.0, "y": 3.0}
    mean_change = sum(weights[s] / 4 * (m[name_b] @ m[name_a]) for s, m in sites.items())
    got = product_mean(sites, weights)
    np.testing.assert_allclose(got[name_b] @ got[name_a], mean_change, atol=1e-5)  # rank r fits: exact
    # different A and B: the average of the factors is not the average change; the product's rank-r
    # truncation is at least as close to it (Eckart-Young)
    sites = {s: {name_a: rng.standard_normal((2, 6)).astype(np.float32),
                 name_b: rng.standard_normal((5, 2)).astype(np.float32)} for s in "xy"}
    mean_change = sum(weights[s] / 4 * (m[name_b] @ m[name_a]) for s, m in sites.items())
    fa = sum(weights[s] / 4 * m[name_a] for s, m in sites.items())
    fb = sum(weights[s] / 4 * m[name_b] for s, m in sites.items())
    got = product_mean(sites, weights)
    err_product = np.linalg.norm(got[name_b] @ got[name_a] - mean_change)
    err_factors = np.linalg.norm(fb @ fa - mean_change)
    assert err_factors > 0.1 * np.linalg.norm(mean_change) and err_product < err_factors


def test_product_averaging_and_coded_links_run_a_federation(tmp_path):
    """Sites add the coordinator's very adapters (same seed): a coded downlink's first change applies."""
    run, workers, rounds = federation(tmp_path, {"up": "int8", "down": "int8"}, rounds=2, update_mode="lora",
                                      lora={"rank": 2, "aggregation": "product"})
    assert [(r["accepted"], r["aggregated"], r["failed"]) for r in rounds] == [(2, True, []), (2, True, [])]
    assert all(w.codecs.reference_digest == run._downlink.reference_digest for w in workers.values())


def test_adapters_train_at_the_sites_rate_times_lr_scale(lora_run):
    from fedtl.shared.protocol import RoundConfig

    _, workers, _ = lora_run
    worker = workers[1]
    base = worker.config.training.encoder_lr
    config = RoundConfig(update_mode="lora", encoder="tiny", lora_lr_scale=4.0)
    assert worker._training_config(config).encoder_lr == 4.0 * base
    assert worker._training_config(RoundConfig(update_mode="last:1", encoder="tiny", lora_lr_scale=4.0)).encoder_lr == base
    sent = RoundConfig.from_record(RoundConfig(update_mode="lora", encoder="tiny", lora_targets=("query",),
                                               lora_lr_scale=2.0).to_record())
    assert sent.lora_targets == ("query",) and sent.lora_lr_scale == 2.0

"""A real LoRA federation with int8 codecs both ways: SuperLink, 2 SuperNodes, 2 rounds, MLflow.

One federation serves every assertion: only adapter tensors cross the wire, the counted bytes
are the bytes of the encoded tensors, the merged checkpoint loads as a plain Hugging Face model
and differs from the pretrained encoder, and MLflow holds each site's encoded bytes.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from fedtl.server.wire_log import read_wire_log
from fedtl.shared.lora import LoraSettings
from fedtl.shared.update_modes import is_adapter
from tests.integration.harness import Federation

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def lora_int8(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("lora-int8"))
    fed.add_site("site_a", types=("classification",))
    fed.add_site("site_b", types=("regression",), seed=1)
    fed.write_config(rounds=2, min_sites=2, update_mode="lora", lora={"rank": 4, "alpha": 8},
                     codec={"up": "int8", "down": "int8"}, max_steps=4)
    fed.run_to_completion("site_a", "site_b", timeout=400)
    return fed


def serialized_size(shape: list[int], dtype: str) -> int:
    """Bytes of one array as Flower serialises it (numpy's .npy format: header + values)."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=dtype), allow_pickle=False)
    return buffer.tell()


def packed_size(tensors: dict[str, dict]) -> int:
    """Bytes of named tensors packed as fedtl sends them (shared/records.py): a JSON manifest and
    every tensor's values, each one uint8 array."""
    manifest = json.dumps([[n, np.dtype(a["dtype"]).str, a["shape"]] for n, a in tensors.items()]).encode()
    values = sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in tensors.values())
    return serialized_size([len(manifest)], "uint8") + serialized_size([values], "uint8")


def test_only_encoded_adapter_tensors_cross_the_wire_and_are_what_is_counted(lora_int8):
    rounds = lora_int8.rounds()
    assert [(r["round"], r["accepted"]) for r in rounds] == [(1, 2), (2, 2)]
    entries = read_wire_log(lora_int8.state_dir / "wire_log.jsonl")
    train = [e for e in entries if e["message_type"] == "train" and "arrays" in e]
    assert {e["direction"] for e in train} == {"down", "up"}
    for entry in train:
        names = list(entry["arrays"]["arrays"])
        assert names and all(is_adapter(n.split("#")[0]) for n in names), names[:3]
        assert {n.split("#")[1] for n in names} == {"q", "scale"}  # int8 values and their row scales
        assert {a["dtype"] for n, a in entry["arrays"]["arrays"].items() if n.endswith("#q")} == {"int8"}
    for record in rounds:
        for direction in ("down", "up"):
            entries_here = [e for e in train if e["round"] == record["round"] and e["direction"] == direction]
            logged = sum(packed_size(e["arrays"]["arrays"]) for e in entries_here)
            assert logged == sum(e["bytes"]["arrays"] for e in entries_here)
            assert record[f"bytes_{direction}"] == logged > 0
            assert logged == sum(s[f"bytes_{direction}"] for s in record["sites"].values())


def test_merged_checkpoint_loads_as_a_plain_encoder_and_moved(lora_int8):
    from transformers import AutoModel

    from fedtl.shared.encoders import load_encoder

    folder = lora_int8.rounds()[-1]["checkpoint"]
    merged = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    assert not [n for n, _ in merged.named_parameters() if "lora" in n]
    pretrained = dict(load_encoder("tiny").backbone.named_parameters())
    changed = [n for n, p in merged.named_parameters() if n in pretrained and not torch.equal(p, pretrained[n])]
    targets = LoraSettings().targets  # the fixture keeps the default targets
    assert changed and all(n.endswith(".weight") and any(f".{t}." in n for t in targets) for n in changed)
    assert {t for t in targets if any(f".{t}." in n for n in changed)} == set(targets)


def test_mlflow_logs_each_sites_encoded_bytes(lora_int8):
    from mlflow import MlflowClient

    client = MlflowClient(lora_int8.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    rounds = lora_int8.rounds()
    for site in ("site_a", "site_b"):
        for direction in ("bytes_up", "bytes_down"):
            history = client.get_metric_history(run.info.run_id, f"site/{site}/{direction}")
            assert [(m.step, m.value) for m in history] == [(r["round"], r["sites"][site][direction]) for r in rounds]
    assert run.data.params["codec.up"] == "int8" and run.data.params["update_mode"] == "lora"

import os

import pytest
import torch

from fedtl.client.head_store import HeadStore, HeadStoreError
from fedtl.shared import atomic
from fedtl.shared.config import TaskType
from fedtl.shared.heads import HeadSpec

SPEC = HeadSpec("sentiment", TaskType.classification, 8, labels=["neg", "pos"])


def test_save_and_reload_roundtrip(tmp_path):
    store = HeadStore(tmp_path)
    head = SPEC.build()
    store.save(SPEC, head.state_dict(), {"metrics": {"accuracy": 0.5}})
    spec, state, meta = store.load("sentiment")
    assert spec == SPEC and meta["metrics"] == {"accuracy": 0.5}
    for key, value in head.state_dict().items():
        assert torch.equal(state[key], value)
    assert store.load("other") is None


def test_crash_mid_write_keeps_the_previous_head(tmp_path, monkeypatch):
    store = HeadStore(tmp_path)
    first = SPEC.build()
    store.save(SPEC, first.state_dict())

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    second = SPEC.build()
    with pytest.raises(OSError, match="disk gone"):
        store.save(SPEC, second.state_dict())
    monkeypatch.undo()
    _, state, _ = store.load("sentiment")
    assert torch.equal(state["linear.weight"], first.state_dict()["linear.weight"])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temp files left behind


def test_mismatched_or_incomplete_files_are_detected(tmp_path):
    store = HeadStore(tmp_path)
    store.save(SPEC, SPEC.build().state_dict())
    weights = tmp_path / "sentiment.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(HeadStoreError, match="checksum"):
        store.load("sentiment")
    (tmp_path / "sentiment.json").unlink()
    with pytest.raises(HeadStoreError, match="incomplete"):
        store.load("sentiment")

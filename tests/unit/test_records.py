"""Packed tensor records: every named tensor in one Array plus a manifest, and back, exactly."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from fedtl.server.validation import check_update
from fedtl.server.wire_log import describe
from fedtl.shared.protocol import ARRAYS, METRICS, REPORT
from fedtl.shared.records import MANIFEST, PACKED, from_record, record_layout, record_nbytes, to_record


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "backbone.layer.0.weight": rng.standard_normal((5, 3)).astype(np.float32),
        "backbone.layer.0.weight#q": rng.integers(-128, 127, (5, 3), dtype=np.int8),  # odd sizes: no alignment
        "backbone.scale": np.float32(0.25).reshape(()),
        "backbone.idx": rng.integers(0, 10**9, 7, dtype=np.int64),
        "backbone.half": rng.standard_normal(3).astype(np.float16),
        "backbone.empty": np.zeros((0, 4), np.float32),
        "backbone.fortran": np.asfortranarray(rng.standard_normal((2, 3))),
    }


def metadata() -> Metadata:
    return Metadata(run_id=1, message_id="m", src_node_id=7, dst_node_id=0, reply_to_message_id="q",
                    group_id="1", created_at=0.0, ttl=60.0, message_type="train")


def test_round_trip_is_exact_in_names_order_dtypes_shapes_and_values():
    arrays = tensors()
    back = from_record(to_record(arrays))
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        np.testing.assert_array_equal(back[name], value)
        assert back[name].flags.writeable  # a copy the caller may change, not a view of the message


def test_a_record_holds_two_arrays_whatever_the_number_of_tensors():
    record = to_record(tensors())
    assert sorted(record) == sorted([MANIFEST, PACKED])
    assert record_nbytes(record) >= sum(a.nbytes for a in tensors().values())
    assert len(to_record({})) == 0 and from_record(to_record({})) == {}


def test_layout_names_every_tensor_without_unpacking_and_the_wire_log_shows_it():
    arrays = tensors()
    layout = record_layout(to_record(arrays))
    assert layout == {n: (a.shape, str(a.dtype)) for n, a in arrays.items()}
    msg = Message(metadata=metadata(), content=RecordDict({ARRAYS: to_record(arrays)}))
    logged = describe(msg)["arrays"][ARRAYS]
    assert set(logged) == set(arrays) and logged["backbone.idx"] == {"shape": [7], "dtype": "int64"}


def test_records_of_one_array_per_tensor_still_read():
    arrays = tensors()
    legacy = ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in arrays.items()})
    back = from_record(legacy)
    for name, value in arrays.items():
        np.testing.assert_array_equal(back[name], value)


def packed(manifest, blob: bytes) -> ArrayRecord:
    return ArrayRecord({MANIFEST: Array(np.frombuffer(json.dumps(manifest).encode(), np.uint8)),
                        PACKED: Array(np.frombuffer(blob, np.uint8))})


@pytest.mark.parametrize("record, needle", [
    (packed([["w", "<f4", [2]]], b"\0" * 4), "more bytes"),
    (packed([["w", "<f4", [2]]], b"\0" * 12), "beyond"),
    (packed([["w", "no-such-dtype", [2]]], b"\0" * 8), "manifest"),
    (packed([["w", "<f4"]], b"\0" * 8), "manifest"),
    (packed([["w", "|O", [1]]], b"\0" * 8), "manifest"),
    (packed([["w", "<f4", [-2]]], b"\0" * 8), "manifest"),
    (packed([["w", "<f4", [1]], ["w", "<f4", [1]]], b"\0" * 8), "twice"),
    (ArrayRecord({MANIFEST: Array(np.frombuffer(b"not json", np.uint8))}), "exactly"),
])
def test_a_malformed_packed_record_raises_a_clear_error(record, needle):
    with pytest.raises(ValueError, match=needle):
        from_record(record)


def test_the_coordinator_rejects_a_malformed_packed_update():
    content = RecordDict({ARRAYS: packed([["backbone.w", "<f4", [3, 2]]], b"\0" * 8),
                          METRICS: MetricRecord({"num-examples": 5}), REPORT: ConfigRecord({"site": "s1"})})
    verdict = check_update(Message(metadata=metadata(), content=content),
                           {"backbone.w": np.zeros((3, 2), np.float32)}, max_norm=None)
    assert verdict.kind == "rejected" and "malformed update" in verdict.reason


def test_a_round_config_survives_the_wire_with_every_field_set_and_typed():
    from dataclasses import fields

    from fedtl.shared.protocol import RoundConfig

    full = RoundConfig("lora", "minilm", encoder_seed=3, run_id=7, server_round=2, encoder_epochs=1, max_steps=4,
                       proximal_mu=0.1, personalization="ditto", ditto_lambda=0.5, num_rounds=9, up_codec="int8",
                       down_codec="fp16", base_digest="ab", lora_rank=8, lora_alpha=16.0, lora_dropout=0.1,
                       lora_targets=("query", "value"), lora_lr_scale=10.0, dp_clip=1.0, dp_noise=0.5)
    assert all(getattr(full, f.name) is not None for f in fields(RoundConfig))
    wire = dict(full.to_record())
    assert RoundConfig.from_record(wire) == full
    wire["encoder-seed"], wire["proximal-mu"] = 3.0, 1  # numbers cross as the other kind: cast back
    back = RoundConfig.from_record(wire)
    assert type(back.encoder_seed) is int and type(back.proximal_mu) is float
    with pytest.raises(ValueError, match="encoder"):
        RoundConfig.from_record({"update-mode": "full"})

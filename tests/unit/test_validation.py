import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from fedtl.server.validation import check_update
from fedtl.shared.protocol import ARRAYS, METRICS, REPORT
from fedtl.shared.records import record_nbytes, to_record

EXPECTED = {"backbone.w": np.zeros((3, 2), np.float32), "backbone.b": np.zeros(2, np.float32)}


def reply(arrays, num_examples=10, site="s1") -> Message:
    content = RecordDict({ARRAYS: to_record(arrays), METRICS: MetricRecord({"num-examples": num_examples}),
                          REPORT: ConfigRecord({"site": site})})
    metadata = Metadata(run_id=1, message_id="m", src_node_id=7, dst_node_id=0, reply_to_message_id="q",
                        group_id="1", created_at=0.0, ttl=60.0, message_type="train")
    return Message(metadata=metadata, content=content)


def good():
    return {"backbone.w": np.full((3, 2), 0.1, np.float32), "backbone.b": np.ones(2, np.float32)}


def test_a_good_update_is_accepted_with_its_norm():
    verdict = check_update(reply(good()), EXPECTED, max_norm=None)
    assert verdict.ok and verdict.kind == "accepted" and verdict.site == "s1"
    assert verdict.norm == pytest.approx(np.sqrt(6 * 0.01 + 2))


@pytest.mark.parametrize("mutate, needle", [
    (lambda a: a.update({"backbone.w": np.full((3, 2), np.nan, np.float32)}), "NaN or inf"),
    (lambda a: a.update({"backbone.b": np.array([1.0, np.inf], np.float32)}), "NaN or inf"),
    (lambda a: a.update({"backbone.w": np.zeros((2, 3), np.float32)}), "shape"),
    (lambda a: a.update({"backbone.w": np.zeros((3, 2), np.float64)}), "dtype"),
    (lambda a: a.update({"head.linear.weight": np.zeros(2, np.float32)}), "unexpected tensors"),
    (lambda a: a.pop("backbone.b"), "missing tensors"),
])
def test_bad_updates_are_rejected_with_a_reason(mutate, needle):
    arrays = good()
    mutate(arrays)
    verdict = check_update(reply(arrays), EXPECTED, max_norm=None)
    assert verdict.kind == "rejected" and needle in verdict.reason


def test_norm_bound_and_example_count():
    assert check_update(reply(good()), EXPECTED, max_norm=0.5).kind == "rejected"
    assert "num-examples" in check_update(reply(good(), num_examples=0), EXPECTED, None).reason


def test_record_nbytes_counts_serialised_arrays():
    payload = 6 * 4 + 2 * 4
    size = record_nbytes(to_record(good()))
    assert payload < size < payload + 2 * 200  # plus one small .npy header per tensor

"""Streaming aggregation: the same new global tensors as Flower's strategies given every reply at once."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM
from flwr.supercore.task_identity import TaskIdentity

from fedtl.server.aggregation import CountSketch, RoundAggregator, RunningSum, sketch_cosine
from fedtl.server.similarity import cosine_matrix
from fedtl.server.validation import Verdict
from fedtl.shared.protocol import ARRAYS, METRICS, SiteMetric
from fedtl.shared.records import from_record, tensor_record

SHAPES = {"w": (64, 48), "b": (48,), "big": (70_001,)}  # "big" spans several RunningSum chunks


def _arrays(rng, scale=1.0):
    return {n: (scale * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}


def _reply(to: Message, node: int, arrays, examples: int, loss: float) -> Message:
    content = RecordDict({ARRAYS: tensor_record(arrays),
                          METRICS: MetricRecord({SiteMetric.NUM_EXAMPLES: examples, SiteMetric.TRAIN_LOSS: loss})})
    reply = Message(content, reply_to=to)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


class _Grid:
    def get_node_ids(self):
        return [1, 2, 3, 4, 5]


def _round(strategy, global_arrays):
    """Configure a round (FedAvgM/FedAdam remember the arrays they sent) and return one sent message."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    return list(strategy.configure_train(1, tensor_record(global_arrays), ConfigRecord({}), _Grid()))[0]


@pytest.mark.parametrize("make", [lambda: FedAvg(), lambda: FedAvgM(server_momentum=0.9),
                                  lambda: FedAdam(eta=0.1)], ids=["fedavg", "fedavgm", "fedadam"])
def test_streaming_equals_the_strategy_given_every_reply(make):
    rng = np.random.default_rng(0)
    global_arrays = _arrays(rng)
    sites = [(node, _arrays(rng, 0.01), int(rng.integers(5, 50)), float(rng.random())) for node in range(1, 6)]

    reference = make()
    sent = _round(reference, global_arrays)
    full = [_reply(sent, n, {k: global_arrays[k] + d[k] for k in d}, ex, loss) for n, d, ex, loss in sites]
    expected_arrays, expected_metrics = reference.aggregate_train(1, full)

    streaming = make()
    sent = _round(streaming, global_arrays)
    agg = RoundAggregator(streaming, global_arrays, keep_models=False)
    for n, d, ex, loss in sites:
        msg = _reply(sent, n, d, ex, loss)
        verdict = Verdict(n, f"site{n}", "accepted", delta=from_record(msg.content[ARRAYS]))
        agg.add(msg, verdict, global_arrays)
        assert verdict.delta is None and ARRAYS not in msg.content.array_records  # released once folded in
    got, metrics = agg.aggregate(1)
    for name, value in from_record(expected_arrays).items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
    assert metrics[SiteMetric.TRAIN_LOSS] == pytest.approx(expected_metrics[SiteMetric.TRAIN_LOSS])
    assert len(agg.accepted) == 5 and agg.sum.weight == sum(ex for _, _, ex, _ in sites)


def test_sites_that_trained_from_their_own_base_count_with_that_base():
    rng = np.random.default_rng(1)
    global_arrays, personal = _arrays(rng), _arrays(rng)
    strategy = FedAvg()
    sent = _round(strategy, global_arrays)
    agg = RoundAggregator(strategy, global_arrays, keep_models=False)
    d1, d2 = _arrays(rng, 0.01), _arrays(rng, 0.01)
    agg.add(_reply(sent, 1, d1, 10, 0.0), Verdict(1, "a", "accepted", delta=d1), global_arrays)
    agg.add(_reply(sent, 2, d2, 30, 0.0), Verdict(2, "b", "accepted", delta=dict(d2)), personal)
    got, _ = agg.aggregate(1)
    for name in SHAPES:
        expected = (10 * (global_arrays[name] + d1[name]) + 30 * (personal[name] + d2[name])) / 40
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)


def test_running_sum_is_bit_identical_from_run_to_run_and_matches_float64():
    rng = np.random.default_rng(2)
    updates = [(_arrays(rng), float(w)) for w in (3, 7, 11)]
    results = []
    for _ in range(2):
        total = RunningSum()
        for arrays, w in updates:
            total.add({n: a.copy() for n, a in arrays.items()}, w)  # fresh buffers: other alignments
        results.append(total.mean())
    for name in SHAPES:
        assert results[0][name].tobytes() == results[1][name].tobytes()
        exact = sum(w * a[name].astype(np.float64) for a, w in updates) / 21
        np.testing.assert_allclose(results[0][name], exact, rtol=1e-5, atol=1e-6)


def test_sketched_cosine_is_exact_for_small_updates_and_close_for_large_ones():
    rng = np.random.default_rng(3)
    small = {s: {"x": rng.standard_normal(1000).astype(np.float32)} for s in "abc"}
    sketch = CountSketch()
    exact, est = cosine_matrix(small), sketch_cosine({s: sketch(d) for s, d in small.items()})
    for a in "abc":
        for b in "abc":
            assert est[a][b] == pytest.approx(exact[a][b], abs=1e-6)

    shared = rng.standard_normal(400_000).astype(np.float32)
    large = {s: {"x": (shared * k + rng.standard_normal(400_000)).astype(np.float32)}
             for s, k in (("a", 0.0), ("b", 1.0), ("c", 3.0))}
    exact, est = cosine_matrix(large), sketch_cosine({s: sketch(d) for s, d in large.items()})
    for a in "abc":
        for b in "abc":
            assert est[a][b] == pytest.approx(exact[a][b], abs=0.04)
    assert est["b"]["c"] > 0.5 > abs(est["a"]["b"])  # the structure the heatmap shows survives


def test_kept_models_give_exact_cosine_and_the_strategy_every_reply():
    rng = np.random.default_rng(4)
    global_arrays = _arrays(rng)
    strategy = FedAvg()
    sent = _round(strategy, global_arrays)
    agg = RoundAggregator(strategy, global_arrays, keep_models=True)
    deltas = {s: _arrays(rng, 0.01) for s in ("a", "b")}
    for node, (site, d) in enumerate(deltas.items(), start=1):
        agg.add(_reply(sent, node, d, 10, 0.0), Verdict(node, site, "accepted", delta=d), global_arrays)
    assert agg.cosine() == cosine_matrix(deltas)
    assert set(agg.models) == {"a", "b"}
    got, _ = agg.aggregate(1)
    for name in SHAPES:
        expected = global_arrays[name] + (deltas["a"][name] + deltas["b"][name]) / 2
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)

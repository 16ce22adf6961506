"""Streaming aggregation: the same new global tensors as Flower's strategies given every reply at once."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM
from flwr.supercore.task_identity import TaskIdentity

from fedtl.server.aggregation import CountSketch, Extrapolation, RoundAggregator, RunningSum, sketch_cosine
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


def _aggregated(strategy: dict, global_arrays, deltas):
    """The new global tensors and metrics of the configured strategy, given (delta, examples) replies."""
    from fedtl.server.strategies import build_strategy, extrapolation
    from fedtl.shared.federation_config import FederationConfig

    fed = FederationConfig(strategy=strategy)
    built = build_strategy(fed)
    sent = _round(built, global_arrays)
    agg = RoundAggregator(built, global_arrays, keep_models=False, extrapolation=extrapolation(fed))
    for node, (delta, examples) in enumerate(deltas, start=1):
        agg.add(_reply(sent, node, delta, examples, 0.0), Verdict(node, f"s{node}", "accepted", delta=dict(delta)),
                global_arrays)
    return agg.aggregate(1)


@pytest.mark.parametrize("strategy, step", [({"name": "fedavg"}, 1.0), ({"name": "fedavg", "server_learning_rate": 2.0}, 2.0),
                                            ({"name": "fedavgm", "server_momentum": 0.0, "server_learning_rate": 1.5},
                                             1.5)], ids=["fedavg", "fedavg-step-2", "fedavgm-no-momentum"])
def test_the_configured_strategy_steps_the_global_encoder_along_the_weighted_mean_update(strategy, step):
    """strategy.server_learning_rate: the new global is global + step x (weighted mean update)."""
    rng = np.random.default_rng(2)
    global_arrays = _arrays(rng)
    deltas = [(_arrays(rng, 0.01), 10), (_arrays(rng, 0.01), 30)]
    got, _ = _aggregated(strategy, global_arrays, deltas)
    for name in SHAPES:
        mean = (10 * deltas[0][0][name] + 30 * deltas[1][0][name]) / 40
        np.testing.assert_allclose(got[name], global_arrays[name] + step * mean, rtol=1e-5, atol=1e-6)


def _disjoint(rng, sites: int) -> list[dict[str, np.ndarray]]:
    """Updates of equal norm on disjoint coordinates: pairwise orthogonal, as sites with unrelated tasks."""
    whole = _arrays(rng, 0.01)
    parts = [{n: np.zeros_like(v) for n, v in whole.items()} for _ in range(sites)]
    for name, value in whole.items():
        flat = value.ravel()
        size = flat.size // sites
        for i, part in enumerate(parts):
            piece = part[name].ravel()
            piece[i * size:(i + 1) * size] = flat[:size]
    return parts


@pytest.mark.parametrize("sites, agree, scale, expected", [
    (4, False, 0.5, 2.0), (3, False, 0.5, 1.5), (8, False, 0.5, 3.0), (4, True, 0.5, 1.0),
    (2, False, 1.0, 2.0), (4, True, 1.0, 1.0)],
    ids=["4-orthogonal", "3-orthogonal", "8-orthogonal-capped", "4-identical", "2-orthogonal-sum", "4-identical-sum"])
def test_fedexp_steps_past_the_mean_as_far_as_the_updates_are_orthogonal(sites, agree, scale, expected):
    """fedexp: step max(1, scale x mean ||d_i||^2 / ||mean d||^2), capped (max_server_step: 3 here): K/2 for K
    orthogonal updates of equal norm (scale 1/2, the paper's) or K (scale 1: their sum), 1 for updates that
    agree; logged as the round's server_step."""
    rng = np.random.default_rng(3)
    global_arrays = _arrays(rng)
    updates = [_arrays(rng, 0.01)] * sites if agree else _disjoint(rng, sites)
    got, metrics = _aggregated({"name": "fedexp", "max_server_step": 3.0, "fedexp_scale": scale}, global_arrays,
                               [(u, 20) for u in updates])
    assert metrics["server_step"] == pytest.approx(expected, rel=1e-4)
    for name in SHAPES:
        mean = sum(u[name] for u in updates) / sites
        np.testing.assert_allclose(got[name], global_arrays[name] + expected * mean, rtol=1e-4, atol=1e-6)


def test_a_server_step_is_refused_where_the_strategy_would_ignore_it():
    from fedtl.shared.federation_config import FederationConfig

    with pytest.raises(ValueError, match="server_learning_rate is an option of strategy fedavg / fedavgm"):
        FederationConfig(strategy={"name": "median", "server_learning_rate": 2.0})
    with pytest.raises(ValueError, match="max_server_step is an option of strategy fedexp"):
        FederationConfig(strategy={"name": "fedavg", "max_server_step": 3.0})
    assert FederationConfig().strategy.name == "fedexp"  # the default (benchmarks/README.md)


def test_fedexp_takes_the_plain_mean_when_the_updates_carry_privacy_noise():
    from fedtl.server.strategies import extrapolation
    from fedtl.shared.federation_config import FederationConfig

    assert extrapolation(FederationConfig()) == Extrapolation(2.0)
    assert extrapolation(FederationConfig(privacy={"enabled": True})) is None
    assert extrapolation(FederationConfig(strategy={"name": "fedavg"})) is None


def test_strategies_that_do_the_same_with_the_updates_compare_as_one_rule():
    """guidance.py finds the default column by the rule a run's strategy applied: fedavg with a server
    step is FedAvgM without momentum; fedexp differs by its cap and its scale."""
    from fedtl.server.strategies import update_rule
    from fedtl.shared.federation_config import StrategyConfig

    assert update_rule(StrategyConfig(name="fedavg", server_learning_rate=2.0)) == update_rule(
        StrategyConfig(name="fedavgm", server_learning_rate=2.0, server_momentum=0.0))
    assert update_rule(StrategyConfig(name="fedavg")) != update_rule(StrategyConfig(name="fedavgm"))
    assert update_rule(StrategyConfig(name="fedexp")) != update_rule(StrategyConfig(name="fedexp", fedexp_scale=1.0))

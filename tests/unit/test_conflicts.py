"""Conflict-averse aggregation (PCGrad on the sites' updates): what it removes, and what it leaves alone."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg

from fedtl.server.aggregation import RoundAggregator
from fedtl.server.conflicts import project_conflicts
from fedtl.server.validation import Verdict
from tests.unit.test_aggregation import _reply, _round


def _flat(update):
    return np.concatenate([update[n].ravel() for n in sorted(update)]).astype(np.float64)


def test_a_conflicting_pair_is_projected_to_no_longer_conflict():
    a = {"w": np.array([1.0, 0.0], np.float32), "b": np.array([1.0], np.float32)}
    b = {"w": np.array([-1.0, 1.0], np.float32), "b": np.array([0.0], np.float32)}
    out = project_conflicts({"a": a, "b": b})
    for site, other in (("a", b), ("b", a)):
        assert _flat(out.deltas[site]) @ _flat(other) == pytest.approx(0.0, abs=1e-6)
    # a's component along b is gone: a - (<a,b>/|b|^2) b = (1,0,1) + 0.5 * (-1,1,0)
    np.testing.assert_allclose(_flat(out.deltas["a"]), [1.0, 0.5, 0.5])
    assert out.conflicting == out.pairs == 2
    assert out.deltas["a"]["w"].dtype == np.float32
    assert a["w"].tolist() == [1.0, 0.0]  # inputs untouched


def test_agreeing_or_orthogonal_updates_pass_unchanged():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(50).astype(np.float32)
    deltas = {"a": {"x": base}, "b": {"x": 2 * base}, "c": {"x": np.zeros(50, np.float32)}}
    out = project_conflicts(deltas)
    for s in deltas:
        np.testing.assert_array_equal(out.deltas[s]["x"], deltas[s]["x"])
    assert out.conflicting == 0 and out.norm_removed == 0.0


def test_tensor_scope_projects_only_the_tensor_that_conflicts():
    a = {"agree": np.array([1.0, 1.0], np.float32), "fight": np.array([1.0, 0.0], np.float32)}
    b = {"agree": np.array([3.0, 3.0], np.float32), "fight": np.array([-1.0, 0.1], np.float32)}
    whole = project_conflicts({"a": a, "b": b}, scope="update")  # the whole updates agree: nothing moves
    assert whole.conflicting == 0
    per_tensor = project_conflicts({"a": a, "b": b}, scope="tensor")
    np.testing.assert_array_equal(per_tensor.deltas["a"]["agree"], a["agree"])
    assert float(per_tensor.deltas["a"]["fight"] @ b["fight"]) == pytest.approx(0.0, abs=1e-6)
    assert per_tensor.conflicting == 2 and per_tensor.pairs == 4
    assert 0 < per_tensor.norm_removed < 1


def test_projection_is_reproducible_from_its_seed():
    rng = np.random.default_rng(3)
    deltas = {s: {"x": rng.standard_normal(30).astype(np.float32)} for s in "abcde"}
    first, again = project_conflicts(deltas, seed=7), project_conflicts(deltas, seed=7)
    for s in deltas:
        np.testing.assert_array_equal(first.deltas[s]["x"], again.deltas[s]["x"])
    assert first.conflicting > 0


def test_the_aggregator_averages_the_projected_updates_and_reports_it():
    global_arrays = {"w": np.zeros(3, np.float32)}
    deltas = {"a": {"w": np.array([1.0, 0.0, 0.0], np.float32)}, "b": {"w": np.array([-1.0, 1.0, 0.0], np.float32)}}
    strategy = FedAvg()
    sent = _round(strategy, global_arrays)
    agg = RoundAggregator(strategy, global_arrays, keep_models=False, conflicts="update")
    assert agg.keep_models  # projection needs every update at once
    for node, (site, d) in enumerate(deltas.items(), start=1):
        agg.add(_reply(sent, node, d, 10, 0.0), Verdict(node, site, "accepted", delta=d), global_arrays)
    got, metrics = agg.aggregate(1)
    expected = project_conflicts(deltas, seed=1).deltas
    np.testing.assert_allclose(got["w"], (expected["a"]["w"] + expected["b"]["w"]) / 2, atol=1e-6)
    assert not np.allclose(got["w"], (deltas["a"]["w"] + deltas["b"]["w"]) / 2)  # plain FedAvg would differ
    assert metrics["conflict_share"] == 1.0 and metrics["conflict_norm_removed"] > 0

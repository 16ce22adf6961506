"""The coordinator's round loop in-process: real strategies, validation and resume points,
a fake Grid whose sites drop, delay, fail or corrupt their replies. Milliseconds, not processes."""

from __future__ import annotations

import numpy as np
import pytest

from fedtl.harness.grid import LocalGrid
from fedtl.server.history import HistoryWriter, RoundRecord, read_rounds
from fedtl.server.identity import SiteIdentity
from fedtl.server.resume import load_resume_point
from fedtl.server.rounds import FederationRun
from fedtl.shared.federation_config import FederationConfig
from fedtl.shared.records import digest, from_record
from tests.fakes import HonestSite, corrupting, failing, silent, unreachable


class Recorder:
    """An observer that keeps every event."""

    def __init__(self):
        self.events: list[tuple[str, object]] = []

    def start(self, info):
        self.events.append(("start", info))

    def round(self, record):
        self.events.append(("round", record.to_json()))  # as rounds.jsonl stores it

    def finish(self, status, summary):
        self.events.append(("finish", status))

    def rounds(self) -> list[dict]:
        return [r for kind, r in self.events if kind == "round"]


def config(tmp_path, **settings) -> FederationConfig:
    base = {"name": "contract", "encoder": "tiny", "update_mode": "last:1", "rounds": 1, "min_sites": 1,
            "round_timeout": 5, "wait_for_sites": 1, "final_evaluate": False, "state_dir": tmp_path / "coordinator",
            "mlflow": {"enabled": False}}
    return FederationConfig.model_validate({**base, **settings})


def run(tmp_path, nodes, latency=None, resume=False, identity=None, **settings):
    fed = config(tmp_path, **settings)
    recorder = Recorder()
    grid = LocalGrid(nodes, latency or {}, timeout=fed.round_timeout)
    FederationRun(fed, fed.state_dir, run_id=1, resume=resume, observers=[recorder],
                  identity=identity or SiteIdentity()).run(grid)
    return recorder, grid


def test_fedavg_averages_deltas_weighted_by_examples(tmp_path):
    a, b = HonestSite("a", examples=10, seed=1), HonestSite("b", examples=30, seed=2)
    recorder, grid = run(tmp_path, {1: a, 2: b}, strategy={"name": "fedavg"})
    [record] = recorder.rounds()
    assert record["accepted"] == 2 and record["aggregated"] and not record["failed"] and not record["rejected"]
    sent = from_record(grid.sent[0].content["arrays"])
    point = load_resume_point(tmp_path / "coordinator")
    for name, before in sent.items():
        expected = before + (10 * a.deltas[0][name] + 30 * b.deltas[0][name]) / 40
        np.testing.assert_allclose(point.arrays[name], expected, rtol=1e-5, atol=1e-7)
    assert record["global_digest"] == digest(point.arrays)
    # every site got the round config the protocol promises
    assert a.configs[0].server_round == 1 and a.configs[0].update_mode == "last:1" and a.configs[0].encoder == "tiny"


def test_the_default_fedexp_steps_past_the_mean_update_as_far_as_the_sites_updates_are_orthogonal(tmp_path):
    """strategy fedexp (the default): global + step x mean, step = max(1, mean ||d_i||^2 / (2 ||mean d||^2))
    capped at max_server_step; four random (near-orthogonal) updates ask for about 2; the round logs it."""
    sites = {n: HonestSite(f"s{n}", examples=20, seed=n) for n in range(1, 5)}
    recorder, grid = run(tmp_path, sites, strategy={"max_server_step": 5.0})
    [record] = recorder.rounds()
    assert record["accepted"] == 4 and record["aggregated"]
    sent = from_record(grid.sent[0].content["arrays"])
    deltas = [site.deltas[0] for site in sites.values()]
    mean = {n: sum(d[n] for d in deltas) / 4 for n in sent}
    square = lambda arrays: sum(float(np.vdot(v, v)) for v in arrays.values())  # noqa: E731
    step = max(1.0, sum(square(d) for d in deltas) / 4 / (2 * square(mean)))
    assert 1.5 < step < 5.0 and record["metrics"]["server_step"] == pytest.approx(step, rel=1e-4)
    point = load_resume_point(tmp_path / "coordinator")
    for name, before in sent.items():
        np.testing.assert_allclose(point.arrays[name], before + step * mean[name], rtol=1e-4, atol=1e-6)


def test_dropped_late_and_failed_sites_do_not_stop_the_round(tmp_path):
    good = HonestSite("good")
    recorder, _ = run(tmp_path, {1: good, 2: silent, 3: HonestSite("slow"), 4: failing("CUDA out of memory"),
                                 5: unreachable}, latency={3: 60.0}, round_timeout=1)
    [record] = recorder.rounds()
    assert record["sampled"] == 5 and record["answered"] == 3 and record["accepted"] == 1 and record["aggregated"]
    reasons = {f["site"]: f["reason"] for f in record["failed"]}
    assert len(reasons) == len(record["failed"]) == 4, record["failed"]  # each silent or failed site once
    assert reasons["node-2"].startswith("no reply within round_timeout") and "node-3" in reasons
    assert "CUDA out of memory" in reasons["node-4"]
    # the SuperLink answers for a site whose heartbeats stopped: the failure names that site
    assert "Node Unavailable" in reasons["node-5"], reasons
    assert set(record["sites"]) == {"good"}


@pytest.mark.parametrize("corrupt, reason", [
    (lambda d: d.update({k: np.full_like(v, np.nan) for k, v in list(d.items())[:1]}), "NaN"),
    (lambda d: d.update({k: np.zeros((3, 3), v.dtype) for k, v in list(d.items())[:1]}), "shape"),
    (lambda d: d.update({"head.linear.weight": np.zeros(2, np.float32)}), "unexpected tensors"),
    (lambda d: d.pop(sorted(d)[0]), "missing tensors"),
    (lambda d: d.update({k: v.astype(np.float64) for k, v in list(d.items())[:1]}), "dtype"),
])
def test_corrupt_updates_are_rejected_and_the_rest_aggregated(tmp_path, corrupt, reason):
    recorder, _ = run(tmp_path, {1: HonestSite("honest"), 2: corrupting(HonestSite("broken"), corrupt)})
    [record] = recorder.rounds()
    assert record["accepted"] == 1 and record["aggregated"] and set(record["sites"]) == {"honest"}
    [rejected] = record["rejected"]
    assert rejected["site"] == "broken" and reason in rejected["reason"]


def test_too_few_valid_updates_leave_the_global_encoder_unchanged(tmp_path):
    recorder, _ = run(tmp_path, {1: HonestSite("a"), 2: silent}, min_sites=2, round_timeout=1)
    [record] = recorder.rounds()
    assert not record["aggregated"] and record["accepted"] == 1
    start = next(info for kind, info in recorder.events if kind == "start")
    assert record["global_digest"] == start["initial_digest"]


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi", "fedavg"])
def test_resume_continues_exactly_where_the_run_stopped(tmp_path, strategy):
    """2 rounds, stop, resume to 4 == 4 rounds straight: same global tensors, same optimizer moments."""
    def sites():
        return {1: HonestSite("a", seed=1), 2: HonestSite("b", seed=2, examples=20)}

    straight_sites = sites()
    straight, _ = run(tmp_path / "straight", straight_sites, rounds=4, strategy={"name": strategy})
    interrupted_sites = sites()
    run(tmp_path / "resumed", interrupted_sites, rounds=2, strategy={"name": strategy})
    resumed, _ = run(tmp_path / "resumed", interrupted_sites, rounds=4, resume=True, strategy={"name": strategy})

    assert [r["round"] for r in resumed.rounds()] == [2, 3, 4]  # round 2 replayed to observers, then 3 and 4
    assert resumed.rounds()[-1]["global_digest"] == straight.rounds()[-1]["global_digest"]
    a = load_resume_point(tmp_path / "straight" / "coordinator")
    b = load_resume_point(tmp_path / "resumed" / "coordinator")
    assert a.round == b.round == 4 and sorted(a.strategy) == sorted(b.strategy)
    if strategy != "fedavg":
        assert any(k.startswith("v_t/") for k in a.strategy)
    for key in a.strategy:
        np.testing.assert_array_equal(a.strategy[key], b.strategy[key])


def test_history_records_a_replayed_round_once(tmp_path):
    writer = HistoryWriter(tmp_path, run_id=1)
    writer.start({"start_round": 1})
    writer.round(RoundRecord(round=1, global_digest="x"))
    resumed = HistoryWriter(tmp_path, run_id=2)
    resumed.start({"start_round": 2})
    resumed.round(RoundRecord(round=1, global_digest="x"))  # replayed after a crash
    resumed.round(RoundRecord(round=2, global_digest="y"))
    assert [r.round for r in read_rounds(tmp_path)] == [1, 2]
    with (tmp_path / "rounds.jsonl").open("a") as fh:
        fh.write('{"round": 3, "glo')  # a crash mid-write
    assert [r.round for r in read_rounds(tmp_path)] == [1, 2]

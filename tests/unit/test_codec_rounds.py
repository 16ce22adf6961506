"""Codecs through the round loop: real site workers (tiny encoder) on an in-process Grid.

The coordinator's reference and each site's must be the same tensors; what is counted must be
what was encoded; a site out of step refuses a change and gets the whole reference next round;
an update that does not decode is rejected, and the round goes on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedtl.client.worker import SiteWorker
from fedtl.harness.grid import worker_grid
from fedtl.server.downlink import Downlink
from fedtl.server.rounds import FederationRun
from fedtl.shared.config import load_site_config
from fedtl.shared.federation_config import FederationConfig
from fedtl.shared.protocol import ARRAYS
from fedtl.shared.records import digest, from_record, to_record
from tests.conftest import make_site
from tests.unit.test_round_contract import Recorder


def federation(tmp_path, codec: dict, rounds: int = 3, sites: int = 2, grid_wrap=None,
               site_yaml: dict[int, str] | None = None, training: dict | None = None,
               types: tuple[str, ...] = ("classification",), **settings):
    """``site_yaml[i]``: text appended to site i's site.yaml; ``training``: settings every site's
    ``training:`` block gets; ``types``: every site's tasks."""
    workers = {}
    extra = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in (training or {}).items())
    for i in range(sites):
        path = make_site(tmp_path / f"s{i}", name=f"site{i}", types=types, n=60, head_epochs=3)
        path.write_text(path.read_text().replace("training:\n", "training:\n" + extra, 1) + (site_yaml or {}).get(i, ""))
        workers[i + 1] = SiteWorker(load_site_config(path), "tiny")
    fed = FederationConfig.model_validate({
        "name": "codec", "encoder": "tiny", "update_mode": "last:1", "rounds": rounds, "min_sites": 1,
        "max_steps": 2, "round_timeout": 60, "final_evaluate": False, "state_dir": tmp_path / "coordinator",
        "mlflow": {"enabled": False}, "codec": codec, **settings})
    recorder = Recorder()
    grid = worker_grid(workers)
    run = FederationRun(fed, fed.state_dir, run_id=1, observers=[recorder])
    run.run(grid_wrap(grid, workers) if grid_wrap else grid)
    return run, workers, recorder.rounds()


class RecordingDownlink(Downlink):
    """The real downlink, keeping the global tensors it was asked to send each round."""

    def prepare(self, global_arrays):
        self.prepared = [*getattr(self, "prepared", []), {n: a.copy() for n, a in global_arrays.items()}]
        super().prepare(global_arrays)


@pytest.fixture(scope="module")
def plain_and_coded(tmp_path_factory):
    import fedtl.server.rounds as rounds

    rounds.Downlink, original = RecordingDownlink, rounds.Downlink
    plain = federation(tmp_path_factory.mktemp("plain"), {"up": "none", "down": "none"})
    try:
        coded = federation(tmp_path_factory.mktemp("coded"), {"up": "int8", "down": "int8"})
    finally:
        rounds.Downlink = original
    return plain, coded


def test_sites_hold_exactly_the_coordinators_reference(plain_and_coded):
    _, (run, workers, rounds) = plain_and_coded
    assert all(r["accepted"] == 2 and not r["rejected"] and not r["failed"] for r in rounds)
    for worker in workers.values():
        assert worker.codecs.reference_digest == run._downlink.reference_digest == digest(worker.codecs.reference)
    # what the sites hold is the global encoder of the round start within the int8 error of one
    # round's change (error feedback: not the errors of every round added up)
    sent = run._downlink.prepared
    gap = np.sqrt(sum(np.square(run._downlink.reference[n] - a).sum() for n, a in sent[-1].items()))
    change = np.sqrt(sum(np.square(sent[-2][n] - a).sum() for n, a in sent[-1].items()))
    assert 0 < gap <= 0.02 * change


def test_counted_bytes_are_the_encoded_bytes(plain_and_coded):
    (_, _, plain), (_, _, coded) = plain_and_coded
    # the tiny encoder's tensors are small: array headers and per-row scales weigh (MiniLM: 1/3.98)
    for p, c in zip(plain, coded):
        assert c["bytes_up"] <= p["bytes_up"] / 2.5
        assert c["bytes_up"] == sum(s["bytes_up"] for s in c["sites"].values())
        assert c["bytes_down"] == sum(s["bytes_down"] for s in c["sites"].values())
        assert c["bytes_down"] <= p["bytes_down"] / 2.5  # every site in step: changes only
    assert all(s["bytes_down"] == p["bytes_down"] / 2 for p in plain for s in p["sites"].values())


def test_a_site_out_of_step_refuses_a_change_and_gets_the_whole_encoder_next(tmp_path):
    class Forgetful:
        """Site 1 loses what it holds before round 3, as a restarted worker would (before round 2 it
        would still hold the right base: round 1 sends no change to the pretrained encoder)."""

        def __init__(self, grid, workers):
            self.grid, self.workers, self.pushes = grid, workers, 0

        def __getattr__(self, name):
            return getattr(self.grid, name)

        def push_messages(self, messages):
            self.pushes += 1
            if self.pushes == 3:
                worker = self.workers[1]
                worker.codecs.reset()
                worker._pristine = False
            return self.grid.push_messages(messages)

    run, workers, rounds = federation(tmp_path, {"up": "none", "down": "int8"}, rounds=4, grid_wrap=Forgetful)
    assert [r["accepted"] for r in rounds] == [2, 2, 1, 2]
    assert "OutOfStep" in rounds[2]["failed"][0]["reason"]
    fourth = rounds[3]["sites"]
    assert fourth["site1"]["bytes_down"] * 2.5 <= fourth["site0"]["bytes_down"]  # site0 (node 1): the whole reference
    assert workers[1].codecs.reference_digest == workers[2].codecs.reference_digest == run._downlink.reference_digest


def test_an_update_that_does_not_decode_is_rejected(tmp_path):
    class Garbling:
        def __init__(self, grid, workers):
            self.grid = grid

        def __getattr__(self, name):
            return getattr(self.grid, name)

        def pull_messages(self, ids):
            replies = self.grid.pull_messages(ids)
            for msg in replies:
                if msg.metadata.src_node_id == 2:
                    wire = from_record(msg.content[ARRAYS])
                    key = next(k for k in wire if k.endswith("#idx"))
                    wire[key] = wire[key] + 10**6
                    msg.content[ARRAYS] = to_record(wire)
            return replies

    _, _, rounds = federation(tmp_path, {"up": "topk:0.1", "down": "none"}, rounds=1, grid_wrap=Garbling)
    [record] = rounds
    assert record["accepted"] == 1 and record["aggregated"]
    assert "does not decode" in record["rejected"][0]["reason"] and "outside" in record["rejected"][0]["reason"]


def test_similarity_with_a_coded_downlink_is_refused_at_the_edge(tmp_path):
    with pytest.raises(ValueError, match="codec.down"):
        FederationConfig.model_validate({"codec": {"down": "fp16"}, "personalization": {"method": "similarity"},
                                         "state_dir": tmp_path})


def test_mlflow_gets_each_sites_encoded_bytes(plain_and_coded):
    from fedtl.server.history import RoundRecord
    from fedtl.server.tracking import round_metrics

    _, (_, _, coded) = plain_and_coded
    metrics = round_metrics(RoundRecord.model_validate(coded[-1]), set())
    for site, entry in coded[-1]["sites"].items():
        assert metrics[f"site/{site}/bytes_up"] == entry["bytes_up"] > 0
        assert metrics[f"site/{site}/bytes_down"] == entry["bytes_down"] > 0

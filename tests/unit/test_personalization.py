"""Personalization methods: Ditto at the site, similarity-weighted aggregation at the coordinator."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from flwr.app import RecordDict

from fedtl.client.worker import SiteWorker
from fedtl.client.worker_api import Timing
from fedtl.server.similarity import cosine_matrix, mix, mixing_weights
from fedtl.shared.config import load_site_config
from fedtl.shared.protocol import ARRAYS, CONFIG, REPORT, RoundConfig, Section, task_key
from fedtl.shared.records import from_record, to_record
from fedtl.shared.update_modes import UpdateMode, exchanged_names
from tests.conftest import make_site
from tests.fakes import HonestSite
from tests.unit.test_round_contract import run


# ---------------------------------------------------------------- similarity aggregation
def updates(vectors: dict[str, list[float]]) -> dict[str, dict[str, np.ndarray]]:
    return {site: {"w": np.array(v, np.float32)} for site, v in vectors.items()}


def test_identical_updates_mix_to_exactly_fedavg():
    deltas = updates({"a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2, 3]})
    examples = {"a": 10, "b": 30, "c": 60}
    alphas = mixing_weights(cosine_matrix(deltas), examples, temperature=0.1)
    models = {"a": {"w": np.array([0.0, 1, 2])}, "b": {"w": np.array([3.0, 1, 0])}, "c": {"w": np.array([1.0, 1, 1])}}
    fedavg = sum(examples[s] * models[s]["w"] for s in models) / 100
    for model in mix(models, alphas).values():
        np.testing.assert_allclose(model["w"], fedavg, rtol=1e-12)


def test_orthogonal_updates_leave_each_site_mostly_its_own_model():
    deltas = updates({"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1]})
    alphas = mixing_weights(cosine_matrix(deltas), {"a": 10, "b": 10, "c": 10}, temperature=0.1)
    for site in alphas:
        assert alphas[site][site] > 0.99


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0, 10.0])
def test_each_sites_mixing_weights_sum_to_one(temperature):
    rng = np.random.default_rng(0)
    deltas = {s: {"w": rng.standard_normal(8).astype(np.float32)} for s in "abcde"}
    alphas = mixing_weights(cosine_matrix(deltas), {s: i + 1 for i, s in enumerate("abcde")}, temperature)
    for row in alphas.values():
        assert math.isclose(sum(row.values()), 1.0, rel_tol=1e-12) and all(w >= 0 for w in row.values())


def test_similarity_sends_each_site_its_own_model_and_logs_the_mixing(tmp_path):
    a, b = HonestSite("a", seed=1), HonestSite("b", seed=2)
    recorder, grid = run(tmp_path, {1: a, 2: b}, rounds=2,
                         personalization={"method": "similarity", "similarity_temperature": 0.05})
    second = [m for m in grid.sent if m.metadata.message_type == "train"][2:]
    sent = {m.metadata.dst_node_id: from_record(m.content[ARRAYS]) for m in second}
    name = next(iter(sent[1].keys()))
    assert not np.array_equal(sent[1][name], sent[2][name])  # round 2: a model per site
    first = recorder.rounds()[0]
    assert set(first["mixing"]) == {"a", "b"} and first["mixing"]["a"]["a"] > 0.5
    assert all(math.isclose(sum(row.values()), 1.0) for row in first["mixing"].values())


# ---------------------------------------------------------------- Ditto at the site
@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    return make_site(tmp_path_factory.mktemp("ditto") / "site", name="clinic", n=60, head_epochs=3,
                     baseline="probe").parent  # the personal model against the probe, as these tests read it


def worker_at(path):
    return SiteWorker(load_site_config(path / "site.yaml"), "tiny")


def message(worker, round_: int, lam: float, shift: float = 0.0) -> RecordDict:
    names = exchanged_names(worker.param_names, UpdateMode.parse("last:1"))
    rng = np.random.default_rng(round_)
    params = dict(worker.encoder.named_parameters())
    arrays = {n: params[n].detach().numpy().copy() + shift * rng.standard_normal(params[n].shape).astype(np.float32)
              for n in names}
    config = RoundConfig("last:1", "tiny", server_round=round_, max_steps=3, personalization="ditto", ditto_lambda=lam)
    return RecordDict({ARRAYS: to_record(arrays), CONFIG: config.to_record()})


def test_ditto_with_infinite_lambda_serves_the_global_encoder(site_dir, tmp_path):
    shutil.copytree(site_dir, tmp_path / "s")
    worker = worker_at(tmp_path / "s")
    content = message(worker, 1, math.inf, shift=0.01)
    reply = worker.handle("train", content, Timing())
    personal = worker.ditto.personal_tensors()
    for name, value in from_record(content[ARRAYS]).items():
        np.testing.assert_array_equal(personal[name], value)
    served = json.loads((tmp_path / "s" / "state" / "federated" / "site_model.json").read_text())
    assert served["personalized"] and served["parts"][0]["encoder_tensors"].endswith("personal/encoder.safetensors")
    assert task_key(Section.SHARED, "label", "macro_f1") in reply[REPORT]


def test_ditto_with_zero_lambda_is_purely_local(site_dir, tmp_path):
    """Round 2's personal model is the same whatever global encoder arrives in round 2."""
    personal = []
    for i, shift in enumerate((0.0, 0.05)):
        shutil.copytree(site_dir, tmp_path / f"s{i}")
        worker = worker_at(tmp_path / f"s{i}")
        worker.handle("train", message(worker, 1, 0.0), Timing())
        second = message(worker, 2, 0.0, shift=shift)  # a different global encoder for each twin
        worker.handle("train", second, Timing())
        personal.append(worker.ditto.personal_tensors())
        moved = [n for n, v in from_record(second[ARRAYS]).items() if not np.allclose(personal[-1][n], v)]
        assert moved, "the personal model should not be the global one"
    for name in personal[0]:
        np.testing.assert_allclose(personal[0][name], personal[1][name], rtol=1e-6, atol=1e-7)

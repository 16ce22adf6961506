"""Differential privacy: clipping, noise, accounting, and a federation whose sites send only noised updates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedtl.shared.privacy import ALPHAS, epsilon_spent, noise_multiplier, privatize
from fedtl.shared.records import l2_norm
from tests.unit.test_codec_rounds import federation


def test_clipping_bounds_the_update_and_keeps_its_direction():
    rng = np.random.default_rng(0)
    delta = {"a": rng.normal(size=(30, 4)).astype(np.float32), "b": rng.normal(size=7).astype(np.float32)}
    norm = l2_norm(delta)
    clipped, before = privatize(delta, clip=norm / 4, z=0.0)
    assert before == pytest.approx(norm)
    assert l2_norm(clipped) == pytest.approx(norm / 4, rel=1e-5)
    for name in delta:
        np.testing.assert_allclose(clipped[name], delta[name] / 4, rtol=1e-5, atol=1e-7)
    unchanged, _ = privatize(delta, clip=norm * 2, z=0.0)
    for name in delta:
        np.testing.assert_allclose(unchanged[name], delta[name], rtol=1e-6)


def test_noise_has_the_calibrated_spread_and_is_fresh_each_time():
    zeros = {"w": np.zeros((400, 500), np.float32)}
    first, _ = privatize(zeros, clip=0.5, z=2.0)
    second, _ = privatize(zeros, clip=0.5, z=2.0)
    assert float(first["w"].std()) == pytest.approx(1.0, rel=0.01)  # z * clip
    assert abs(float(first["w"].mean())) < 0.01
    assert not np.array_equal(first["w"], second["w"])


def test_a_broken_update_stays_broken():
    out, _ = privatize({"w": np.array([1.0, np.nan], np.float32)}, clip=1.0, z=1.0)
    assert not np.isfinite(out["w"]).all()


def test_the_noise_multiplier_spends_the_budget_and_no_more():
    for q, rounds in ((1.0, 3), (0.5, 10), (0.1, 50)):
        z = noise_multiplier(8.0, 1e-5, q, rounds)
        spent = epsilon_spent(z, q, rounds, 1e-5)
        assert 7.0 < spent <= 8.0
        assert epsilon_spent(z, q, rounds - 1, 1e-5) < spent  # it grows round by round
    assert noise_multiplier(8.0, 1e-5, 0.1, 3) < noise_multiplier(8.0, 1e-5, 1.0, 3)  # sampling amplifies
    assert noise_multiplier(1.0, 1e-5, 1.0, 3) > noise_multiplier(8.0, 1e-5, 1.0, 3)
    assert epsilon_spent(1.0, 1.0, 0, 1e-5) == 0.0


def test_a_private_federation_sends_only_clipped_and_noised_updates(tmp_path):
    from fedtl.cli.reports import rounds_table
    from fedtl.server.history import RoundRecord
    from fedtl.server.tracking import round_metrics

    privacy = {"enabled": True, "epsilon": 4.0, "delta": 1e-5, "clip_norm": 0.01}
    run, workers, rounds = federation(tmp_path, {"up": "none", "down": "none"}, rounds=3, privacy=privacy)
    z = run.noise_multiplier
    assert z == pytest.approx(noise_multiplier(4.0, 1e-5, 1.0, 3))
    accountant = RDPAccountant()  # Opacus's own, stepped once per round, beside what the federation logged
    for record in rounds:
        accountant.step(noise_multiplier=z, sample_rate=1.0)
        assert record["privacy"]["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5, alphas=ALPHAS), rel=5e-4)
    spent = [r["privacy"]["epsilon"] for r in rounds]
    assert 0 < spent[0] < spent[1] < spent[2] <= 4.0
    _, global_arrays, _ = run._initial()
    d = sum(a.size for a in global_arrays.values())  # values a site sends
    for worker in workers.values():
        history = [json.loads(line) for line in (worker.root / "history.jsonl").read_text().splitlines()]
        assert len(history) == 3
        for entry in history:
            p = entry["privacy"]
            assert (p["clip_norm"], p["noise_multiplier"]) == (0.01, z)
            assert p["trained_norm"] > 0.01  # so clipping did bite
            # what left: the update clipped to 0.01 plus noise of norm about z * 0.01 * sqrt(d)
            expected = math.sqrt(0.01**2 + (z * 0.01) ** 2 * d)
            assert entry["update_norm"] == pytest.approx(expected, rel=0.05)
    for record in rounds:
        for norm in record["update_norms"].values():
            assert norm > 0.01  # the coordinator saw noise on top of at most 0.01 of update
        assert round_metrics(RoundRecord.model_validate(record), set())["privacy/epsilon"] == record["privacy"]["epsilon"]
    table = rounds_table([RoundRecord.model_validate(r) for r in rounds])
    assert [c.header for c in table.columns][-1] == "ε spent"
    # nothing else derived from the data left: every site weighs 1, no score, loss or per-task value
    for record in rounds:
        for entry in record["sites"].values():
            assert entry["metrics"]["num-examples"] == 1 and "score" not in entry["metrics"], entry["metrics"]
            assert "train_loss" not in entry["metrics"] and not any(k.startswith("val/") for k in entry["report"])


def test_a_site_may_choose_to_send_its_metrics_in_private_rounds(tmp_path):
    privacy = {"enabled": True, "epsilon": 4.0, "delta": 1e-5, "clip_norm": 0.01}
    _, _, rounds = federation(tmp_path, {"up": "none", "down": "none"}, rounds=1, privacy=privacy,
                              site_yaml={0: "privacy: {withhold_metrics: false}\n"})
    sites = rounds[0]["sites"]
    assert sites["site0"]["metrics"]["num-examples"] > 1 and "score" in sites["site0"]["metrics"]
    assert sites["site1"]["metrics"]["num-examples"] == 1 and "score" not in sites["site1"]["metrics"]


def test_a_site_refuses_rounds_below_its_own_privacy_floor(tmp_path):
    """site0 demands more noise than the federation's budget gives; site1 trains on."""
    privacy = {"enabled": True, "epsilon": 8.0, "delta": 1e-5, "clip_norm": 0.01}
    floor = {0: "privacy: {min_noise_multiplier: 50}\n"}
    run, workers, rounds = federation(tmp_path / "low", {"up": "none", "down": "none"}, rounds=1, privacy=privacy,
                                      site_yaml=floor)
    (record,) = rounds
    assert set(record["sites"]) == {"site1"}
    (failed,) = record["failed"]
    assert "refuses round 1" in failed["reason"] and "below this site's minimum 50" in failed["reason"]
    assert not (workers[1].root / "history.jsonl").exists()  # nothing trained, nothing sent

    _, _, rounds = federation(tmp_path / "none", {"up": "none", "down": "none"}, rounds=1, site_yaml=floor)
    assert "requires differential privacy" in rounds[0]["failed"][0]["reason"]


def test_a_site_stops_at_its_own_lifetime_epsilon_and_the_ledger_outlives_the_run(tmp_path):
    """site0's budget fits two of the federation's three rounds: it sends two, refuses the third,
    and a later run (a new ledger reader) still counts what it spent."""
    from fedtl.client.privacy_ledger import LEDGER, PrivacyLedger
    from fedtl.shared.privacy import epsilon_of

    z = noise_multiplier(8.0, 1e-5, 1.0, 3)  # what the federation below calibrates: q = 1, three rounds
    budget = (epsilon_of([z] * 2, 1e-5) + epsilon_of([z] * 3, 1e-5)) / 2
    privacy = {"enabled": True, "epsilon": 8.0, "delta": 1e-5, "clip_norm": 0.01}
    _, workers, rounds = federation(tmp_path, {"up": "none", "down": "none"}, rounds=3, privacy=privacy,
                                    site_yaml={0: f"privacy: {{max_epsilon: {budget}}}\n"})
    assert [set(r["sites"]) for r in rounds] == [{"site0", "site1"}, {"site0", "site1"}, {"site1"}]
    (failed,) = rounds[2]["failed"]
    assert "refuses round 3" in failed["reason"] and "past its budget" in failed["reason"], failed
    ledger = PrivacyLedger(workers[1].config.state_dir / LEDGER, 1e-5)
    assert [e["round"] for e in ledger.entries] == [1, 2] and ledger.spent() == pytest.approx(epsilon_of([z] * 2, 1e-5))
    assert ledger.refusal(z, budget) is not None and ledger.refusal(z, 1e9) is None
    assert rounds[0]["privacy"]["epsilon"] == pytest.approx(epsilon_of([z], 1e-5), rel=1e-6), \
        "the coordinator accounts each round in full too (q = 1)"

    (workers[1].config.state_dir / LEDGER).write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):  # never a silent reset of the budget
        PrivacyLedger(workers[1].config.state_dir / LEDGER, 1e-5)

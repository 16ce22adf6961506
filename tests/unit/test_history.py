"""The typed round record: what rounds.jsonl stores, what older files still read as, what the hub sends."""

from __future__ import annotations

import json

from fedtl.server.history import RoundRecord, read_rounds
from fedtl.server.hub import round_message

LINE = {  # a line as an earlier fedtl wrote it: no update_cosine or aggregation_seconds, a key since dropped
    "round": 3, "started_at": 10.0, "seconds": 2.5, "sampled": 2, "answered": 2, "accepted": 1,
    "failed": [], "rejected": [{"site": "b", "reason": "update holds NaN"}], "aggregated": True,
    "global_digest": "abc", "bytes_down": 100, "bytes_up": 40, "metrics": {"score": 0.7},
    "update_norms": {"a": 0.5}, "sites": {"a": {"metrics": {"num-examples": 9},
                                                 "report": {"tasks": ["t"], "primary": ["r2"], "val/t/r2": 0.6,
                                                            "site_model": "federated"},
                                                 "bytes_down": 60, "bytes_up": 40}},
    "privacy": {"epsilon": 1.5, "epsilon_budget": 8.0}, "legacy_key": 1,
}


def test_an_older_line_reads_with_its_values_and_keeps_what_this_version_does_not_know(tmp_path):
    (tmp_path / "rounds.jsonl").write_text(json.dumps(LINE) + "\n" + '{"round": 4, "glob')  # then a torn line
    (record,) = read_rounds(tmp_path)
    assert record.round == 3 and record.rejected[0].reason == "update holds NaN" and record.aggregation_seconds == 0.0
    site = record.sites["a"]
    assert site.value("val", "t", "r2") == 0.6 and list(site.primary()) == [("t", "r2")]
    assert site.site_model == "federated" and site.bytes_down == 60
    assert record.to_json()["legacy_key"] == 1 and "evaluate" not in record.to_json()
    assert RoundRecord.model_validate(json.loads(record.line())) == record


def test_the_hub_sends_the_records_numbers_and_its_whole_json():
    message = round_message(RoundRecord.model_validate(LINE))
    assert (message.round, message.accepted, message.bytes_down, message.epsilon_spent) == (3, 1, 100, 1.5)
    assert [(p.site, p.reason) for p in message.rejected] == [("b", "update holds NaN")]
    assert message.sites[0].site == "a" and message.sites[0].update_norm == 0.5
    assert json.loads(message.record_json)["sites"]["a"]["report"]["val/t/r2"] == 0.6


def test_the_round_log_parses_only_what_was_appended_and_rereads_a_replaced_file(tmp_path):
    from fedtl.server.history import RoundLog, RoundRecord

    path = tmp_path / "rounds.jsonl"
    log = RoundLog(tmp_path)
    assert log.rounds() == []
    line = lambda n: json.dumps(RoundRecord(round=n).to_json())  # noqa: E731
    path.write_text(line(1) + "\n" + line(2)[:10])  # round 2 still being written
    assert [r.round for r in log.rounds()] == [1]
    with path.open("a") as fh:
        fh.write(line(2)[10:] + "\n")
    assert [r.round for r in log.rounds()] == [1, 2]
    path.write_text("{cut\n")  # a crash's half line is skipped
    with path.open("a") as fh:
        fh.write(line(3) + "\n")
    replaced = tmp_path / "new.jsonl"
    replaced.write_text(line(7) + "\n")
    replaced.replace(path)  # a fresh run's file
    assert [r.round for r in log.rounds()] == [7]

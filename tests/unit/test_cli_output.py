"""Output for people and for logs: without a terminal (a service's journal, a pipe, CI) the
coordinator prints one line per round as it finishes, then the tables, each on its own lines."""

from __future__ import annotations

import io

from rich.console import Console

import fedtl.cli.federation as federation_cli
from fedtl.cli.reports import round_line, sites_table
from fedtl.server.history import RoundRecord, SiteEntry, read_rounds


class FakeRun:
    def __init__(self, finished: bool):
        self.finished = finished

    def as_dict(self) -> dict:
        return {"status": "finished:completed" if self.finished else "running"}


class FakeCoordinator:
    """Finishes a round at every poll, as a real federation appends to rounds.jsonl."""

    def __init__(self, state_dir, rounds: int):
        self.state_dir, self.rounds, self.lines_seen_at_poll = state_dir, rounds, []

    def wait(self, on_poll):
        for n in range(1, self.rounds + 1):
            record = RoundRecord(round=n, sampled=2, accepted=2, seconds=1.5 * n, bytes_down=2_000_000, bytes_up=1_000_000,
                                 metrics={"score": 0.5 + n / 100},
                                 sites={"alpha": SiteEntry(report={"site": "alpha", "tasks": ["t"], "primary": ["accuracy"],
                                                                   "val/t/accuracy": 0.6, "baseline/t/accuracy": 0.5})})
            with (self.state_dir / "rounds.jsonl").open("a") as fh:
                fh.write(record.line() + "\n")
            state = FakeRun(finished=n == self.rounds)
            on_poll(state)
            on_poll(state)  # a poll with nothing new prints nothing
            self.lines_seen_at_poll.append(OUT.getvalue().count("done:"))
        return state


OUT = io.StringIO()


def test_without_a_terminal_each_round_is_one_line_as_it_finishes_then_the_tables_stand_apart(tmp_path, monkeypatch):
    OUT.seek(0)
    OUT.truncate()
    console = Console(file=OUT, width=120, force_terminal=False)
    monkeypatch.setattr(federation_cli, "console", console)
    coord = FakeCoordinator(tmp_path, rounds=3)
    info = federation_cli.follow_run(coord, "fed", rounds=3)
    console.print(sites_table(read_rounds(tmp_path)))  # what fedtl coordinator and fedtl demo print next
    text = OUT.getvalue()
    assert info["status"] == "finished:completed"
    assert coord.lines_seen_at_poll == [1, 2, 3]  # each round's line appears when it finishes, once
    lines = text.splitlines()
    done = [line for line in lines if "done:" in line]
    assert done[0].startswith("round 1/3 done: 2/2 sites accepted, 0 failed, 0 rejected; score 0.510")
    assert "2.0 MB down, 1.0 MB up, 1.5 s" in done[0] and done[2].startswith("round 3/3 done")
    # the live table is printed once at the end, and every table title starts its own line
    titles = [i for i, line in enumerate(lines) if "fed · finished:completed" in line or "per site:" in line]
    assert len(titles) == 2
    for i in titles:
        assert lines[i].strip().startswith(("fed", "per site")), lines[i]
        assert not any(ch in lines[i] for ch in "└┘╰╯━─"), lines[i]


def test_a_round_line_says_what_the_table_row_says():
    record = RoundRecord(round=4, sampled=3, accepted=2, failed=[{"site": "b", "reason": "crashed"}], seconds=12.25,
                         bytes_down=5_500_000, bytes_up=0, privacy={"epsilon": 1.234, "epsilon_budget": 8.0})
    line = round_line(record)
    assert line == ("round 4 done: 2/3 sites accepted, 1 failed, 0 rejected; epsilon 1.23/8; "
                    "5.5 MB down, 0.0 MB up, 12.2 s")

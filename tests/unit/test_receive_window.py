"""A round with ``sites_in_flight``: never more messages out than the window, every reply collected."""

from __future__ import annotations

import pytest
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedtl.server import rounds


class SlowGrid:
    """Answers one outstanding message per pull (oldest first); records how many were ever out at once."""

    def __init__(self, refuse: set[int] = frozenset()):
        self.out: dict[str, Message] = {}
        self.most_out = 0
        self.count = 0
        self.refuse = refuse  # nodes whose push fails (Flower returns no id)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id in self.refuse:
                ids.append("")
                continue
            self.count += 1
            mid = f"m{self.count}"
            msg.metadata.__dict__["_message_id"] = mid
            self.out[mid] = msg
            ids.append(mid)
        self.most_out = max(self.most_out, len(self.out))
        return ids

    def pull_messages(self, message_ids):
        wanted = [mid for mid in message_ids if mid in self.out]
        if not wanted:
            return []
        question = self.out.pop(wanted[0])
        reply = Message(RecordDict(), reply_to=question)
        reply.metadata.__dict__["_src_node_id"] = question.metadata.dst_node_id
        return [reply]


@pytest.fixture(autouse=True)
def _identity(monkeypatch):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a ServerApp has


def messages(n: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=node, message_type="train") for node in range(1, n + 1)]


def test_a_window_keeps_at_most_that_many_sites_working_and_collects_every_reply():
    grid = SlowGrid()
    replies = list(rounds.receive(grid, messages(10), timeout=30, window=3))
    assert sorted(r.metadata.src_node_id for r in replies) == list(range(1, 11))
    assert grid.most_out == 3


def test_without_a_window_every_message_goes_out_at_once():
    grid = SlowGrid()
    assert len(list(rounds.receive(grid, messages(10), timeout=30))) == 10
    assert grid.most_out == 10


def test_messages_that_could_not_be_pushed_do_not_stall_the_window():
    grid = SlowGrid(refuse={1, 2})  # the whole first window but one fails to go out
    replies = list(rounds.receive(grid, messages(6), timeout=30, window=2))
    assert sorted(r.metadata.src_node_id for r in replies) == [3, 4, 5, 6]
    assert grid.most_out <= 2

"""A fake Flower Grid for in-process contract tests of the coordinator's round loop.

Only faults are faked: each node is a function that answers a message the way a site
would (or drops it, answers late, or answers with garbage). The strategies, records,
validation and aggregation under test are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.supercore.task_identity import TaskIdentity

from fedtl.shared.protocol import ARRAYS, CONFIG, METRICS, REPORT, ReportKey, RoundConfig, SiteMetric
from fedtl.shared.records import from_record, to_record

# A node: message in -> reply content, an Error, or None (no reply). ``latency`` below is simulated.
Node = Callable[[Message], "RecordDict | Error | None"]


class HonestSite:
    """Replies with a small seeded random delta for every tensor it received, like a real site.

    ``deltas`` keeps what it sent, so a test can compute the expected aggregate.
    """

    def __init__(self, name: str, step: float = 0.01, examples: int = 10, seed: int = 0):
        self.name, self.step, self.examples = name, step, examples
        self.rng = np.random.default_rng(seed)
        self.deltas: list[dict[str, np.ndarray]] = []
        self.configs: list[RoundConfig] = []

    def __call__(self, msg: Message) -> RecordDict:
        config = RoundConfig.from_record(msg.content[CONFIG])
        self.configs.append(config)
        arrays = from_record(msg.content[ARRAYS])
        delta = {n: (self.step * self.rng.standard_normal(a.shape)).astype(a.dtype) for n, a in arrays.items()}
        self.deltas.append(delta)
        name, examples = self.name, self.examples
        return RecordDict({
            ARRAYS: to_record(delta),
            METRICS: MetricRecord({SiteMetric.NUM_EXAMPLES: examples, SiteMetric.TRAIN_LOSS: 1.0 / config.server_round,
                                   SiteMetric.SCORE: 0.5}),
            REPORT: ConfigRecord({ReportKey.SITE: name, ReportKey.TASKS: ["t"], ReportKey.PRIMARY: ["r2"],
                                  "val/t/r2": 0.5}),
        })


def corrupting(node: Node, corrupt: Callable[[dict[str, np.ndarray]], None]) -> Node:
    """The node's reply with its delta passed through ``corrupt`` (NaN, a wrong shape, ...)."""

    def answer(msg: Message):
        content = node(msg)
        delta = from_record(content[ARRAYS])
        corrupt(delta)
        content[ARRAYS] = to_record(delta)
        return content

    return answer


def failing(reason: str) -> Node:
    return lambda msg: Error(code=0, reason=reason)


def silent(msg: Message) -> None:
    return None


UNREACHABLE = Error(code=-1, reason="unreachable")


def unreachable(msg: Message) -> Error:
    """A node whose heartbeats stopped: the SuperLink itself answers for it (Flower's own error reply)."""
    return UNREACHABLE


@dataclass
class FakeGrid:
    nodes: dict[int, Node]
    latency: dict[int, float] = field(default_factory=dict)  # seconds a node "takes" to answer
    timeout: float = float("inf")  # a node whose latency is over it never answers
    sent: list[Message] = field(default_factory=list)
    replies: dict[str, Message] = field(default_factory=dict)

    def __post_init__(self) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Each node answers at once (or never: dropped, or slower than the timeout it is told of)."""
        ids = []
        for msg in messages:
            self.sent.append(msg)
            mid = f"m{len(self.sent)}"
            msg.metadata.__dict__["_message_id"] = mid  # what Flower's grid sets on push
            node = msg.metadata.dst_node_id
            if self.latency.get(node, 0.0) <= self.timeout:
                answer = self.nodes[node](msg)
                if answer is UNREACHABLE:
                    self.replies[mid] = create_message_error_unavailable_res_message(msg.metadata, "node_unavail")
                elif answer is not None:
                    self.replies[mid] = Message(answer, reply_to=msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Replies in node order, whatever order the strategy sampled the nodes in: runs repeat exactly."""
        ready = [self.replies.pop(mid) for mid in message_ids if mid in self.replies]
        return sorted(ready, key=lambda m: m.metadata.src_node_id)

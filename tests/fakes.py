"""Fake sites for in-process contract tests of the coordinator's round loop (on harness/grid.py's LocalGrid).

Only faults are faked: each node is a function that answers a message the way a site
would (or drops it, answers late, or answers with garbage). The strategies, records,
validation and aggregation under test are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedtl.harness.grid import UNREACHABLE, Node
from fedtl.shared.protocol import ARRAYS, CONFIG, METRICS, REPORT, ReportKey, RoundConfig, SiteMetric
from fedtl.shared.records import from_record, to_record


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


def unreachable(msg: Message) -> Error:
    """A node whose heartbeats stopped: the SuperLink itself answers for it (Flower's own error reply)."""
    return UNREACHABLE

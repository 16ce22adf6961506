"""A Flower Grid whose nodes are functions in this very process.

The same round loop (``FederationRun``), strategies, validation and aggregation as a real
federation, minus processes and transport. A node is a function from the coordinator's message
to the site's reply: a real ``SiteWorker`` (``worker_node``), for benchmarks that compare
learning methods side by side, or a fake that injects a fault (tests/fakes.py). A node that
raises answers with an error reply, as a real site would.

This is the one place fedtl writes Flower internals, because a Grid outside Flower has to: the
message id Flower's grid sets on push (``metadata._message_id`` has no setter), the process-wide
``TaskIdentity`` Flower's Message constructor reads, and the SuperLink's own "node unavailable"
reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Error, Message, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.supercore.task_identity import TaskIdentity

# A node: message in -> reply content, an Error, None (no reply) or UNREACHABLE.
Node = Callable[[Message], "RecordDict | Error | None"]

UNREACHABLE = Error(code=-1, reason="unreachable")  # the SuperLink answers for a node whose heartbeats stopped


def worker_node(worker) -> Node:
    """A site worker (client/worker.py's ``SiteWorker``) as a node: it handles each message warm."""
    from fedtl.client.worker_api import Timing

    return lambda msg: worker.handle(msg.metadata.message_type, msg.content, Timing())



@dataclass
class LocalGrid:
    """Nodes answer at once, in push order; ``latency`` and ``timeout`` simulate slow sites."""

    nodes: dict[int, Node]
    latency: dict[int, float] = field(default_factory=dict)  # seconds a node "takes" to answer
    timeout: float = float("inf")  # a node whose latency is over it never answers
    run_id: int = 1
    sent: list[Message] = field(default_factory=list)
    replies: dict[str, Message] = field(default_factory=dict)

    def __post_init__(self) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self.run_id, 0, 1

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            self.sent.append(msg)
            mid = f"m{len(self.sent)}"
            msg.metadata.__dict__["_message_id"] = mid  # what Flower's grid sets on push
            node = msg.metadata.dst_node_id
            if self.latency.get(node, 0.0) <= self.timeout:
                try:
                    answer = self.nodes[node](msg)
                except Exception as exc:  # the round goes on without this site, as over the wire
                    answer = Error(code=0, reason=f"{type(exc).__name__}: {exc}")
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


def worker_grid(workers: dict) -> LocalGrid:
    """A grid of site workers keyed by node id: a whole federation in this process."""
    return LocalGrid({node: worker_node(w) for node, w in workers.items()})

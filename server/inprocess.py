"""A Flower Grid whose nodes are site workers in this very process.

The same round loop (``FederationRun``), strategies, validation and site worker as a real
federation, minus processes and transport: for benchmarks that compare learning methods
side by side and for debugging a site's training under the coordinator's control. A worker
that raises answers with an error reply, as a real site would.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Error, Message
from flwr.supercore.task_identity import TaskIdentity

from fedtl.client.worker import SiteWorker, Timing


class InProcessGrid:
    def __init__(self, workers: dict[int, SiteWorker], run_id: int = 1):
        self.workers = workers
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1

    def get_node_ids(self) -> Iterable[int]:
        return list(self.workers)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            worker = self.workers[msg.metadata.dst_node_id]
            try:
                content = worker.handle(msg.metadata.message_type, msg.content, Timing())
            except Exception as exc:  # the round goes on without this site, as over the wire
                replies.append(Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg))
                continue
            replies.append(Message(content, reply_to=msg))
        return replies

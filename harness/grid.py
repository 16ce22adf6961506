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
        self._replies: dict[str, Message] = {}
        self._count = 0
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1

    def get_node_ids(self) -> Iterable[int]:
        return list(self.workers)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Each worker answers at once, in push order."""
        ids = []
        for msg in messages:
            self._count += 1
            mid = f"m{self._count}"
            msg.metadata.__dict__["_message_id"] = mid  # what Flower's grid sets on push
            worker = self.workers[msg.metadata.dst_node_id]
            try:
                content = worker.handle(msg.metadata.message_type, msg.content, Timing())
                self._replies[mid] = Message(content, reply_to=msg)
            except Exception as exc:  # the round goes on without this site, as over the wire
                self._replies[mid] = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

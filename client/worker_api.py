"""The site worker's local API (protos/fedtl/v1/site.proto) on a unix socket: the server side the
site daemon starts, and what the ClientApp shim and the worker share.

torch-free, like the shim, which imports ``GRPC_OPTIONS`` from here: the worker is handed in.
"""

from __future__ import annotations

import logging
import os
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedtl.v1 import site_pb2, site_pb2_grpc

log = logging.getLogger(__name__)

GRPC_OPTIONS = [  # one round's encoder can be hundreds of MB: no gRPC default cap on one message
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
]


@dataclass
class Timing:
    """When the shim's process started and when its handler got the message (unix time)."""

    process_started_at: float = 0.0
    received_at: float = 0.0


class _Servicer(site_pb2_grpc.SiteWorkerServicer):
    def __init__(self, worker: Any):  # client/worker.py's SiteWorker
        self.worker = worker

    def Handle(self, request: site_pb2.HandleRequest, context: grpc.ServicerContext) -> site_pb2.HandleReply:
        content = recorddict_from_proto(ProtoRecordDict.FromString(request.content))
        try:
            reply = self.worker.handle(request.message_type, content,
                                       Timing(request.process_started_at, request.received_at))
        except Exception as exc:  # the round goes on without this site; the reason reaches the coordinator
            log.exception("site %s failed to handle a %s message", self.worker.config.name, request.message_type)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return site_pb2.HandleReply(content=recorddict_to_proto(reply).SerializeToString())

    def Status(self, request: site_pb2.StatusRequest, context: grpc.ServicerContext) -> site_pb2.StatusReply:
        return self.worker.status()


def serve(worker: Any, socket_path: Path) -> grpc.Server:
    """Serve the worker on a unix socket only its owner may use (mode 0600)."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    site_pb2_grpc.add_SiteWorkerServicer_to_server(_Servicer(worker), server)
    old_umask = os.umask(0o177)  # the socket is created 0600, with no window where others may connect
    try:
        server.add_insecure_port(f"unix://{socket_path}")
        server.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    return server

"""fedtl's Flower ClientApp: a thin shim that forwards each message to the site worker.

Flower starts a fresh process for every message, so this module imports only flwr, grpc
and the generated protobuf code: no torch, no transformers (a test checks). The site
worker's unix socket reaches it through the SuperNode's node-config (``socket``).
"""

from __future__ import annotations

import os
import time

_PROCESS_STARTED_AT = time.time()  # before the imports below: start-up cost is measured from here
# Set by fedtl's fork server (client/fork_server.py) in each ClientApp it forks: that process started there.
STARTED_AT_ENV = "FEDTL_CLIENTAPP_STARTED_AT"

import grpc  # noqa: E402
from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # noqa: E402

from fedtl.client.worker_api import GRPC_OPTIONS  # noqa: E402
from fedtl.shared.protocol import NodeConfigKey  # noqa: E402
from fedtl.v1 import site_pb2, site_pb2_grpc  # noqa: E402

DEFAULT_TIMEOUT = 3600.0

app = ClientApp()


def forward(msg: Message, context: Context) -> Message:
    received_at = time.time()
    socket = str(context.node_config.get(NodeConfigKey.SOCKET, ""))
    if not socket:
        raise RuntimeError("this SuperNode has no 'socket' in its node-config; start sites with `fedtl site`")
    timeout = float(context.node_config.get(NodeConfigKey.TIMEOUT, DEFAULT_TIMEOUT))
    request = site_pb2.HandleRequest(
        message_type=msg.metadata.message_type,
        run_id=msg.metadata.run_id,
        content=recorddict_to_proto(msg.content).SerializeToString(),
        received_at=received_at,
        process_started_at=process_started_at(),
    )
    with grpc.insecure_channel(f"unix://{socket}", options=GRPC_OPTIONS) as channel:
        reply = site_pb2_grpc.SiteWorkerStub(channel).Handle(request, timeout=timeout)
    content = recorddict_from_proto(ProtoRecordDict.FromString(reply.content))
    return Message(content=content, reply_to=msg)


def process_started_at() -> float:
    """When this ClientApp process started: its fork from the fork server, or this module's import."""
    try:
        return float(os.environ[STARTED_AT_ENV])
    except (KeyError, ValueError):
        return _PROCESS_STARTED_AT


@app.train()
def train(msg: Message, context: Context) -> Message:
    return forward(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return forward(msg, context)

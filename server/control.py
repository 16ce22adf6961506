"""Flower's Control API, called from this process: submit, follow and stop a run.

The ``flwr`` CLI is a fresh Python process per call (about 1.3 s of CPU here); following a
run by spawning ``flwr ls`` every few seconds took CPU from the sites on the same cores and
added children to stop on Ctrl-C. This client speaks the same protobuf-over-HTTP API
(``flwr.supercore.control.ControlHttpClient``) with short timeouts, so a stop never waits
long on a SuperLink that is going away.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
    UnregisterNodeRequest,
)
from flwr.supercore.control.control_http_client import ControlHttpClient

FINISHED = "finished"


class ControlError(RuntimeError):
    """The SuperLink's Control API refused or did not answer."""


@dataclass(frozen=True)
class RunState:
    """Flower's view of a run: ``status`` is ``pending|starting|running|finished:<sub-status>``."""

    run_id: int
    status: str
    details: str = ""
    bytes_sent: int = 0
    bytes_recv: int = 0

    @property
    def finished(self) -> bool:
        return self.status.startswith(FINISHED)

    def as_dict(self) -> dict[str, object]:
        return {"run-id": self.run_id, "status": self.status, "status-details": self.details,
                "bytes-sent": self.bytes_sent, "bytes-received": self.bytes_recv}


@dataclass(frozen=True)
class RegisteredNode:
    """A SuperNode the SuperLink knows: its id, public key (PEM), name and status."""

    node_id: int
    public_key: bytes
    name: str
    status: str


def loopback_tls(root_certificates: Path) -> ssl.SSLContext:
    """TLS for the coordinator's calls to its own SuperLink on loopback.

    The SuperLink's certificate names the coordinator's public host (``coordinator``,
    ``fl.example.org``), not the loopback address this process dials, so the certificate chain
    is verified against the CA but its names are not matched.
    """
    context = ssl.create_default_context(cafile=str(root_certificates))
    context.check_hostname = False  # verify_mode stays CERT_REQUIRED
    return context


class FlowerControl:
    def __init__(self, address: str, root_certificates: Path | None = None, timeout: float = 10.0):
        scheme = "https" if root_certificates else "http"
        verify: ssl.SSLContext | bool = loopback_tls(root_certificates) if root_certificates else False
        self._client = ControlHttpClient(f"{scheme}://{address}", verify=verify, timeout=timeout)
        self.address = address

    def _call(self, what: str, fn, request):
        try:
            return fn(request)
        except Exception as exc:  # httpx and Flower raise many types; the caller needs one
            raise ControlError(f"Flower Control API at {self.address}: {what} failed: {exc}") from None

    def start_run(self, app: Path, run_config: dict[str, str | int | float | bool]) -> int:
        """Build the app's FAB and start a run with ``run_config`` overriding its config keys."""
        from flwr.cli.build import build_fab_from_disk
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.supercore.fab import Fab

        content = build_fab_from_disk(app)
        fab = Fab(hashlib.sha256(content).hexdigest(), content, {})
        request = StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto(run_config))
        reply = self._call("StartRun", self._client.StartRun, request)
        if not reply.HasField("run_id"):
            raise ControlError(f"the SuperLink at {self.address} did not start the run")
        return int(reply.run_id)

    def run_state(self, run_id: int) -> RunState:
        reply = self._call("ListRuns", self._client.ListRuns, ListRunsRequest(run_id=run_id))
        if run_id not in reply.run_dict:
            raise ControlError(f"the SuperLink at {self.address} has no run {run_id}")
        run = reply.run_dict[run_id]
        status = run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else "")
        return RunState(run_id, status, run.status.details, int(run.bytes_sent), int(run.bytes_recv))

    def stop_run(self, run_id: int) -> None:
        self._call("StopRun", self._client.StopRun, StopRunRequest(run_id=run_id))

    # SuperNode authentication: the SuperLink admits only the public keys registered here.
    def register_node(self, public_key_pem: bytes, name: str) -> int:
        reply = self._call("RegisterNode", self._client.RegisterNode,
                           RegisterNodeRequest(public_key=public_key_pem, name=name))
        return int(reply.node_id)

    def unregister_node(self, node_id: int) -> None:
        self._call("UnregisterNode", self._client.UnregisterNode, UnregisterNodeRequest(node_id=node_id))

    def nodes(self) -> list[RegisteredNode]:
        reply = self._call("ListNodes", self._client.ListNodes, ListNodesRequest())
        return [RegisteredNode(int(n.node_id), bytes(n.public_key), n.name, n.status) for n in reply.nodes_info]

    def close(self) -> None:
        self._client.close()

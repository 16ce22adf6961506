"""A hostile site on real SuperNodes beside two honest ones: it can only be rejected.

The rogue is a real Flower SuperNode running fedtl's own ClientApp; behind it, instead of the
site worker, a worker of the attacker's making answers every round with a crafted reply: an
Array of another serialisation type, a .npy header declaring 2^50 elements, 2^62 examples
with 1e20 values, another site's name, a 5 MB report. Every round is aggregated from the two
honest sites, the rogue's reply is rejected with its reason in rounds.jsonl, and the global
encoder stays finite and close to what the honest sites sent.
"""

from __future__ import annotations

import io
import os
import tempfile
from concurrent import futures

import grpc
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedtl.server.resume import load_resume_point
from fedtl.shared.processes import child_env, free_port, start, tool
from fedtl.shared.protocol import ARRAYS, CONFIG, METRICS, REPORT, NodeConfigKey, ReportKey, RoundConfig, SiteMetric
from fedtl.shared.records import MANIFEST, PACKED, from_record, to_record
from fedtl.v1 import site_pb2, site_pb2_grpc
from tests.conftest import make_site
from tests.integration.harness import Federation


def npy_bytes(shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return out.getvalue() + b"\0" * 16


def blob(content: RecordDict, array: Array) -> None:
    content[ARRAYS] = ArrayRecord({MANIFEST: content[ARRAYS][MANIFEST], PACKED: array})


def huge(content: RecordDict) -> None:
    content[METRICS][SiteMetric.NUM_EXAMPLES] = 1 << 62
    content[ARRAYS] = to_record({n: np.full_like(v, 1e20) for n, v in from_record(content[ARRAYS]).items()})


# round -> (what the rogue sends, the words its rejection must hold)
ATTACKS = {
    1: (lambda c: blob(c, Array(dtype="float32", shape=(4,), stype="torch.Tensor", data=b"\0" * 16)),
        "serialisation type"),
    2: (lambda c: blob(c, Array(dtype="uint8", shape=(16,), stype="numpy.ndarray", data=npy_bytes((1 << 50,)))),
        "header declares"),
    3: (huge, "over norm_bound"),
    # whichever answers first: site_a's node holds the name (bound in round 1), or already used it this round
    4: (lambda c: c[REPORT].__setitem__(ReportKey.SITE, "site_a"), ("belongs to node", "already answered")),
    5: (lambda c: c[REPORT].__setitem__("notes", "x" * 5_000_000), "report of"),
}


class RogueWorker(site_pb2_grpc.SiteWorkerServicer):
    """Answers like a site (a small update for every tensor it got), then crafts the round's attack."""

    def Handle(self, request, context):
        received = recorddict_from_proto(ProtoRecordDict.FromString(request.content))
        rnd = RoundConfig.from_record(received[CONFIG]).server_round
        rng = np.random.default_rng(rnd)
        delta = {n: (0.01 * rng.standard_normal(a.shape)).astype(a.dtype)
                 for n, a in from_record(received[ARRAYS]).items()}
        reply = RecordDict({
            ARRAYS: to_record(delta),
            METRICS: MetricRecord({SiteMetric.NUM_EXAMPLES: 40, SiteMetric.TRAIN_LOSS: 1.0, SiteMetric.SCORE: 0.5}),
            REPORT: ConfigRecord({ReportKey.SITE: "rogue", ReportKey.TASKS: ["t"], ReportKey.PRIMARY: ["accuracy"]}),
        })
        ATTACKS[rnd][0](reply)
        return site_pb2.HandleReply(content=recorddict_to_proto(reply).SerializeToString())

    def Status(self, request, context):
        return site_pb2.StatusReply(site="rogue", ready=True)


def test_a_rogue_site_on_a_real_supernode_is_rejected_every_round(tmp_path):
    fed = Federation(tmp_path)
    for name in ("site_a", "site_b"):
        make_site(tmp_path / name, name=name, n=80, head_epochs=3)
    fed.write_config(rounds=len(ATTACKS), update_mode="last:1", max_steps=2, final_evaluate=False,
                     min_available_sites=3,  # every round samples all three
                     codec={"up": "none", "down": "none"}, mlflow={"enabled": False})
    socket = os.path.join(tempfile.mkdtemp(prefix="fedtl-rogue-"), "worker.sock")  # short: unix path limit
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[
        ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
    site_pb2_grpc.add_SiteWorkerServicer_to_server(RogueWorker(), server)
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        fed.start_coordinator()
        fed.start_site("site_a")
        fed.procs["rogue"] = start(
            [tool("flower-supernode"), "--superlink", fed.address, "--insecure", "--port", str(free_port()),
             "--node-config", f"{NodeConfigKey.SOCKET}='{socket}' {NodeConfigKey.SITE}='rogue'"],
            tmp_path / "rogue.log", env=child_env({"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}))
        fed.start_site("site_b")
        assert fed.wait_coordinator(600) == 0, fed.log("coordinator")
    finally:
        fed.stop_all()
        server.stop(0)
    rounds = fed.rounds()
    assert len(rounds) == len(ATTACKS), fed.log("coordinator")
    for record in rounds:
        rnd, why = record["round"], ATTACKS[record["round"]][1]
        assert record["aggregated"] and sorted(record["sites"]) == ["site_a", "site_b"], (rnd, record)
        [rejected] = record["rejected"]
        assert any(words in rejected["reason"] for words in ([why] if isinstance(why, str) else why)), (rnd, rejected)
    point = load_resume_point(fed.state_dir)
    assert point is not None and point.round == len(ATTACKS)
    assert all(np.isfinite(a).all() and np.abs(a).max() < 1e3 for a in point.arrays.values()), \
        "the global encoder must stay within what honest sites send"

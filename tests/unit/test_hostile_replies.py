"""A hostile site's reply can only be rejected: it never ends the run, and it cannot take the model.

The round loop in-process on the fake Grid: two honest sites and one rogue whose reply is
crafted (an Array of another serialisation type, a .npy header declaring 2^50 elements, an
absurd example count, values that overflow the aggregate, another site's name). Every round
is aggregated from the honest sites, the rogue's reply is rejected with its reason, and the
global encoder stays finite. Records are also fuzzed: any bytes in, a verdict out.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtl.server.resume import load_resume_point
from fedtl.shared.protocol import ARRAYS, METRICS, REPORT, ReportKey, SiteMetric
from fedtl.shared.records import MANIFEST, PACKED, array_numpy, from_record, to_record
from tests.fakes import HonestSite, silent
from tests.unit.test_round_contract import run


def rogue(change, examples: int = 10, name: str = "rogue"):
    """A node that answers like an honest site, then passes its reply through ``change``; the honest
    site (with the deltas it drew) is the node's ``site``."""
    site = HonestSite(name, examples=examples, seed=9)

    def answer(msg: Message):
        content = site(msg)
        change(content)
        return content

    answer.site = site  # type: ignore[attr-defined]
    return answer


def npy_bytes(header_shape: tuple[int, ...], descr: str = "<f4", payload: bytes = b"\0" * 16) -> bytes:
    """A .npy file whose header declares ``header_shape`` of ``descr`` over ``payload``."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": header_shape})
    return out.getvalue() + payload


def packed_with_blob(content, blob: Array) -> None:
    record = content[ARRAYS]
    content[ARRAYS] = ArrayRecord({MANIFEST: record[MANIFEST], PACKED: blob})


CRAFTED = {
    "an Array of another serialisation type": (
        lambda c: packed_with_blob(c, Array(dtype="float32", shape=(4,), stype="torch.Tensor", data=b"\0" * 16)),
        "serialisation type"),
    "a .npy header declaring 2^50 elements": (
        lambda c: packed_with_blob(c, Array(dtype="uint8", shape=(16,), stype="numpy.ndarray",
                                            data=npy_bytes((1 << 50,)))),
        "header declares"),
    "an object array": (
        lambda c: packed_with_blob(c, Array(dtype="O", shape=(2,), stype="numpy.ndarray",
                                            data=npy_bytes((2,), descr="|O"))),
        "only numeric arrays"),
    "a manifest that is not JSON": (
        lambda c: c.__setitem__(ARRAYS, ArrayRecord({MANIFEST: Array(np.frombuffer(b"{nope", np.uint8)),
                                                      PACKED: c[ARRAYS][PACKED]})),
        "manifest"),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_reply_is_rejected_and_the_round_goes_on(tmp_path, kind):
    change, why = CRAFTED[kind]
    recorder, _ = run(tmp_path, {1: HonestSite("a", seed=1), 2: HonestSite("b", seed=2), 3: rogue(change)},
                      min_sites=2)
    [record] = recorder.rounds()
    assert record["aggregated"] and sorted(record["sites"]) == ["a", "b"]
    [entry] = record["rejected"]
    assert why in entry["reason"], entry
    point = load_resume_point(tmp_path / "coordinator")
    assert all(np.isfinite(a).all() for a in point.arrays.values())


def test_an_absurd_example_count_is_capped(tmp_path):
    def claim_everything(content):
        content[METRICS][SiteMetric.NUM_EXAMPLES] = 1 << 62

    a, b = HonestSite("a", examples=10, seed=1), HonestSite("b", examples=10, seed=2)
    greedy = rogue(claim_everything, name="greedy")
    recorder, grid = run(tmp_path, {1: a, 2: b, 3: greedy}, min_sites=2, max_site_examples=10,
                         strategy={"name": "fedavg"})  # the plain mean, not extrapolated
    [record] = recorder.rounds()
    assert record["accepted"] == 3 and not record["rejected"]
    sent = from_record(grid.sent[0].content["arrays"])
    point = load_resume_point(tmp_path / "coordinator")
    for name, before in sent.items():  # every site weighs 10: the plain mean
        expected = before + (a.deltas[0][name] + b.deltas[0][name] + greedy.site.deltas[0][name]) / 3
        np.testing.assert_allclose(point.arrays[name], expected, rtol=1e-5, atol=1e-6)


def test_an_aggregate_that_overflows_is_never_kept(tmp_path):
    def huge(content):
        delta = from_record(content[ARRAYS])
        content[ARRAYS] = to_record({n: np.full_like(v, 3e38) for n, v in delta.items()})

    # the norm bound would refuse it first: off here, to test the last line of defence
    recorder, grid = run(tmp_path, {1: HonestSite("a", seed=1), 2: HonestSite("b", seed=2), 3: rogue(huge)},
                         min_sites=2, norm_bound=None)
    [record] = recorder.rounds()
    assert not record["aggregated"], "a sum past float32's range must not become the global encoder"
    assert any("NaN or inf" in r["reason"] for r in record["rejected"]), record["rejected"]
    sent = from_record(grid.sent[0].content["arrays"])
    point = load_resume_point(tmp_path / "coordinator")
    for name, before in sent.items():
        np.testing.assert_array_equal(point.arrays[name], before)


def test_a_second_reply_under_a_name_already_heard_this_round_is_rejected(tmp_path):
    def impersonate(content):
        content[REPORT][ReportKey.SITE] = "a"

    recorder, _ = run(tmp_path, {1: HonestSite("a", seed=1), 2: HonestSite("b", seed=2), 3: rogue(impersonate)},
                      min_sites=2)
    [record] = recorder.rounds()
    assert sorted(record["sites"]) == ["a", "b"] and record["accepted"] == 2
    [entry] = record["rejected"]
    assert "already answered this round from node 1" in entry["reason"]


def scaled(factor: float):
    def change(content):
        content[ARRAYS] = to_record({n: v * factor for n, v in from_record(content[ARRAYS]).items()})
    return change


@pytest.mark.parametrize("rounds_before", [0, 1])
def test_an_update_far_larger_than_the_sites_typical_one_is_rejected(tmp_path, rounds_before):
    """Round 1 judges against the first replies' lower median, later rounds against the last round's."""
    big = scaled(1000.0)
    calls = {"n": 0}

    def late_rogue(content):
        calls["n"] += 1
        if calls["n"] > rounds_before:
            big(content)

    recorder, grid = run(tmp_path, {1: HonestSite("a", seed=1), 2: HonestSite("b", seed=2), 3: rogue(late_rogue)},
                         min_sites=2, rounds=rounds_before + 1)
    record = recorder.rounds()[-1]
    assert record["aggregated"] and sorted(record["sites"]) == ["a", "b"]
    [entry] = record["rejected"]
    assert entry["site"] == "rogue" and "over norm_bound 10 x the sites' typical norm" in entry["reason"], entry
    assert all(r["accepted"] == 3 for r in recorder.rounds()[:-1])


def test_a_node_that_changes_its_name_is_rejected(tmp_path):
    calls = {"n": 0}

    def turncoat(content):
        calls["n"] += 1
        if calls["n"] == 2:
            content[REPORT][ReportKey.SITE] = "c"

    recorder, _ = run(tmp_path, {1: HonestSite("a", seed=1), 2: HonestSite("b", seed=2), 3: rogue(turncoat)},
                      min_sites=2, rounds=2)
    first, second = recorder.rounds()
    assert first["accepted"] == 3 and second["accepted"] == 2
    [entry] = second["rejected"]
    assert "answered as site 'rogue' before; its reply now claims 'c'" in entry["reason"]


def test_with_site_keys_a_reply_may_only_claim_its_keys_name(tmp_path):
    from fedtl.server.identity import SiteIdentity, write_node_names

    def impersonate(content):
        content[REPORT][ReportKey.SITE] = "a"

    names = tmp_path / "site_nodes.json"
    write_node_names(names, {1: "a", 2: "B", 3: "rogue"})  # b's key was made as `--site B`: the same site
    recorder, _ = run(tmp_path, {1: silent, 2: HonestSite("b", seed=2), 3: rogue(impersonate)},
                      min_sites=1, identity=SiteIdentity(names), round_timeout=2)
    [record] = recorder.rounds()
    assert list(record["sites"]) == ["b"], "node 3 holds rogue's key: it cannot stand in for a, even when a is silent"
    reasons = [r["reason"] for r in record["rejected"]]
    assert reasons == ["node 3 holds the key of site 'rogue' but its reply claims to be 'a'"], record


def test_site_identity_rules():
    from fedtl.server.identity import SiteIdentity

    identity = SiteIdentity()
    assert identity.refuse(1, "a", lambda: {1}) is None
    identity.bind(1, "a")
    assert identity.refuse(1, "a", lambda: {1, 2}) is None
    assert "still connected" in identity.refuse(2, "a", lambda: {1, 2})
    assert identity.refuse(2, "a", lambda: {2}) is None, "a site that restarted takes its name back"
    assert "answered as site 'a' before" in identity.refuse(1, "b", lambda: {1})


def test_the_norm_gate_holds_only_until_it_has_a_reference():
    from fedtl.server.norm_bound import WARMUP, NormGate, lower_median

    assert lower_median([3.0, 1.0]) == 1.0 and lower_median([5.0, 1.0, 2.0]) == 2.0
    gate = NormGate(10.0, None)
    decided = [d for i in range(WARMUP) for d in gate.offer(i, 1.0 if i else 1e6)]
    assert [i for i, why in decided if why] == [0] and gate.reference == 1.0
    assert gate.offer("late", 11.0)[0][1] is not None and gate.offer("ok", 9.0) == [("ok", None)]
    assert NormGate(None, None).offer("x", 1e30) == [("x", None)]
    assert NormGate(10.0, 0.0).reference is None, "a zero reference (nothing trained) bounds nothing"


# ---------------------------------------------------------------- fuzzing: any bytes in, a verdict out
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), stype=st.sampled_from(["numpy.ndarray", "torch.Tensor", ""]))
def test_any_array_bytes_give_an_array_or_a_value_error(data, stype):
    array = Array(dtype="uint8", shape=(len(data),), stype=stype, data=data)
    try:
        out = array_numpy(array)
    except ValueError:
        return
    assert isinstance(out, np.ndarray) and out.dtype.kind in "biuf"


@settings(max_examples=200, deadline=None)
@given(manifest=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                             lambda inner: st.lists(inner, max_size=4), max_leaves=12),
       blob=st.binary(max_size=64))
def test_any_manifest_gives_tensors_or_a_value_error(manifest, blob):
    record = ArrayRecord({MANIFEST: Array(np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)),
                          PACKED: Array(np.frombuffer(blob, dtype=np.uint8))})
    try:
        out = from_record(record)
    except ValueError:
        return
    assert all(isinstance(v, np.ndarray) for v in out.values())


SHAPES = {"w": (3, 4), "b": (4,)}
WIRE_DTYPES = [np.float32, np.float16, np.uint16, np.int8, np.int32, np.float64, np.uint8]


@st.composite
def wire_payloads(draw):
    """Named arrays under the names some codec uses, with any dtype, size and bytes."""
    names = ["w", "b", "w~f16", "w~bf16", "w~q", "w~scale", "w~idx", "w~val", "b~q", "b~scale", "b~idx", "b~val"]
    wire = {}
    for name in draw(st.lists(st.sampled_from(names), max_size=6, unique=True)):
        dtype = draw(st.sampled_from(WIRE_DTYPES))
        raw = draw(st.binary(max_size=64))
        raw = raw[: len(raw) // np.dtype(dtype).itemsize * np.dtype(dtype).itemsize]
        wire[name] = np.frombuffer(raw, dtype=dtype)
    return wire


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire=wire_payloads(), codec=st.sampled_from(["none", "fp16", "bf16", "int8", "int8:tensor", "topk:0.5"]))
def test_any_codec_payload_gives_tensors_or_a_codec_error(wire, codec):
    from fedtl.shared.codecs import Codec, CodecError, decode

    try:
        out = decode(wire, Codec.parse(codec), SHAPES)
    except CodecError:
        return
    assert {n: a.shape for n, a in out.items()} == SHAPES


def _metric_values():
    return st.one_of(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), st.floats())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metrics=st.dictionaries(st.sampled_from(["num-examples", "score", "train_loss", "x"]), _metric_values()),
       report=st.dictionaries(st.text(max_size=12), st.one_of(st.text(max_size=40), st.integers(), st.floats(),
                                                              st.lists(st.text(max_size=8), max_size=4))),
       scale=st.sampled_from([0.0, 1.0, 1e20, float("nan")]), drop=st.sampled_from([None, "arrays", "metrics"]))
def test_any_reply_gets_a_verdict_never_an_exception(metrics, report, scale, drop):
    """A whole reply, any metrics, report and update: check_update and check_evaluation answer."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from fedtl.harness.grid import LocalGrid
    from fedtl.server.validation import check_evaluation, check_update

    expected = {"w": np.zeros((3, 4), np.float32)}
    content = RecordDict({REPORT: ConfigRecord(report)})
    if drop != "arrays":
        content[ARRAYS] = to_record({"w": np.full((3, 4), scale, np.float32)})
    if drop != "metrics":
        content[METRICS] = MetricRecord(metrics)
    grid = LocalGrid({7: lambda request: content})  # the reply as Flower builds it, from node 7
    [msg] = grid.pull_messages(grid.push_messages([Message(RecordDict(), dst_node_id=7, message_type="train")]))
    verdict = check_update(msg, expected, None, 1000)
    assert verdict.kind in ("accepted", "rejected") and (verdict.ok or verdict.reason)
    if verdict.ok:
        assert 0 < msg.content[METRICS]["num-examples"] <= 1000
    reason = check_evaluation(msg, 1000)
    assert reason is None or isinstance(reason, str)


# ---------------------------------------------------------------- state and secrets
def test_the_start_record_never_holds_the_hub_token(tmp_path):
    token = "s3cret-token-0123456789"
    recorder, _ = run(tmp_path, {1: HonestSite("a", seed=1)}, hub={"token": token})
    start = next(info for kind, info in recorder.events if kind == "start")
    assert token not in json.dumps(start) and start["config"]["hub"]["token"] == "***"


def test_resume_falls_back_to_the_point_before_an_unreadable_newest(tmp_path):
    from fedtl.server.resume import load_resume_point

    run(tmp_path, {1: HonestSite("a", seed=1)}, rounds=2)
    state = tmp_path / "coordinator"
    assert load_resume_point(state).round == 2
    (state / "resume" / "round-0002" / "global.safetensors").write_bytes(b"\0" * 10)  # a lost last write
    assert load_resume_point(state).round == 1


class FakeControl:
    """Flower's Control API as the registry sees it: registered keys, and what it was asked."""

    def __init__(self):
        self.registered: dict[int, tuple[bytes, str]] = {}
        self.unregistered: list[int] = []

    def nodes(self):
        from fedtl.server.control import RegisteredNode

        return [RegisteredNode(i, pem, name, "registered") for i, (pem, name) in self.registered.items()]

    def register_node(self, pem: bytes, name: str) -> int:
        self.registered[len(self.registered) + len(self.unregistered) + 1] = (pem, name)
        return len(self.registered)

    def unregister_node(self, node_id: int) -> None:
        self.unregistered.append(node_id)
        del self.registered[node_id]


def test_an_allowed_sites_edit_is_applied_only_once_it_reads_the_same_twice(tmp_path):
    from fedtl.server.site_registry import SiteRegistry
    from fedtl.shared.site_keys import allow_site, generate_site_key

    allowed = tmp_path / "allowed_sites.txt"
    for name in ("clinic", "pharmacy"):
        allow_site(allowed, generate_site_key(tmp_path / "sites", name)[1])
    full = allowed.read_bytes()
    control = FakeControl()
    registry = SiteRegistry(control, allowed)
    registry.sync(force=True)
    assert sorted(name for _, name in control.registered.values()) == ["clinic", "pharmacy"]

    allowed.write_bytes(b"")  # an editor's save caught half-way: read once, not applied
    registry.sync()
    allowed.write_bytes(full)
    registry.sync()
    assert not control.unregistered

    kept = b"".join(line for line in full.splitlines(keepends=True) if not line.rstrip().endswith(b" pharmacy"))
    allowed.write_bytes(kept)  # pharmacy revoked for real: applied on the second look
    registry.sync()
    assert not control.unregistered
    registry.sync()
    assert [name for _, name in control.registered.values()] == ["clinic"] and len(control.unregistered) == 1


def test_a_socket_folder_another_user_could_reach_is_not_used(tmp_path, monkeypatch):
    import hashlib
    import os

    from fedtl.client.site_daemon import socket_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    state = tmp_path / ("deep" * 30)  # too long for a socket address: the socket goes to a runtime folder
    tag = hashlib.sha256(str((state / "worker.sock").resolve()).encode()).hexdigest()[:12]
    planted = tmp_path / f"fedtl-{os.getuid()}-{tag}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)  # made first, open to everyone
    path = socket_path(state)
    assert path.parent != planted and path.parent.stat().st_mode & 0o077 == 0
    assert socket_path(tmp_path / ("other" * 30)).parent.stat().st_mode & 0o777 == 0o700


def test_a_nan_update_is_named_as_such_even_when_its_reported_norm_is_nan_too(tmp_path):
    """A real site with a NaN update also reports a NaN norm: the reason names the tensor."""
    def nan_everything(content):
        delta = from_record(content[ARRAYS])
        first = sorted(delta)[0]
        delta[first] = np.full_like(delta[first], np.nan)
        content[ARRAYS] = to_record(delta)
        content[METRICS]["update_norm"] = float("nan")

    recorder, _ = run(tmp_path, {1: HonestSite("a", seed=1), 2: rogue(nan_everything)}, min_sites=1)
    [entry] = recorder.rounds()[0]["rejected"]
    assert "holds NaN or inf" in entry["reason"] and "tensor" in entry["reason"], entry

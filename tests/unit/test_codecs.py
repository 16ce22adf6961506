"""Update codecs: round trips within their stated bounds, bytes, bad payloads, error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from fedtl.shared.codecs import Codec, CodecError, ErrorFeedback, decode, encode, nbytes

SHAPES = {"layer.0.w": (96, 64), "layer.0.b": (64,), "layer.1.w": (64, 3, 8)}


def updates(seed: int, scale: float = 1e-2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # magnitudes over several decades, as in real updates
    return {n: (rng.standard_normal(s) * scale * 10 ** rng.uniform(-2, 1, s)).astype(np.float32)
            for n, s in SHAPES.items()}


def shapes_of(arrays):
    return {n: a.shape for n, a in arrays.items()}


def test_parse_and_names():
    assert str(Codec.parse("INT8")) == "int8" and Codec.parse("int8:tensor").per_row is False
    assert Codec.parse("topk:0.01").fraction == 0.01 and not Codec.parse("fp32").lossy
    for bad in ("int4", "topk:0", "topk:2", "topk:x"):
        with pytest.raises(ValueError, match="unknown codec"):
            Codec.parse(bad)


@pytest.mark.parametrize("text", ["none", "fp16", "bf16", "int8", "int8:tensor"])
def test_round_trip_within_bound(text):
    codec, x = Codec.parse(text), updates(0)
    got = decode(encode(x, codec), codec, shapes_of(x))
    for name, value in x.items():
        err = np.abs(got[name] - value)
        if text == "none":
            bound = np.zeros_like(value)
        elif text == "fp16":
            bound = 2.0**-11 * np.abs(value) + 2.0**-25
        elif text == "bf16":
            bound = 2.0**-8 * np.abs(value)
        else:
            rows = value.reshape(value.shape[0], -1) if codec.per_row and value.ndim >= 2 else value.reshape(1, -1)
            bound = np.broadcast_to(np.abs(rows).max(axis=1, keepdims=True) / 127 / 2 * (1 + 1e-5),
                                    rows.shape).reshape(value.shape)
        assert (err <= bound).all(), (name, float((err - bound).max()))
        assert got[name].dtype == np.float32


def test_topk_keeps_the_largest_values():
    codec, x = Codec.parse("topk:0.05"), updates(1)
    got = decode(encode(x, codec), codec, shapes_of(x))
    for name, value in x.items():
        kept = got[name] != 0
        assert kept.sum() == np.ceil(0.05 * value.size)
        assert np.abs(value[~kept]).max() <= np.abs(value[kept]).min()  # dropped: the smallest
        assert np.allclose(got[name][kept], value[kept], rtol=2.0**-11, atol=2.0**-25)  # kept: as fp16


def test_bytes_on_the_wire():
    x = {"w": np.ones((384, 384), np.float32), "b": np.ones(384, np.float32)}
    full = nbytes(encode(x, Codec.parse("none")))
    assert full == 4 * (384 * 384 + 384)
    assert nbytes(encode(x, Codec.parse("fp16"))) == full / 2
    assert nbytes(encode(x, Codec.parse("int8"))) <= full / 3.9
    assert nbytes(encode(x, Codec.parse("topk:0.01"))) <= full / 50


@pytest.mark.parametrize("text", ["fp16", "int8", "topk:0.1"])
def test_bad_payloads_are_named(text):
    codec, x = Codec.parse(text), updates(2)
    wire = encode(x, codec)
    first = sorted(wire)[0]
    with pytest.raises(CodecError, match="lacks"):
        decode({k: v for k, v in wire.items() if k != first}, codec, shapes_of(x))
    with pytest.raises(CodecError, match="no tensor"):
        decode({**wire, "head.task.weight": np.zeros(3, np.float32)}, codec, shapes_of(x))
    wrong = dict(wire, **{first: wire[first].astype(np.float64)})
    with pytest.raises(CodecError, match="expected"):
        decode(wrong, codec, shapes_of(x))
    if text == "topk:0.1":
        broken = dict(wire)
        idx = next(k for k in wire if k.endswith("#idx"))
        broken[idx] = wire[idx].copy()
        broken[idx][0] = 10**7
        with pytest.raises(CodecError, match="outside"):
            decode(broken, codec, shapes_of(x))


def accumulated_error(codec: Codec, feedback: bool, rounds: int) -> list[float]:
    """||sum of decoded - sum of true updates|| after each round."""
    ef = ErrorFeedback(codec)
    true = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    got = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    out = []
    for r in range(rounds):
        update = updates(100 + r)
        if not feedback:
            ef.reset()
        _, decoded = ef.encode(update)
        for n in SHAPES:
            true[n] += update[n]
            got[n] += decoded[n]
        out.append(float(np.sqrt(sum(np.square(got[n] - true[n]).sum() for n in SHAPES))))
    return out


@pytest.mark.parametrize("text", ["int8", "topk:0.1", "bf16"])
def test_error_feedback_keeps_the_accumulated_error_bounded(text):
    codec = Codec.parse(text)
    with_ef = accumulated_error(codec, True, 50)
    without = accumulated_error(codec, False, 50)
    one_round = without[0]
    # with feedback the accumulated error is the current residual: it stops growing
    assert max(with_ef[25:]) <= 1.5 * max(with_ef[5:25])
    # without it, independent errors add up (about sqrt(rounds) times one round's)
    assert without[49] > 1.3 * without[24] and without[49] > 3 * one_round
    assert with_ef[49] < without[49]
    if codec.kind == "int8":  # residual within one round's quantisation error
        assert with_ef[49] <= 1.5 * one_round


@pytest.mark.parametrize("text", ["fp16", "bf16", "int8", "int8:tensor", "topk:0.1"])
def test_a_broken_update_stays_broken_and_does_not_poison_the_next(text):
    codec, x = Codec.parse(text), updates(3)
    x["layer.0.w"][3, 5] = np.nan
    x["layer.0.b"][0] = np.inf
    ef = ErrorFeedback(codec)
    wire = ef.encode(x)[0]
    try:  # the receiver either refuses the payload or sees the non-finite values
        got = decode(wire, codec, shapes_of(x))
        assert not all(np.isfinite(v).all() for v in got.values())
    except CodecError:
        pass
    assert ef.residual == {}
    _, clean = ef.encode(updates(4))
    assert all(np.isfinite(v).all() for v in clean.values())

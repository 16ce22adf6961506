"""Update codecs: how encoder tensors are packed for the wire, used by coordinator and sites alike.

A codec turns named fp32 tensors into named wire arrays and back. What is encoded is what is
counted: the round table and MLflow report the bytes of the wire arrays.

| codec         | wire arrays per tensor ``t``                    | bytes / value | error per value (bound)         |
|---------------|-------------------------------------------------|---------------|---------------------------------|
| ``none``      | ``t`` (float32)                                 | 4             | 0                               |
| ``fp16``      | ``t#f16`` (float16)                             | 2             | 2^-11 * abs(x) + 2^-25 (1)      |
| ``bf16``      | ``t#bf16`` (uint16: the top half of a float32)  | 2             | 2^-8 * abs(x)                   |
| ``int8``      | ``t#q`` (int8), ``t#scale`` (float32 per row)   | ~1            | scale / 2, scale = max abs(row) / 127 |
| ``int8:tensor`` | as ``int8``, one scale per tensor             | ~1            | scale / 2, scale = max abs(t) / 127 |
| ``topk:F``    | ``t#idx`` (int32), ``t#val`` (float16)          | 6 per kept    | dropped values: abs(x); kept: as fp16 |

(1) fp16 clips at +-65504; what is clipped, like every other loss, goes to error feedback.
Rows are the first axis of a tensor (one scale for 1-D tensors). ``topk:F`` keeps the
``ceil(F * size)`` largest magnitudes of each tensor.

Lossy codecs are used with ``ErrorFeedback`` (Seide et al. 2014; Karimireddy et al. 2019):
what encoding dropped is added to the next update, so errors do not accumulate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

SEP = "#"
FP16_MAX = float(np.finfo(np.float16).max)


class CodecError(ValueError):
    """A wire payload that does not decode: wrong names, dtypes, shapes or indices."""


@dataclass(frozen=True)
class Codec:
    kind: Literal["none", "fp16", "bf16", "int8", "topk"] = "none"
    per_row: bool = True  # int8: one scale per row (else per tensor)
    fraction: float = 1.0  # topk: share of each tensor's values kept

    @classmethod
    def parse(cls, text: str) -> Codec:
        text = str(text).strip().lower()
        if text in ("none", "fp32", "fp16", "bf16", "int8"):
            return cls("none" if text == "fp32" else text)  # type: ignore[arg-type]
        if text == "int8:tensor":
            return cls("int8", per_row=False)
        if text.startswith("topk:"):
            try:
                fraction = float(text.split(":", 1)[1])
            except ValueError:
                fraction = 0.0
            if 0 < fraction <= 1:
                return cls("topk", fraction=fraction)
        raise ValueError(f"unknown codec {text!r}; use none, fp16, bf16, int8, int8:tensor or topk:F (0 < F <= 1)")

    def __str__(self) -> str:
        if self.kind == "int8" and not self.per_row:
            return "int8:tensor"
        return f"topk:{self.fraction:g}" if self.kind == "topk" else self.kind

    @property
    def lossy(self) -> bool:
        return self.kind != "none"


# ---------------------------------------------------------------- one tensor
def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the upper 16 bits, rounded to nearest even (what torch's bfloat16 does)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def _fp16(x: np.ndarray) -> np.ndarray:
    """float16, finite values clipped to its range; NaN and inf stay what they are, so the
    receiver rejects them rather than a clipped stand-in."""
    return np.where(np.isfinite(x), np.clip(x, -FP16_MAX, FP16_MAX), x).astype(np.float16)


def _rows(x: np.ndarray, per_row: bool) -> np.ndarray:
    return x.reshape(x.shape[0], -1) if per_row and x.ndim >= 2 else x.reshape(1, -1)


def encode_tensor(name: str, x: np.ndarray, codec: Codec) -> dict[str, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    if codec.kind == "none":
        return {name: np.ascontiguousarray(x)}
    if codec.kind == "fp16":
        return {f"{name}{SEP}f16": _fp16(x)}
    if codec.kind == "bf16":
        return {f"{name}{SEP}bf16": _bf16_bits(x)}
    if codec.kind == "int8":
        rows = _rows(x, codec.per_row)
        scale = (np.abs(rows).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0)
        with np.errstate(invalid="ignore"):  # NaN/inf rows: their scale is non-finite and the receiver refuses it
            q = np.clip(np.rint(rows / safe), -127, 127).astype(np.int8)
        return {f"{name}{SEP}q": q.reshape(x.shape), f"{name}{SEP}scale": scale.reshape(-1)}
    flat = x.reshape(-1)
    k = min(flat.size, max(1, math.ceil(codec.fraction * flat.size)))
    idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:] if k < flat.size else np.arange(flat.size)
    idx = np.sort(idx).astype(np.int32)
    values = _fp16(flat[idx])
    return {f"{name}{SEP}idx": idx, f"{name}{SEP}val": values}


def _take(wire: Mapping[str, np.ndarray], key: str, dtype: type, used: set[str]) -> np.ndarray:
    if key not in wire:
        raise CodecError(f"payload lacks {key!r}")
    value = np.asarray(wire[key])
    if value.dtype != np.dtype(dtype):
        raise CodecError(f"{key!r} is {value.dtype}, expected {np.dtype(dtype)}")
    used.add(key)
    return value


def _shaped(key: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(value.shape) != tuple(shape):
        raise CodecError(f"{key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value


def decode_tensor(name: str, wire: Mapping[str, np.ndarray], shape: tuple[int, ...], codec: Codec,
                  used: set[str]) -> np.ndarray:
    if codec.kind == "none":
        return _shaped(name, _take(wire, name, np.float32, used), shape).astype(np.float32, copy=True)
    if codec.kind == "fp16":
        key = f"{name}{SEP}f16"
        return _shaped(key, _take(wire, key, np.float16, used), shape).astype(np.float32)
    if codec.kind == "bf16":
        key = f"{name}{SEP}bf16"
        bits = _shaped(key, _take(wire, key, np.uint16, used), shape)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    size = math.prod(shape)
    if codec.kind == "int8":
        q = _shaped(f"{name}{SEP}q", _take(wire, f"{name}{SEP}q", np.int8, used), shape)
        rows = shape[0] if codec.per_row and len(shape) >= 2 else 1
        scale = _shaped(f"{name}{SEP}scale", _take(wire, f"{name}{SEP}scale", np.float32, used), (rows,))
        if not np.isfinite(scale).all() or (scale < 0).any():
            raise CodecError(f"{name}{SEP}scale holds a negative or non-finite scale")
        return (q.reshape(rows, -1).astype(np.float32) * scale[:, None]).reshape(shape)
    idx = _take(wire, f"{name}{SEP}idx", np.int32, used)
    values = _take(wire, f"{name}{SEP}val", np.float16, used)
    if idx.ndim != 1 or values.shape != idx.shape:
        raise CodecError(f"{name}: {idx.shape} indices for {values.shape} values")
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise CodecError(f"{name}: an index is outside the tensor's {size} values")
    out = np.zeros(size, dtype=np.float32)
    out[idx] = values.astype(np.float32)
    return out.reshape(shape)


# ---------------------------------------------------------------- named tensors
def encode(arrays: Mapping[str, np.ndarray], codec: Codec) -> dict[str, np.ndarray]:
    """Named fp32 tensors -> named wire arrays."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(arrays):
        out.update(encode_tensor(name, arrays[name], codec))
    return out


def decode(wire: Mapping[str, np.ndarray], codec: Codec, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Named wire arrays -> the named fp32 tensors of ``shapes``; CodecError names what does not fit."""
    used: set[str] = set()
    out = {name: decode_tensor(name, wire, tuple(shape), codec, used) for name, shape in sorted(shapes.items())}
    extra = sorted(set(wire) - used)
    if extra:
        raise CodecError(f"payload holds arrays no tensor of the update mode explains: {extra[:3]}")
    return out


def nbytes(wire: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in wire.values()))


class ErrorFeedback:
    """A lossy codec with memory: what encoding dropped is added to the next update.

    With it, the sum of what was decoded over rounds stays within one round's error of the
    sum of the true updates; without it, each round's error adds up.
    """

    def __init__(self, codec: Codec):
        self.codec = codec
        self.residual: dict[str, np.ndarray] = {}

    def encode(self, update: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(wire arrays, what the receiver decodes) for ``update`` plus the carried residual."""
        corrected = {}
        for name, value in update.items():
            value = np.asarray(value, dtype=np.float32)
            carried = self.residual.get(name)
            corrected[name] = value + carried if carried is not None and carried.shape == value.shape else value
        wire = encode(corrected, self.codec)
        if not all(np.isfinite(v).all() for v in corrected.values()):
            self.residual = {}  # a broken update goes out as it is (to be rejected); it must not poison the next
            return wire, corrected
        decoded = decode(wire, self.codec, {n: v.shape for n, v in corrected.items()})
        if self.codec.lossy:
            self.residual = {n: corrected[n] - decoded[n] for n in corrected}
        return wire, decoded

    def reset(self) -> None:
        self.residual = {}

"""Conversions between numpy tensors, metric dicts and Flower records (numpy only, no torch)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

# The names of records and keys in messages live in fedtl.shared.protocol.


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def record_nbytes(record: ArrayRecord) -> int:
    """Serialised size of an ArrayRecord's arrays (what crosses the wire), without converting them."""
    return int(sum(len(array.data) for array in record.values()))


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A short fingerprint of named tensors (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def l2_norm(arrays: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays.values())))

"""Conversions between numpy tensors, metric dicts and Flower records (numpy only, no torch)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

# Reply layout (site -> coordinator), one Flower exchange per round:
ARRAYS = "arrays"    # ArrayRecord: encoder delta for the update mode's tensors
METRICS = "metrics"  # MetricRecord: same keys at every site (what Flower strategies average)
REPORT = "report"    # ConfigRecord: this site's name, tasks and per-task metrics
CONFIG = "config"    # ConfigRecord: round config (coordinator -> site)
NUM_EXAMPLES = "num-examples"


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


def flatten(nested: Mapping[str, object], prefix: str = "", sep: str = "/") -> dict[str, float]:
    """{"a": {"b": 1.0}} -> {"a/b": 1.0}; numeric leaves only."""
    out: dict[str, float] = {}
    for key, value in nested.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            out[name] = float(value)
    return out

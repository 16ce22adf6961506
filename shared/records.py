"""Conversions between numpy tensors, metric dicts and Flower records (numpy only, no torch)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

# The names of records and keys in messages live in fedtl.shared.protocol.

# Named tensors travel packed: all their bytes in one Array and a JSON manifest (name, dtype,
# shape, in order) in another. Flower moves every Array as its own objects, each fetched by its
# own request at every hop, so an encoder's 30-100 tensors cost 30-100 times the requests of
# one; with 12 sites on one machine, the same bytes in 37 arrays made Flower's own round 1.4x
# longer than in one (benchmarks/README, "Many real sites").
PACKED = "fedtl.packed"
MANIFEST = "fedtl.manifest"
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what a packed tensor may be
MAX_MANIFEST_BYTES = 4 << 20  # a manifest lists names, dtypes and shapes: a few KB for an encoder


NUMPY_STYPE = "numpy.ndarray"  # Flower's serialisation type of an Array built from a numpy array
MAX_ARRAY_BYTES = 8 << 30  # no tensor or packed encoder fedtl sends is larger


def array_numpy(array: Array) -> np.ndarray:
    """An Array that a peer sent, as numpy, trusting nothing in it.

    Flower's ``Array.numpy()`` hands the bytes to ``np.load``, which allocates whatever the
    ``.npy`` header declares (128 bytes can claim 2^50 elements) and raises TypeError for
    another serialisation type. Here the header is read first: a non-numeric dtype, a size that
    is not the payload's, or another stype is a ValueError, and nothing is allocated for it.
    """
    from io import BytesIO

    from numpy.lib import format as npy

    if array.stype != NUMPY_STYPE:
        raise ValueError(f"array of serialisation type {str(array.stype)[:40]!r}, not {NUMPY_STYPE}")
    data = array.data if isinstance(array.data, bytes) else bytes(array.data)
    stream = BytesIO(data)
    try:
        version = npy.read_magic(stream)
        header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = header(stream, max_header_size=1024)
    except Exception as err:  # any header npy cannot read, however it fails
        raise ValueError(f"array bytes are not a .npy array ({type(err).__name__})") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject or any(not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"array of {dtype} {shape}: only numeric arrays are accepted")
    size = math.prod(shape) * dtype.itemsize
    payload = len(data) - stream.tell()
    if size != payload or size > MAX_ARRAY_BYTES:
        raise ValueError(f"array header declares {shape} of {dtype} ({size} bytes) but carries {payload}")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return (flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)).copy()


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named tensors as one packed ArrayRecord (see PACKED)."""
    if not arrays:
        return ArrayRecord({})
    parts = [np.asarray(value, order="C") for value in arrays.values()]  # 0-d stays 0-d
    manifest = [[name, part.dtype.str, list(part.shape)] for name, part in zip(arrays, parts)]
    blob = np.concatenate([part.reshape(-1).view(np.uint8) for part in parts])
    return ArrayRecord({MANIFEST: Array(np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)),
                        PACKED: Array(blob)})


def tensor_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named tensors one Array each: the form Flower's strategies read (they aggregate, and keep
    their server-side state, key by key). For the coordinator's own use; messages travel packed."""
    return ArrayRecord({name: Array(np.asarray(value, order="C")) for name, value in arrays.items()})


def record_layout(record: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's (shape, dtype) without unpacking the data: what a record carries, for audits.
    Raises ValueError when a packed record's manifest is malformed."""
    if MANIFEST not in record:
        return {name: (tuple(array.shape), str(array.dtype)) for name, array in record.items()}
    raw = array_numpy(record[MANIFEST]).tobytes()
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"malformed tensor manifest: {len(raw)} bytes")
    try:
        manifest = json.loads(raw)
        layout = {str(name): (tuple(int(n) for n in shape), np.dtype(dtype)) for name, dtype, shape in manifest}
    except (ValueError, TypeError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"malformed tensor manifest: {err}") from err
    for name, (shape, dtype) in layout.items():
        if dtype.kind not in NUMERIC_KINDS or any(n < 0 for n in shape):
            raise ValueError(f"malformed tensor manifest: tensor {name} is {dtype} {shape}")
    if len(layout) != len(manifest):
        raise ValueError("malformed tensor manifest: a tensor name appears twice")
    return {name: (shape, str(dtype)) for name, (shape, dtype) in layout.items()}


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named tensors from a packed record (or from one Array per tensor, as fedtl sent before).
    Raises ValueError when the manifest and the packed bytes disagree."""
    if MANIFEST not in record:
        return {name: array_numpy(array) for name, array in record.items()}
    if PACKED not in record or len(record) != 2:
        raise ValueError(f"a packed record holds exactly {MANIFEST!r} and {PACKED!r}, got {sorted(record)}")
    layout = record_layout(record)
    blob = array_numpy(record[PACKED])
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(f"packed tensor bytes must be 1-d uint8, got {blob.dtype} {blob.shape}")
    out, offset = {}, 0
    for name, (shape, dtype) in layout.items():
        dt = np.dtype(dtype)
        size = math.prod(shape) * dt.itemsize
        if offset + size > len(blob):
            raise ValueError(f"tensor {name}: the manifest claims more bytes than the record holds ({len(blob)})")
        out[name] = blob[offset:offset + size].view(dt).reshape(shape).copy()
        offset += size
    if offset != len(blob):
        raise ValueError(f"the record holds {len(blob) - offset} bytes beyond its manifest's tensors")
    return out


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

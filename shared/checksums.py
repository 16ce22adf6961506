"""File checksums both ends of a transfer compute the same way (the hub streams, `fedtl pull` verifies)."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks (checkpoints are hundreds of MB)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(READ_BLOCK):
            h.update(block)
    return h.hexdigest()

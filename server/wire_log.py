"""A record of everything that crosses the SuperLink in a federation, for privacy audits.

For every message sent to or received from a site: its type, round, node, the names,
shapes and dtypes of its tensors, and every config/metric key and value. Operators (and
fedtl's privacy tests) read it to see that no head tensor and no input text ever travelled.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from flwr.app import Message

from fedtl.shared.records import record_layout, record_nbytes


def describe(msg: Message) -> dict[str, Any]:
    content = msg.content
    return {
        "arrays": {
            key: {name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in _layout(record).items()}
            for key, record in content.array_records.items()
        },
        "bytes": {key: record_nbytes(record) for key, record in content.array_records.items()},  # as sent
        "configs": {
            key: {k: (v.hex() if isinstance(v, bytes) else v) for k, v in record.items()}
            for key, record in content.config_records.items()
        },
        "metrics": {key: dict(record) for key, record in content.metric_records.items()},
    }


def _layout(record) -> dict[str, tuple[tuple[int, ...], str]]:
    """The tensors a record carries (a packed record's manifest); a malformed manifest is logged as
    the raw arrays it arrived as, so the audit still shows what travelled."""
    try:
        return record_layout(record)
    except ValueError:
        return {name: (tuple(arr.shape), str(arr.dtype)[:40]) for name, arr in record.items()}


class WireLog:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def record(self, direction: str, round_: int, msg: Message) -> None:
        node = msg.metadata.dst_node_id if direction == "down" else msg.metadata.src_node_id
        entry: dict[str, Any] = {
            "time": time.time(), "direction": direction, "round": round_, "node": node,
            "message_type": msg.metadata.message_type,
        }
        if msg.has_error():
            entry["error"] = msg.error.reason
        else:
            try:
                entry.update(describe(msg))
            except Exception as exc:  # noqa: BLE001 - a crafted reply is logged as such, never raised
                entry["undescribable"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        line = json.dumps(entry, sort_keys=True, default=str)
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def read_wire_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

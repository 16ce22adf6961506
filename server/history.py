"""Round history: the typed round record, and on disk ``rounds.jsonl`` (one line per round) and
``status.json``.

``RoundRecord`` is the one spelling of a finished round: the round loop builds it, observers
(history, MLflow, benchmarks) receive it, the CLI, the demo and the hub read its attributes,
and ``rounds.jsonl`` stores its JSON. Unknown keys are kept, so a file written by another
version still reads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedtl.shared.atomic import write_json_atomic, write_text_atomic
from fedtl.shared.protocol import ReportKey, primary_metrics, report_value


class Problem(BaseModel):
    """A sampled site whose reply failed (an error, no answer) or was rejected, and why."""

    model_config = ConfigDict(extra="allow")

    site: str
    reason: str


class SiteEntry(BaseModel):
    """One accepted site's part of a round: its reply's metrics and report, and bytes each way."""

    model_config = ConfigDict(extra="allow")

    metrics: dict[str, Any] = Field(default_factory=dict)  # the reply's MetricRecord (shared/protocol.py SiteMetric)
    report: dict[str, Any] = Field(default_factory=dict)   # the reply's report (ReportKey, Section/task/metric)
    bytes_down: int = 0
    bytes_up: int = 0

    def value(self, section: str, task: str, metric: str | None = None) -> float | None:
        return report_value(self.report, section, task, metric)

    def primary(self) -> Iterator[tuple[str, str]]:
        """(task, primary metric) pairs, in the site's order."""
        return primary_metrics(self.report)

    @property
    def site_model(self) -> str:
        return str(self.report.get(ReportKey.SITE_MODEL, ""))


class Evaluation(BaseModel):
    """The federated evaluation of the global encoder after a round (``final_evaluate``)."""

    model_config = ConfigDict(extra="allow")

    seconds: float = 0.0
    metrics: dict[str, Any] = Field(default_factory=dict)  # the strategy's aggregated evaluation metrics
    sites: dict[str, SiteEntry] = Field(default_factory=dict)
    failed: list[Problem] = Field(default_factory=list)


class RoundRecord(BaseModel):
    """One finished round, as ``rounds.jsonl`` stores it."""

    model_config = ConfigDict(extra="allow")

    round: int
    started_at: float = 0.0
    seconds: float = 0.0
    aggregation_seconds: float = 0.0
    sampled: int = 0
    answered: int = 0
    accepted: int = 0
    failed: list[Problem] = Field(default_factory=list)
    rejected: list[Problem] = Field(default_factory=list)
    aggregated: bool = False
    global_digest: str = ""
    bytes_down: int = 0
    bytes_up: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)  # the strategy's aggregated metrics
    update_norms: dict[str, float] = Field(default_factory=dict)
    update_cosine: dict[str, dict[str, float]] = Field(default_factory=dict)
    sites: dict[str, SiteEntry] = Field(default_factory=dict)
    mixing: dict[str, dict[str, float]] = Field(default_factory=dict)  # similarity: each site's mixture
    checkpoint: str | None = None
    evaluate: Evaluation | None = None
    privacy: dict[str, Any] | None = None  # privacy on: epsilon spent so far, its budget, delta, noise, clip

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one ``rounds.jsonl`` line (absent: what the round did not have)."""
        out = self.model_dump(exclude_none=True)
        if not out.get("mixing"):
            out.pop("mixing", None)
        return out

    def line(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, default=float)


class HistoryWriter:
    def __init__(self, state_dir: Path, run_id: int):
        self.state_dir = state_dir
        self.run_id = run_id
        self.rounds_path = state_dir / "rounds.jsonl"
        self.status_path = state_dir / "status.json"
        self.recorded: set[int] = set()

    def _status(self, **fields: Any) -> None:
        current = json.loads(self.status_path.read_text()) if self.status_path.exists() else {}
        current.update(fields, run_id=self.run_id, updated_at=time.time())
        write_json_atomic(self.status_path, current)

    def start(self, info: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        start_round = info.get("start_round", 1)
        # a fresh federation starts a fresh history; a resumed one keeps the rounds before it
        kept = [r for r in read_rounds(self.state_dir) if r.round < start_round]
        write_text_atomic(self.rounds_path, "".join(r.line() + "\n" for r in kept))
        self.recorded = {r.round for r in kept}
        self._status(status="running", started_at=time.time(), info=info, rounds_done=start_round - 1)

    def round(self, record: RoundRecord) -> None:
        if record.round in self.recorded:  # replayed on resume: written before the crash
            return
        self.recorded.add(record.round)
        with self.rounds_path.open("a", encoding="utf-8") as fh:
            fh.write(record.line() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._status(rounds_done=record.round, global_digest=record.global_digest)

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        self._status(status=status, finished_at=time.time(), summary=summary)


def parse_round(line: str | bytes) -> RoundRecord | None:
    """One ``rounds.jsonl`` line, or None for a line cut short by a crash (or not a round)."""
    try:
        return RoundRecord.model_validate(json.loads(line))  # json: NaN and Infinity as written
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError):
        return None


def read_rounds(state_dir: Path) -> list[RoundRecord]:
    """Finished rounds in order; a line cut short by a crash (or not a round) is skipped."""
    path = state_dir / "rounds.jsonl"
    if not path.exists():
        return []
    return [r for line in path.read_text().splitlines() if (r := parse_round(line)) is not None]


class RoundLog:
    """``rounds.jsonl`` for a reader that asks again and again (the hub, every poll of every client):
    each call parses only the complete lines appended since the last; a file replaced by a fresh
    run (another inode, or shorter) is read again from the start."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "rounds.jsonl"
        self._lock = threading.Lock()
        self._records: list[RoundRecord] = []
        self._offset = 0
        self._inode: int | None = None

    def rounds(self) -> list[RoundRecord]:
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._records, self._offset, self._inode = [], 0, None
                return []
            if stat.st_ino != self._inode or stat.st_size < self._offset:
                self._records, self._offset, self._inode = [], 0, stat.st_ino
            if stat.st_size > self._offset:
                with self.path.open("rb") as fh:
                    fh.seek(self._offset)
                    chunk = fh.read(stat.st_size - self._offset)
                complete = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
                self._records += [r for line in chunk[:complete].splitlines() if (r := parse_round(line)) is not None]
                self._offset += complete
            return list(self._records)

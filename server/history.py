"""Round history on disk: ``rounds.jsonl`` (one line per round) and ``status.json``.

The coordinator CLI tails these for its live table; scripts and tests read them too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fedtl.shared.atomic import write_json_atomic, write_text_atomic


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
        kept = [r for r in read_rounds(self.state_dir) if r["round"] < start_round]
        write_text_atomic(self.rounds_path, "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in kept))
        self.recorded = {r["round"] for r in kept}
        self._status(status="running", started_at=time.time(), info=info, rounds_done=start_round - 1)

    def round(self, record: dict[str, Any]) -> None:
        if record["round"] in self.recorded:  # replayed on resume: written before the crash
            return
        self.recorded.add(record["round"])
        line = json.dumps(record, sort_keys=True, default=float)
        with self.rounds_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._status(rounds_done=record["round"], global_digest=record["global_digest"])

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        self._status(status=status, finished_at=time.time(), summary=summary)


def read_rounds(state_dir: Path) -> list[dict[str, Any]]:
    """Finished rounds in order; a last line cut short by a crash is ignored."""
    path = state_dir / "rounds.jsonl"
    if not path.exists():
        return []
    rounds = []
    for line in path.read_text().splitlines():
        try:
            rounds.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rounds

"""How long a recorded round took, and how much of it was the sites' own work (for benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fedtl.server.history import RoundRecord


def site_seconds(report: dict[str, Any]) -> float:
    """A site's own work in a round: training and evaluation, plus its local-only baseline (round 1)."""
    return float(report["seconds/total"]) + float(report.get("seconds/baseline", 0.0))


def timed_rounds(records: list[RoundRecord]) -> Iterator[tuple[RoundRecord, float, dict[str, float]]]:
    """(record, wall seconds, each site's own seconds) per round but the last.

    A round's wall time runs from its start to the next round's start, so the checkpoint,
    resume point and MLflow logging after it count; the last round has no next start.
    """
    for record, after in zip(records, records[1:]):
        sites = {s: site_seconds(e.report) for s, e in record.sites.items()}
        yield record, after.started_at - record.started_at, sites

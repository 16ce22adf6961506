"""The README's "Choosing the update mode and round shape" table, rebuilt from the learning runs' results.

Each cell is read from a ``benchmarks/results/<run>/results.json`` that ``learning.py`` wrote (its
test-split summary), and the column that runs today's defaults is found by comparing each run's
settings with ``FederationConfig`` and ``TrainingConfig``: the table cannot drift from the numbers
or from the code. Run after any of the runs below changes:

    python benchmarks/guidance.py            # writes README.md between the guidance markers
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from readme_block import write_block

from fedtl.server.strategies import update_rule
from fedtl.shared.config import TrainingConfig
from fedtl.shared.federation_config import FederationConfig, StrategyConfig

RESULTS = Path(__file__).with_name("results")
README = Path(__file__).resolve().parent.parent / "README.md"
TOLERANCE = 0.005  # learning.py's: a served model this close below the best alone counts as matching it


@dataclass(frozen=True)
class Column:
    """One round shape: its heading, the run folder suffix its results carry, and the method read."""

    heading: str
    suffix: str
    method: str = "fedavg"


COLUMNS = [
    Column("`last:2`, 4 x 12, linear lr", ""),
    Column("`last:2`, 4 x 12, constant lr", "-constant-lr"),
    Column("`last:2`, 4 x 12, constant lr, `baseline: finetuned`", "-finetuned-baseline"),
    Column("`last:2`, 4 x 12, constant lr, `baseline: finetuned`, server step 2", "-slr2", "fedavgm"),
    Column("`last:2`, 4 x 12, constant lr, `baseline: finetuned`, FedExP", "-fedexp", "fedexp"),
    Column("`full`, 12 x 4, linear lr", "-full-12x4"),
]
SCENARIOS = [  # label, run folder of the first column
    ("bundled sites", "learning-test-bundled"),
    ("lexicon, three related tasks", "learning-test-lexicon-tasks"),
    ("WordNet definitions", "learning-test-wordnet-definitions"),
    ("WordNet usage", "learning-test-wordnet-usage"),
    ("WordNet nouns, label skew", "learning-test-wordnet-nouns"),
]


def load(run: str, results: Path = RESULTS) -> dict[str, Any] | None:
    path = results / run / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def runs_defaults(meta: dict[str, Any], method: str = "fedavg") -> bool:
    """Did this run's ``method`` use what a new federation gets: the update mode, round plan, lr schedule
    and aggregation?"""
    federation, training = FederationConfig(), TrainingConfig()
    ran = update_rule(StrategyConfig(**meta["methods"][method].get("strategy", {})))
    return (meta["update"] == federation.update_mode and meta["rounds"] == federation.rounds
            and ran == update_rule(federation.strategy)
            and meta["steps"] == federation.max_steps
            # runs from before learning.py recorded the schedule ran the sites' default then: linear
            and (meta.get("lr_schedule") or "linear") == training.lr_schedule
            and meta.get("lr_schedule_span", "federation") == training.lr_schedule_span
            and all(getattr(training, key) == value for key, value in meta.get("training", {}).items()))


def verdict(saved: dict[str, Any], method: str = "fedavg") -> dict[str, Any]:
    """Mean and worst gain of the served model over the best a site has alone, on test; wall seconds."""
    summary = saved["test_summary"]
    gains = [row[f"{method}_gain"][0] for row in summary["rows"]]
    paying = [row for row in summary["rows"] if row["pooling_pays"]]
    return {"site_tasks": len(gains), "mean": statistics.fmean(gains), "worst": min(gains),
            "below": sum(g < -TOLERANCE for g in gains), "seconds": summary["seconds"][method][0],
            "paying": [row[f"{method}_gain"][0] for row in paying],
            "recovered": [row[f"{method}_recovered"] for row in paying]}


def cell(v: dict[str, Any] | None) -> str:
    if v is None:
        return "not run"
    text = f"{v['mean']:+.3f}, worst {v['worst']:+.3f}, {v['seconds']:.0f} s"
    return f"**{text}**" if v["worst"] >= -TOLERANCE else text


def table(results: Path = RESULTS) -> str:
    """The markdown table: a row per scenario, a column per round shape, then the totals over scenarios."""
    grid: dict[str, list[dict[str, Any] | None]] = {}
    default_column = None
    rows = []
    for label, run in SCENARIOS:
        cells = []
        for i, column in enumerate(COLUMNS):
            saved = load(run + column.suffix, results)
            cells.append(verdict(saved, column.method) if saved is not None else None)
            if saved is not None and runs_defaults(saved["meta"], column.method):
                default_column = i
        n = next((v["site_tasks"] for v in cells if v is not None), 0)
        grid[label] = cells
        rows.append(f"| {label} ({n}) | " + " | ".join(cell(v) for v in cells) + " |")
    headings = [c.heading + (" (default)" if i == default_column else "") for i, c in enumerate(COLUMNS)]
    lines = ["| scenario (site-tasks) | " + " | ".join(headings) + " |", "|---|" + "---|" * len(COLUMNS), *rows]
    totals = []
    for i in range(len(COLUMNS)):
        ran = [cells[i] for cells in grid.values() if cells[i] is not None]
        if len(ran) < len(grid):
            totals.append(f"{len(ran)} of {len(grid)} scenarios run")
            continue
        n = sum(v["site_tasks"] for v in ran)
        below = sum(v["below"] for v in ran)
        paying = [g for v in ran for g in v["paying"]]
        recovered = [r for v in ran for r in v["recovered"]]
        totals.append(f"{statistics.fmean(v['mean'] for v in ran):+.3f}; {below} of {n} below by > {TOLERANCE}"
                      + (f"; where pooling pays {statistics.fmean(paying):+.3f}, {min(recovered):.0%} at least"
                         if paying else ""))
    lines.append("| all scenarios: mean gain; site-tasks below their best alone | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    text = table()
    if not write_block("guidance", text, args.readme):
        raise SystemExit(f"no <!-- guidance:start --> marker in {args.readme}")
    print(text)


if __name__ == "__main__":
    main()

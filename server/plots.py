"""Plots logged with every round: task interference and per-site metrics over rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedtl.shared.protocol import Section, primary_metrics, report_value  # noqa: E402


def site_matrix_heatmap(matrix: dict[str, dict[str, float]], path: Path, title: str, label: str,
                        vmin: float = -1.0, cmap: str = "RdBu") -> Path:
    """A sites x sites matrix as an annotated heatmap."""
    sites = sorted(matrix)
    values = [[matrix[a].get(b, 0.0) for b in sites] for a in sites]
    fig, ax = plt.subplots(figsize=(1.2 * len(sites) + 2.5, 1.0 * len(sites) + 2))
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=1)
    ax.set_xticks(range(len(sites)), sites, rotation=30, ha="right")
    ax.set_yticks(range(len(sites)), sites)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=9,
                    color="white" if abs(value) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def interference_heatmap(cosine: dict[str, dict[str, float]], round_: int, path: Path) -> Path:
    """Pairwise cosine similarity of the sites' encoder updates in one round.

    Near +1: two sites' tasks push the shared encoder the same way; near -1: they pull it
    apart (negative transfer is likely); near 0: they touch different directions.
    """
    return site_matrix_heatmap(cosine, path, f"task interference, round {round_}", "cosine similarity of updates")


def mixing_heatmap(mixing: dict[str, dict[str, float]], round_: int, path: Path) -> Path:
    """similarity: row i, column j is the share of site j's model in the model site i gets next."""
    return site_matrix_heatmap(mixing, path, f"model mixing, round {round_}", "share of column's model in row's",
                               vmin=0.0, cmap="Blues")


def site_metric_plot(history: list[dict[str, Any]], path: Path) -> Path:
    """Each site's tasks' primary validation metric per round, with its local-only baseline dashed."""
    series: dict[str, list[tuple[int, float]]] = {}
    baselines: dict[str, float] = {}
    for record in history:
        for site, entry in record.get("sites", {}).items():
            report = entry["report"]
            for task, metric in primary_metrics(report):
                label = f"{site}/{task} ({metric})"
                value = report_value(report, Section.VAL, task, metric)
                if value is not None:
                    series.setdefault(label, []).append((record["round"], value))
                base = report_value(report, Section.BASELINE, task, metric)
                if base is not None:
                    baselines[label] = base
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, points) in enumerate(sorted(series.items())):
        color = f"C{i % 10}"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=label)
        if label in baselines:
            ax.axhline(baselines[label], color=color, linestyle="--", linewidth=0.8)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation metric (dashed: local-only baseline)")
    ax.set_title("per-site validation metrics")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

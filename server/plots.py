"""Plots logged with every round: task interference and per-site metrics over rounds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedtl.server.history import RoundRecord  # noqa: E402
from fedtl.shared.protocol import Section  # noqa: E402

ANNOTATED_SITES = 16  # more sites than this: a heatmap without the numbers, of a bounded size
LABELLED_SITES = 40  # more: every k-th site named on the axes
PLOTTED_SERIES = 12  # more site-tasks than this: thin lines and their mean, no legend


def site_matrix_heatmap(matrix: dict[str, dict[str, float]], path: Path, title: str, label: str,
                        vmin: float = -1.0, cmap: str = "RdBu") -> Path:
    """A sites x sites matrix as a heatmap, annotated while the sites are few."""
    sites = sorted(matrix)
    n = len(sites)
    values = [[matrix[a].get(b, 0.0) for b in sites] for a in sites]
    side = min(1.0 * n, 10.0)  # inches; many sites share a bounded canvas instead of growing it
    fig, ax = plt.subplots(figsize=(side + 2.5, side + 2))
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=1, interpolation="nearest")
    step = max(1, -(-n // LABELLED_SITES))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [sites[i] for i in ticks], rotation=30 if n <= ANNOTATED_SITES else 90,
                  ha="right" if n <= ANNOTATED_SITES else "center", fontsize=9 if n <= LABELLED_SITES else 6)
    ax.set_yticks(ticks, [sites[i] for i in ticks], fontsize=9 if n <= LABELLED_SITES else 6)
    for i, row in enumerate(values if n <= ANNOTATED_SITES else []):
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


def site_metric_plot(history: list[RoundRecord], path: Path) -> Path:
    """Each site's tasks' primary validation metric per round, with its local-only baseline dashed."""
    series: dict[str, list[tuple[int, float]]] = {}
    baselines: dict[str, float] = {}
    for record in history:
        for site, entry in record.sites.items():
            for task, metric in entry.primary():
                label = f"{site}/{task} ({metric})"
                value = entry.value(Section.VAL, task, metric)
                if value is not None:
                    series.setdefault(label, []).append((record.round, value))
                base = entry.value(Section.BASELINE, task, metric)
                if base is not None:
                    baselines[label] = base
    fig, ax = plt.subplots(figsize=(7, 4.2))
    many = len(series) > PLOTTED_SERIES
    for i, (label, points) in enumerate(sorted(series.items())):
        if many:  # each site a faint line; the mean and the mean baseline carry the picture
            ax.plot([p[0] for p in points], [p[1] for p in points], color="grey", alpha=0.15, linewidth=0.6)
            continue
        color = f"C{i % 10}"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=label)
        if label in baselines:
            ax.axhline(baselines[label], color=color, linestyle="--", linewidth=0.8)
    if many:
        by_round: dict[int, list[float]] = {}
        for points in series.values():
            for rnd, value in points:
                by_round.setdefault(rnd, []).append(value)
        rounds = sorted(by_round)
        ax.plot(rounds, [sum(by_round[r]) / len(by_round[r]) for r in rounds], marker="o", color="C0",
                label=f"mean of {len(series)} site-tasks")
        if baselines:
            ax.axhline(sum(baselines.values()) / len(baselines), color="C0", linestyle="--", linewidth=0.8)
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

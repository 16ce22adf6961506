"""Virtual sites cut from one bundled data set, with label skew: the data of `fedtl simulate`.

Label skew follows Hsu et al. (2019, "Measuring the effects of non-identical data distribution
for federated visual classification"): site i draws its own class mixture q_i ~ Dir(alpha * p),
p the data set's class frequencies, then fills its share of rows class by class from q_i. Small
alpha: each site holds mostly one or two classes; large alpha: every site looks like the whole.
Every site gets the same number of rows (the data set divided evenly), every row goes to one
site, and the cut depends only on the seed.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from fedtl.shared.examples import examples_root

MIN_ROWS = 4  # a site needs a few training rows and at least one validation row


def polarity(valence: float) -> str:
    """A lexicon word's class from its mean valence rating (-4..4)."""
    return "negative" if valence <= -1 else "positive" if valence >= 1 else "neutral"


@dataclass(frozen=True)
class BundledTask:
    """A classification task in the bundled examples that virtual sites can be cut from."""

    file: str
    text_column: str
    target_column: str
    labels_from: str | None = None  # derive the label from this numeric column (the lexicon's valence)

    def label(self, row: dict[str, str]) -> str:
        if self.labels_from is None:
            return row[self.target_column]
        return polarity(float(row[self.labels_from]))


BUNDLED_TASKS = {
    "polarity": BundledTask("lexicon_valence.csv", "term", "polarity", labels_from="valence"),
    "sentiment": BundledTask("clinic_reviews.csv", "review", "sentiment"),
    "condition": BundledTask("pharmacy_reviews.csv", "review", "condition"),
}


def dirichlet_partition(labels: Sequence[str], sites: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each of ``sites`` sites; each site's class mixture drawn from Dir(alpha * p)."""
    if sites < 1:
        raise ValueError("need at least one site")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    n = len(labels)
    if n // sites < MIN_ROWS:
        raise ValueError(f"{n} rows give {sites} sites {n // sites} rows each; each needs {MIN_ROWS} or more "
                         f"(use at most {n // MIN_ROWS} sites)")
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    label_of = np.array([classes.index(label) for label in labels])
    pools = [list(rng.permutation(np.flatnonzero(label_of == c))) for c in range(len(classes))]
    prior = np.array([len(p) for p in pools], dtype=float) / n
    sizes = np.full(sites, n // sites)
    sizes[: n % sites] += 1
    parts = []
    for size in sizes:
        mixture = rng.dirichlet(alpha * prior)
        rows = []
        for _ in range(size):
            left = np.array([len(p) for p in pools], dtype=float)
            weights = mixture * (left > 0)
            if weights.sum() == 0:  # this site's classes ran out: the rest, by what is left
                weights = left
            rows.append(pools[rng.choice(len(classes), p=weights / weights.sum())].pop())
        parts.append(np.sort(np.array(rows, dtype=int)))
    return parts


def bundled_rows(task: str) -> list[dict[str, str]]:
    """The rows of a bundled task's data file."""
    spec = BUNDLED_TASKS[task]
    with (examples_root() / "data" / spec.file).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def most_sites(task: str) -> int:
    """How many virtual sites a bundled task can be cut into, each with at least MIN_ROWS rows."""
    return len(bundled_rows(task)) // MIN_ROWS


def write_virtual_sites(dest: Path, task: str, sites: int, alpha: float, encoder: str, seed: int = 0,
                        training: dict | None = None) -> list[Path]:
    """One folder per virtual site under ``dest`` (``site-0000/`` ...): its rows and a site.yaml."""
    spec = BUNDLED_TASKS[task]
    rows = bundled_rows(task)
    labels = [spec.label(r) for r in rows]
    classes = sorted(set(labels))
    paths = []
    for i, index in enumerate(dirichlet_partition(labels, sites, alpha, seed)):
        folder = dest / f"site-{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "data.csv").open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["text", task])
            out.writerows((rows[j][spec.text_column], labels[j]) for j in index)
        config = {
            "name": f"sim-{i:04d}", "state_dir": "state", "encoder": encoder, "device": "cpu",
            "training": {"head_epochs": 10, "encoder_epochs": 1, "batch_size": 8, "max_length": 32,
                         "seed": seed, **(training or {})},
            "tasks": [{"name": task, "type": "classification", "data": "data.csv", "text_columns": "text",
                       "target_column": task, "labels": classes, "validation_split": 0.25}],
        }
        path = folder / "site.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        paths.append(path)
    return paths

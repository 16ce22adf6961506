"""Held-out test splits for the learning benchmarks: numbers on rows no choice has seen.

Every choice fedtl makes at a site (the heads' penalty search, keep-best, the site's choice
between its federated model and its local baseline) reads only training and validation rows.
A small validation split chose settings that did not carry over to new sites, so the
benchmarks judge on a test split cut off *before* any of that: ``hold_out`` writes each site's
rows minus its test rows as the site's data, and keeps the test rows in files of their own
that only ``score_model`` and ``sklearn_probe`` read, after training has ended.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fedtl.client.batching import embed_texts
from fedtl.shared.config import SiteConfig, TaskConfig, TaskType, load_site_config
from fedtl.shared.data import load_held_out
from fedtl.shared.heads import HeadSpec, TaskHead


@dataclass(frozen=True)
class HeldOutSite:
    """A site for the benchmark: its config (test rows removed) and each task's test file."""

    config: Path
    tests: dict[str, Path]


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def _test_rows(rows: list[list[str]], strata: list[str] | None, share: float, seed: int) -> set[int]:
    """Indices of the test rows: ``share`` of each stratum (each class), drawn with ``seed``."""
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i in range(len(rows)):
        groups.setdefault(strata[i] if strata else "", []).append(i)
    chosen: set[int] = set()
    for members in groups.values():
        rng.shuffle(members)
        chosen.update(members[: round(len(members) * share)])
    return chosen


def hold_out(paths: list[Path], dest: Path, seed: int, share: float = 0.3) -> list[HeldOutSite]:
    """Cut a test split off every site's data; returns the sites as the benchmark trains them.

    Tasks that read the same file share the cut (a text tested on must not be trained on
    through a sibling task), stratified by the first classification task's labels. The
    ``seed`` redraws the cut. Classification and multi-label tasks list every label of the
    whole file, so a label seen only in the test rows still has a class in the head.
    """
    sites = []
    for path in paths:
        spec = yaml.safe_load(path.read_text())
        cfg = load_site_config(path)
        by_file: dict[Path, list[TaskConfig]] = {}
        for task in cfg.tasks:
            if len(task.data) != 1 or task.data[0].suffix != ".csv" or task.validation_data:
                raise ValueError(f"{path}: task {task.name}: hold_out takes one CSV file a task")
            by_file.setdefault(task.data[0], []).append(task)
        root = dest / cfg.name
        train_file, tests = {}, {}
        for source, tasks in by_file.items():
            header, rows = _read_csv(source)
            lead = next((t for t in tasks if t.type == TaskType.classification), None)
            strata = [r[header.index(lead.target_column)] for r in rows] if lead else None
            test = _test_rows(rows, strata, share, seed)
            train_file[source] = _write_csv(root / f"{source.stem}.train.csv", header,
                                            [r for i, r in enumerate(rows) if i not in test])
            test_file = _write_csv(root / f"{source.stem}.test.csv", header, [r for i, r in enumerate(rows) if i in test])
            tests.update({t.name: test_file for t in tasks})
        for raw, task in zip(spec["tasks"], cfg.tasks):
            raw["data"] = str(train_file[task.data[0]])
            if task.type != TaskType.regression and task.labels is None:
                header, rows = _read_csv(task.data[0])
                column = header.index(task.target_column)
                cells = [r[column] for r in rows if r[column].strip()]
                raw["labels"] = sorted(set(cells) if task.type == TaskType.classification else
                                       {x.strip() for c in cells for x in c.split(task.label_separator) if x.strip()})
        spec["state_dir"] = str(root / "state")
        config = root / "site.yaml"
        config.write_text(yaml.safe_dump(spec, sort_keys=False))
        sites.append(HeldOutSite(config, tests))
    return sites


@torch.no_grad()
def embed(encoder, texts: list[str], max_length: int) -> torch.Tensor:
    """Pooled features of ``texts`` from ``encoder`` as it is now (all layers run, nothing cached)."""
    encoder.eval()
    return embed_texts(encoder, texts, max_length)


@torch.no_grad()
def score_model(encoder, heads: dict[str, tuple[HeadSpec, TaskHead]], site: SiteConfig,
                tests: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Each task's metrics on its test rows, for a trained encoder and the heads given (after training ended)."""
    out = {}
    for task in (t for t in site.tasks if t.name in heads):
        spec, head = heads[task.name]
        rows = load_held_out(task, [tests[task.name]], spec.labels)
        head.eval()
        outputs = head(embed(encoder, rows.texts, site.training.max_length))
        out[task.name] = spec.metrics(spec.predict(outputs), rows.targets)
    return out


def sklearn_probe(encoder, site: SiteConfig, tests: dict[str, Path]) -> dict[str, dict[str, float]]:
    """What a site could do alone in three lines: scikit-learn on frozen embeddings of all its rows.

    ``LogisticRegression()`` (C=1, lbfgs; one per label for multi-label) or ``RidgeCV()``,
    fitted on every non-test row (it chooses nothing on validation, so it gets them all).
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.multiclass import OneVsRestClassifier

    out: dict[str, dict[str, float]] = {}
    for task in site.tasks:
        labels = list(task.labels) if task.labels else None
        train = load_held_out(task, task.data, labels)
        test = load_held_out(task, [tests[task.name]], labels)
        x = embed(encoder, train.texts, site.training.max_length).numpy()
        x_test = embed(encoder, test.texts, site.training.max_length).numpy()
        spec = HeadSpec(task.name, task.type, x.shape[1], labels)
        model: Any
        if task.type == TaskType.regression:
            model = RidgeCV().fit(x, train.targets)
        elif task.type == TaskType.classification:
            model = LogisticRegression(max_iter=2000).fit(x, train.targets)
        else:
            model = OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(x, train.targets)
        predicted = np.asarray(model.predict(x_test))
        out[task.name] = spec.metrics(predicted.astype(np.float32) if task.type == TaskType.multilabel
                                      else predicted, test.targets)
    return out

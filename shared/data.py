"""Read a task's examples from CSV, JSONL or Parquet and split them deterministically.

Every problem with a data file is reported as a DataError naming the file, the row
(1-based, header not counted) and the column, so the data owner can fix it at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedtl.shared.config import TaskConfig, TaskType

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


class DataError(ValueError):
    """A data file cannot be used. The message names the file, row and column."""

    def __init__(self, file: Path | str, message: str, row: int | None = None, column: str | None = None):
        self.file, self.row, self.column = str(file), row, column
        where = [self.file]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}")


@dataclass
class Examples:
    """Texts and encoded targets of one split. `origin[i]` is (file, row) of example i."""

    texts: list[str]
    targets: np.ndarray
    origin: list[tuple[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray | list[int]) -> Examples:
        index = list(index)
        return Examples(
            [self.texts[i] for i in index],
            self.targets[index],
            [self.origin[i] for i in index] if self.origin else [],
        )


@dataclass
class TaskData:
    """A task's train and validation examples plus what the head needs to decode them."""

    task: TaskConfig
    train: Examples
    val: Examples
    labels: list[str] | None  # classification / multilabel
    target_mean: float = 0.0  # regression: targets are standardised with train statistics
    target_std: float = 1.0


# ---------------------------------------------------------------- reading files
def read_rows(path: Path) -> list[dict[str, Any]]:
    """Read a table into a list of row dicts (values as read: str for CSV, typed for JSON/Parquet)."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, f"unsupported file type '{path.suffix}'; use .csv, .tsv, .jsonl or .parquet")
    if not path.exists():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    if kind in ("csv", "tsv"):
        rows = _read_csv(path, "\t" if kind == "tsv" else ",")
    elif kind == "jsonl":
        rows = _read_jsonl(path)
    else:
        rows = _read_parquet(path)
    if not rows:
        raise DataError(path, "file has no data rows")
    return rows


def _read_csv(path: Path, delimiter: str) -> list[dict[str, Any]]:
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter, strict=True)
            rows = []
            for i, row in enumerate(reader, start=1):
                if None in row:  # more cells than header columns
                    raise DataError(path, f"{len(row) - 1 + len(row[None])} cells but the header has "
                                    f"{len(reader.fieldnames or [])} columns", row=i)
                rows.append(row)
            if reader.fieldnames is None:
                raise DataError(path, "file has no header row")
            return rows
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV: {exc}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON ({exc.msg}, column {exc.colno})", row=line_no) from None
            if not isinstance(obj, dict):
                raise DataError(path, "each line must be a JSON object", row=line_no)
            rows.append(obj)
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(path, f"cannot read Parquet: {exc}") from None


# ---------------------------------------------------------------- cell parsing
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _text(row: dict[str, Any], task: TaskConfig, file: Path, row_no: int) -> str:
    parts = []
    for column in task.text_columns:
        if column not in row:
            raise DataError(file, f"missing column; the file has {sorted(row)}", row=row_no, column=column)
        value = row[column]
        if _is_missing(value):
            raise DataError(file, "empty text", row=row_no, column=column)
        parts.append(str(value).strip())
    return " ".join(parts)


def _raw_target(row: dict[str, Any], task: TaskConfig, file: Path, row_no: int) -> Any:
    column = task.target_column
    if column not in row:
        raise DataError(file, f"missing column; the file has {sorted(row)}", row=row_no, column=column)
    value = row[column]
    if task.type == TaskType.regression:
        if _is_missing(value):
            raise DataError(file, "target is empty or NaN", row=row_no, column=column)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(file, f"regression target {value!r} is not a number", row=row_no, column=column) from None
        if not math.isfinite(number):
            raise DataError(file, f"target is {value!r}; regression targets must be finite", row=row_no, column=column)
        return number
    if task.type == TaskType.classification:
        if _is_missing(value):
            raise DataError(file, "label is empty", row=row_no, column=column)
        return str(value).strip()
    # multilabel: a list, or a separated string; empty means "no label applies"
    if _is_missing(value):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p.strip() for p in str(value).split(task.label_separator) if p.strip()]


@dataclass
class _Raw:
    texts: list[str]
    targets: list[Any]
    origin: list[tuple[str, int]]


def _read_task_files(task: TaskConfig, files: list[Path]) -> _Raw:
    raw = _Raw([], [], [])
    for file in files:
        for row_no, row in enumerate(read_rows(file), start=1):
            raw.texts.append(_text(row, task, file, row_no))
            raw.targets.append(_raw_target(row, task, file, row_no))
            raw.origin.append((str(file), row_no))
    return raw


# ---------------------------------------------------------------- splitting
def split_indices(n: int, fraction: float, seed: int, strata: list[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split; stratified by `strata` when given.

    Each stratum keeps at least one training example, so a classifier sees every label.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        order = rng.permutation(n)
        n_val = min(n - 1, max(1, round(n * fraction)))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(strata):
        groups.setdefault(key, []).append(i)
    train, val = [], []
    for key in sorted(groups, key=str):
        members = rng.permutation(groups[key])
        n_val = min(len(members) - 1, round(len(members) * fraction))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    if not val:  # tiny data: still hold out one example
        val.append(train.pop())
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(val, dtype=int))


def _subsample(raw: _Raw, limit: int | None, seed: int) -> _Raw:
    if limit is None or len(raw.texts) <= limit:
        return raw
    keep = np.sort(np.random.default_rng(seed + 7919).permutation(len(raw.texts))[:limit])
    return _Raw([raw.texts[i] for i in keep], [raw.targets[i] for i in keep], [raw.origin[i] for i in keep])


# ---------------------------------------------------------------- encoding targets
def _encode(task: TaskConfig, raw: _Raw, labels: list[str] | None, split: str) -> np.ndarray:
    if task.type == TaskType.regression:
        return np.asarray(raw.targets, dtype=np.float32)
    assert labels is not None
    index = {label: i for i, label in enumerate(labels)}

    def lookup(label: str, i: int) -> int:
        if label not in index:
            file, row = raw.origin[i]
            hint = ("list it under 'labels:' in site.yaml" if task.labels is not None
                    else "it never appears in the training data; list every label under 'labels:' in site.yaml")
            raise DataError(file, f"unknown label {label!r} in the {split} data: {hint}", row=row,
                            column=task.target_column)
        return index[label]

    if task.type == TaskType.classification:
        return np.asarray([lookup(t, i) for i, t in enumerate(raw.targets)], dtype=np.int64)
    out = np.zeros((len(raw.targets), len(labels)), dtype=np.float32)
    for i, targets in enumerate(raw.targets):
        for label in targets:
            out[i, lookup(label, i)] = 1.0
    return out


def _pick(raw: _Raw, index: np.ndarray) -> _Raw:
    return _Raw([raw.texts[i] for i in index], [raw.targets[i] for i in index], [raw.origin[i] for i in index])


def _split_for(task: TaskConfig, raw: _Raw, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if len(raw.texts) < 2:
        raise DataError(task.data[0], "need at least 2 examples to hold out a validation split")
    strata = raw.targets if task.type == TaskType.classification else None
    return split_indices(len(raw.texts), task.validation_split, seed, strata)


def load_task_data(task: TaskConfig, seed: int = 0,
                   split: tuple[np.ndarray, np.ndarray] | None = None) -> TaskData:
    """Read, validate, split and encode one task's data (``split``: precomputed row indices)."""
    raw = _subsample(_read_task_files(task, task.data), task.max_examples, seed)
    if task.validation_data:
        train_raw, val_raw = raw, _read_task_files(task, task.validation_data)
    else:
        train_idx, val_idx = split if split is not None else _split_for(task, raw, seed)
        train_raw, val_raw = _pick(raw, train_idx), _pick(raw, val_idx)

    labels: list[str] | None = None
    if task.type == TaskType.classification:
        labels = list(task.labels) if task.labels else sorted(set(train_raw.targets))
        if len(labels) < 2:
            raise DataError(task.data[0], f"only one label ({labels[0]!r}) in the training data; "
                            "classification needs at least 2", column=task.target_column)
    elif task.type == TaskType.multilabel:
        labels = list(task.labels) if task.labels else sorted({t for ts in train_raw.targets for t in ts})
        if not labels:
            raise DataError(task.data[0], "no labels at all in the training data", column=task.target_column)

    train_y = _encode(task, train_raw, labels, "training")
    val_y = _encode(task, val_raw, labels, "validation")
    data = TaskData(
        task=task,
        train=Examples(train_raw.texts, train_y, train_raw.origin),
        val=Examples(val_raw.texts, val_y, val_raw.origin),
        labels=labels,
    )
    if task.type == TaskType.regression:
        data.target_mean = float(train_y.mean())
        data.target_std = float(train_y.std()) or 1.0
    return data


def _split_key(task: TaskConfig) -> tuple:
    return tuple(str(p) for p in task.data), task.validation_split, task.max_examples


def load_site_tasks(tasks: list[TaskConfig], seed: int = 0) -> list[TaskData]:
    """Load a site's tasks. Tasks reading the same files share one train/validation split.

    Otherwise a text one task validates on could be trained on through another task of the
    same site, and its validation metric would flatter. The shared split is stratified by
    the group's first classification task. Shared inputs also let the trainer run the
    encoder once per batch for all of the group's heads.
    """
    groups: dict[tuple, list[TaskConfig]] = {}
    for task in tasks:
        if not task.validation_data:
            groups.setdefault(_split_key(task), []).append(task)
    splits = {}
    for key, members in groups.items():
        if len(members) > 1:
            lead = next((t for t in members if t.type == TaskType.classification), members[0])
            raw = _subsample(_read_task_files(lead, lead.data), lead.max_examples, seed)
            splits[key] = _split_for(lead, raw, seed)
    return [load_task_data(t, seed, None if t.validation_data else splits.get(_split_key(t))) for t in tasks]

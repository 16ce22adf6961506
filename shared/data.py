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
Row = tuple[int, dict[str, Any]]  # (row number people see in the file, cells)


def read_rows(path: Path) -> list[Row]:
    """Read a table into (row number, row dict) pairs; values as read (str for CSV, typed for JSON/Parquet).

    Row numbers are what a person finds in the file: CSV data rows counting from 1 below
    the header, JSONL lines, Parquet rows.
    """
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, f"unsupported file type '{path.suffix}'; use .csv, .tsv, .jsonl or .parquet")
    if path.is_dir():
        raise DataError(path, "is a folder; 'data:' needs a file (list several files to use many)")
    if not path.exists():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    try:
        if kind in ("csv", "tsv"):
            rows = _read_csv(path, "\t" if kind == "tsv" else ",")
        elif kind == "jsonl":
            rows = _read_jsonl(path)
        else:
            rows = _read_parquet(path)
    except PermissionError:
        raise DataError(path, "not readable (permission denied)") from None
    if not rows:
        raise DataError(path, "file has no data rows")
    return rows


def _decode(path: Path) -> str:
    """The file as text; a byte that is not UTF-8 is reported with its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(path, f"line {line} is not UTF-8 text ({exc.reason}); save the file as UTF-8") from None


def _read_csv(path: Path, delimiter: str) -> list[Row]:
    import csv
    import io

    reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter=delimiter, strict=True)
    row, starts_on = 0, 1  # data row number, and the file line where the current record starts
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(path, "file has no header row")
        for i, name in enumerate(header):
            if name in header[:i]:
                raise DataError(path, "the header row names this column twice; rename one of them", column=name)
        rows = []
        starts_on = reader.line_num + 1
        for cells in reader:
            row += 1
            if cells:  # skip blank lines
                if len(cells) > len(header):
                    raise DataError(path, f"{len(cells)} cells but the header has {len(header)} columns", row=row)
                rows.append((row, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
            starts_on = reader.line_num + 1
        return rows
    except csv.Error as exc:
        unclosed = "end of data" in str(exc)
        problem = "a quoted cell starts here and is never closed" if unclosed else f"{exc}; check the quotes"
        raise DataError(path, f"malformed CSV on line {starts_on} of the file: {problem}",
                        row=row + 1 if starts_on > 1 else None) from None


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line); "
                                "save it as UTF-8", row=line_no) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON ({exc.msg}, column {exc.colno})", row=line_no) from None
            if not isinstance(obj, dict):
                raise DataError(path, "each line must be a JSON object", row=line_no)
            rows.append((line_no, obj))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(path, f"cannot read Parquet: {exc}") from None
    names = table.column_names
    for name in names:
        if names.count(name) > 1:
            raise DataError(path, "the file has this column twice; rename one", column=name)
    return list(enumerate(table.to_pylist(), start=1))


# ---------------------------------------------------------------- cell parsing
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def text_of_row(row: dict[str, Any], task: TaskConfig, file: Path, row_no: int) -> str:
    """A task's input text from one row: its text columns joined; a missing or empty cell is a DataError."""
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
        return _label(value, file, row_no, column)
    # multilabel: a list, or a separated string; empty means "no label applies"
    if _is_missing(value):
        return []
    if isinstance(value, (list, tuple)):
        return [_label(v, file, row_no, column) for v in value if not _is_missing(v)]
    return [p.strip() for p in str(value).split(task.label_separator) if p.strip()]


def _label(value: Any, file: Path, row_no: int, column: str) -> str:
    """A class label as text. Numbers in JSON or Parquet name the same class however written (1, 1.0)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        raise DataError(file, f"a label must be text or a number, got {type(value).__name__}", row=row_no,
                        column=column)
    return str(value).strip()


@dataclass
class _Raw:
    texts: list[str]
    targets: list[Any]
    origin: list[tuple[str, int]]


def _read_task_files(task: TaskConfig, files: list[Path]) -> _Raw:
    raw = _Raw([], [], [])
    for file in files:
        for row_no, row in read_rows(file):
            raw.texts.append(text_of_row(row, task, file, row_no))
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
        everywhere = [label for label in labels if all(label in ts for ts in train_raw.targets)]
        if everywhere:
            raise DataError(task.data[0], f"label {everywhere[0]!r} is on every training row, so there is "
                            "nothing to learn about it; drop it from the data or give rows without it",
                            column=task.target_column)

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


def load_held_out(task: TaskConfig, files: list[Path], labels: list[str] | None) -> Examples:
    """Rows no training or selection step saw (a test split), encoded for a trained head.

    ``labels`` are the trained head's own (its ``HeadSpec.labels``), so class ``i`` means
    the same here as in the head; a label the head does not know is a DataError naming the
    file, row and column.
    """
    raw = _read_task_files(task, files)
    return Examples(raw.texts, _encode(task, raw, labels, "test"), raw.origin)


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

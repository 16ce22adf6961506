"""Predict with the model a site serves (``site_model.json``): every task, for a file of texts.

The site worker writes ``state_dir/federated/site_model.json`` after each round: task by task,
the model it serves, the federated one or its local baseline, whichever validated better; each
of the entry's ``parts`` is one encoder (pretrained spec and seed, trained tensors over it, LoRA
adapters where used) with the heads of its tasks. ``SiteModel`` rebuilds exactly that and runs
it; ``predict_file`` keeps every input column and adds, per task: ``<task>`` (the label, the
labels joined by the task's separator, or the value) and, for classification,
``<task>_probability``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtl.client.batching import embed_texts
from fedtl.client.head_store import HeadStore
from fedtl.shared.config import SiteConfig, TaskConfig
from fedtl.shared.data import DataError, read_rows, text_of_row
from fedtl.shared.encoders import TextEncoder, load_encoder
from fedtl.shared.heads import HeadSpec, TaskHead, TaskType
from fedtl.shared.lora import LoraSettings, add_adapters

OUTPUTS = (".csv", ".tsv", ".jsonl", ".parquet")


class PredictError(RuntimeError):
    """The site has no servable model, or its files do not fit together; says what to do."""


@dataclass(frozen=True)
class TaskInputs:
    """What serving a task needs of its site.yaml entry: its name, text columns and label separator."""

    name: str
    text_columns: list[str]
    label_separator: str = "|"

    @classmethod
    def of(cls, task: TaskConfig) -> TaskInputs:
        return cls(task.name, list(task.text_columns), task.label_separator)


@dataclass
class _Task:
    config: TaskInputs
    spec: HeadSpec
    head: TaskHead
    encoder: TextEncoder  # the encoder of its part: tasks of one part share it


def served_parts(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The entry's parts, each one encoder and the heads of its ``tasks`` (None: every task); an
    entry written before sites chose task by task is one part of its own keys."""
    if "parts" in info:
        return [dict(part) for part in info["parts"]]
    return [{"model": info.get("model"), "tasks": None, "heads": info["heads"],
             "encoder_tensors": info.get("encoder_tensors"), "lora": info.get("lora")}]


EXPORT_META = "site_model.json"  # in an exported folder: the served model, paths relative to the folder
EXPORT_INPUTS = "inputs.json"  # ... and the tasks' inputs and max_length


def export_site_model(info: dict[str, Any], tasks_inputs: list[TaskInputs], max_length: int, folder: Path) -> Path:
    """Copy the model a ``site_model.json`` entry describes into ``folder`` (new), so
    ``SiteModel.from_folder`` rebuilds it anywhere fedtl is installed: the heads, the trained encoder
    tensors, and the base encoder where it is a folder of the site's (``minilm`` and ``tiny`` ship
    with fedtl). Files only, nothing loaded: cheap enough to run at the end of every round."""
    import shutil

    folder.mkdir(parents=True)
    info = dict(info, parts=served_parts(info))
    for i, part in enumerate(info["parts"]):
        into = f"part-{i}"
        shutil.copytree(part["heads"], folder / into / "heads", ignore=shutil.ignore_patterns("encoder.safetensors"))
        part["heads"] = f"{into}/heads"
        if part.get("encoder_tensors"):
            shutil.copy2(part["encoder_tensors"], folder / into / "encoder.safetensors")
            part["encoder_tensors"] = f"{into}/encoder.safetensors"
    if Path(info["encoder_spec"]).is_dir():
        shutil.copytree(info["encoder_spec"], folder / "base_encoder")
        info.update(encoder_spec="base_encoder", encoder_in_folder=True)
    (folder / EXPORT_META).write_text(json.dumps(info, indent=2))
    (folder / EXPORT_INPUTS).write_text(json.dumps({"tasks": [dataclasses.asdict(t) for t in tasks_inputs],
                                                    "max_length": max_length}, indent=2))
    return folder


class SiteModel:
    def __init__(self, tasks_inputs: list[TaskInputs], max_length: int, tasks: list[_Task], info: dict[str, Any]):
        self.inputs, self.max_length, self.tasks, self.info = tasks_inputs, max_length, tasks, info

    @classmethod
    def load(cls, site: SiteConfig) -> SiteModel:
        meta = site.state_dir / "federated" / EXPORT_META
        if not meta.exists():
            raise PredictError(f"{meta}: not found; site {site.name} serves a model once it has taken part in a "
                               "federated round")
        return cls.from_meta(json.loads(meta.read_text()), [TaskInputs.of(t) for t in site.tasks],
                             site.training.max_length)

    @classmethod
    def from_folder(cls, folder: Path) -> SiteModel:
        """A model ``export_site_model`` wrote: everything it needs is inside ``folder``."""
        info = json.loads((folder / EXPORT_META).read_text())
        inputs = json.loads((folder / EXPORT_INPUTS).read_text())
        info["parts"] = served_parts(info)
        for part in info["parts"]:
            part["heads"] = str(folder / part["heads"])
            if part.get("encoder_tensors"):
                part["encoder_tensors"] = str(folder / part["encoder_tensors"])
        if info.get("encoder_in_folder"):
            info["encoder_spec"] = str(folder / info["encoder_spec"])
        return cls.from_meta(info, [TaskInputs(**t) for t in inputs["tasks"]], int(inputs["max_length"]))

    @classmethod
    def from_meta(cls, info: dict[str, Any], tasks_inputs: list[TaskInputs], max_length: int) -> SiteModel:
        """The model ``site_model.json``'s entry describes, serving ``tasks_inputs``."""
        by_name: dict[str, _Task] = {}
        for part in served_parts(info):
            wanted = [t for t in tasks_inputs if part["tasks"] is None or t.name in part["tasks"]]
            if wanted:
                encoder = cls._part_encoder(info, part)
                by_name.update((t.name, cls._task(part, t, encoder)) for t in wanted)
        missing = [t.name for t in tasks_inputs if t.name not in by_name]
        if missing:
            raise PredictError(f"the served model has no part for task(s) {missing}: run a federated round again")
        return cls(tasks_inputs, max_length, [by_name[t.name] for t in tasks_inputs], info)

    @staticmethod
    def _part_encoder(info: dict[str, Any], part: dict[str, Any]) -> TextEncoder:
        """A part's encoder: the pretrained one, its adapters, its trained tensors over it."""
        seed = int(info.get("encoder_seed", 0))
        encoder = load_encoder(info["encoder_spec"], seed=seed)
        if part.get("lora"):
            add_adapters(encoder, LoraSettings(**dict(part["lora"], targets=tuple(part["lora"]["targets"]))), seed=seed)
        if part.get("encoder_tensors"):
            from safetensors.numpy import load_file

            tensors = load_file(part["encoder_tensors"])
            params = dict(encoder.named_parameters())
            unknown = sorted(set(tensors) - set(params))
            if unknown:
                raise PredictError(f"{part['encoder_tensors']}: tensors the encoder lacks: {unknown[:3]}")
            with torch.no_grad():
                for name, value in tensors.items():
                    params[name].copy_(torch.from_numpy(value))
        return encoder.eval()

    @staticmethod
    def _task(part: dict[str, Any], task: TaskInputs, encoder: TextEncoder) -> _Task:
        stored = HeadStore(part["heads"]).load(task.name)
        if stored is None:
            raise PredictError(f"{part['heads']}: no head for task {task.name!r}")
        spec, weights, _ = stored
        head = spec.build()
        head.load_state_dict(weights)
        return _Task(task, spec, head.eval(), encoder)

    @torch.no_grad()
    def _features(self, task: _Task, texts: list[str]) -> torch.Tensor:
        return embed_texts(task.encoder, texts, self.max_length)

    @torch.no_grad()
    def predict(self, texts_by_task: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
        """Per task, one result per text: ``label`` + ``probability`` | ``labels`` | ``value``."""
        results: dict[str, list[dict[str, Any]]] = {}
        for task in self.tasks:
            outputs = task.head(self._features(task, texts_by_task[task.config.name])).float()
            spec = task.spec
            if spec.type == TaskType.classification:
                probs = torch.softmax(outputs, -1)
                best = probs.argmax(-1)
                chosen = probs.gather(1, best[:, None]).squeeze(1)
                results[task.config.name] = [{"label": spec.labels[i], "probability": float(p)}
                                             for i, p in zip(best.tolist(), chosen.tolist())]
            elif spec.type == TaskType.multilabel:
                results[task.config.name] = [{"labels": [label for label, on in zip(spec.labels, row) if on]}
                                             for row in spec.predict(outputs)]
            else:
                results[task.config.name] = [{"value": float(v)} for v in np.atleast_1d(spec.predict(outputs))]
        return results

    def texts(self, rows: list[tuple[int, dict[str, Any]]], source: Path | str) -> dict[str, list[str]]:
        """Each task's input texts from ``rows``; a missing or empty text column is a DataError naming it."""
        return {t.config.name: [text_of_row(row, t.config, Path(source), n) for n, row in rows] for t in self.tasks}

    def columns(self, results: dict[str, list[dict[str, Any]]], i: int) -> dict[str, Any]:
        """Row ``i``'s output columns: ``<task>`` and, for classification, ``<task>_probability``."""
        out: dict[str, Any] = {}
        for task in self.tasks:
            name, result = task.config.name, results[task.config.name][i]
            if "label" in result:
                out[name], out[f"{name}_probability"] = result["label"], result["probability"]
            elif "labels" in result:
                out[name] = task.config.label_separator.join(result["labels"])
            else:
                out[name] = result["value"]
        return out


def check_output(output: Path | None) -> str:
    """The output format (its suffix); one fedtl cannot write is refused before any work."""
    suffix = output.suffix.lower() if output is not None else ".csv"
    if suffix not in OUTPUTS:
        raise DataError(output, f"unsupported output type '{suffix}'; use .csv, .tsv, .jsonl or .parquet")
    return suffix


def predict_file(model: SiteModel, input_path: Path, output: Path | None) -> int:
    """Predict every task for ``input_path`` (CSV/TSV/JSONL/Parquet); write ``output`` (same formats; None: CSV to stdout)."""
    check_output(output)
    rows = read_rows(input_path)
    results = model.predict(model.texts(rows, input_path))
    records = [{**row, **model.columns(results, i)} for i, (_, row) in enumerate(rows)]
    write_records(records, output)
    return len(records)


def write_records(records: list[dict[str, Any]], output: Path | None) -> None:
    from fedtl.shared.atomic import write_bytes_atomic

    suffix = check_output(output)
    fields = list(dict.fromkeys(k for r in records for k in r))
    if suffix == ".parquet":
        import pandas as pd

        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        pd.DataFrame.from_records(records, columns=fields).to_parquet(tmp, index=False)
        tmp.replace(output)
        return
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, default=str) + "\n" for r in records)
    else:
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
    else:
        write_bytes_atomic(output, text.encode())

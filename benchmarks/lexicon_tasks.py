"""Three sites with three related tasks on disjoint words of the bundled VADER lexicon (for benchmarks).

The bundled sites have little to transfer (benchmarks/README.md): a centralized multi-task
model does not beat local training on them. This scenario is built so that transfer exists,
shaped like the issue's outside benchmark (two classification sites, one regression site, a
few hundred training rows each), with validation sets large enough (300 rows) that
differences between methods are not swamped by the seeds' spread:

- ``valence``: regression of the word's mean valence rating (-4..4);
- ``polarity``: negative (<= -1) / neutral / positive (>= 1);
- ``intensity``: strong (|valence| >= 2) or mild.

Each site holds its own words, so no row is shared; what they share is the sentiment of words.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import yaml

from fedtl.shared.examples import examples_root
from fedtl.shared.partitions import polarity

TASKS = {
    "valence": {"type": "regression", "label": lambda v: f"{v:.2f}"},
    "polarity": {"type": "classification", "labels": ["negative", "neutral", "positive"],
                 "label": polarity},
    "intensity": {"type": "classification", "labels": ["mild", "strong"],
                  "label": lambda v: "strong" if abs(v) >= 2 else "mild"},
}
TRAINING = {"head_epochs": 40, "encoder_epochs": 1, "encoder_lr": 3.0e-4, "batch_size": 32, "max_length": 16, "seed": 0}


def lexicon_task_sites(dest: Path, train_rows: int = 600, val_rows: int = 300, seed: int = 0) -> list[Path]:
    """Write one site.yaml and data file per task under ``dest``: ``train_rows`` + ``val_rows`` words each."""
    rows = train_rows + val_rows
    with (examples_root() / "data" / "lexicon_valence.csv").open(newline="", encoding="utf-8") as fh:
        words = [(r["term"], float(r["valence"])) for r in csv.DictReader(fh)]
    random.Random(seed).shuffle(words)
    if rows * len(TASKS) > len(words):
        raise ValueError(f"{rows} rows x {len(TASKS)} sites is more than the lexicon's {len(words)} words")
    paths = []
    for k, (task, spec) in enumerate(TASKS.items()):
        data = dest / "data" / f"lexicon_{task}.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        with data.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["term", task])
            out.writerows((term, spec["label"](value)) for term, value in words[k * rows:(k + 1) * rows])
        block = {"name": task, "type": spec["type"], "data": str(data), "text_columns": "term",
                 "target_column": task, "validation_split": val_rows / rows}
        if "labels" in spec:
            block["labels"] = spec["labels"]
        site = {"name": f"lex_{task}", "state_dir": str(dest / "state" / task), "encoder": "minilm",
                "training": dict(TRAINING), "tasks": [block]}
        path = dest / "sites" / f"lex_{task}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(site, sort_keys=False))
        paths.append(path)
    return paths

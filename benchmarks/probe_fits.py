"""Heads on frozen features: which fit serves a site best on rows no choice has seen?

fedtl's probe (``HeadSpec.fit_converged``: ridge by GCV, or logistic regression with a
cross-validated penalty and balanced class weights) is fitted on the training split only; the
validation split is kept for choosing between models. scikit-learn's ``LogisticRegression()`` /
``RidgeCV()``, as a site would write it alone, is fitted on every non-test row. This script
separates the two differences (method and rows) on the same frozen MiniLM features:

- ``fedtl train`` / ``sklearn train``: fitted on the training split only;
- ``fedtl train+val`` / ``sklearn train+val``: fitted on training and validation rows (what a
  site can serve once its choices are made: refit the chosen head on every row it has);
- ``fedtl train+val by log-loss`` / ``by metric``: the same rows, the logistic penalty chosen for
  every task by the held-out folds' log-loss, or by the task's primary metric (fedtl's default,
  ``select_by="auto"``, takes the metric for multi-label tasks and log-loss for classification;
  regression is ridge by GCV in every arm).

Every scenario of benchmarks/learning.py (bundled sites, lexicon tasks, the WordNet scenarios),
seeds that redraw the test cut, the primary metric on the test split, mean ± sd; and the fit's
seconds. Features are computed once per text and reused across seeds and arms.

    python benchmarks/probe_fits.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from holdout import hold_out
from lexicon_tasks import lexicon_task_sites
from readme_block import write_block
from wordnet_tasks import wordnet_task_sites

from fedtl.client.batching import embed_texts
from fedtl.client.local_training import load_site_data, prepare_tasks
from fedtl.shared.config import TaskType, load_site_config
from fedtl.shared.data import load_held_out
from fedtl.shared.encoders import load_encoder
from fedtl.shared.examples import copy_examples

ARMS = ("sklearn train", "fedtl train", "sklearn train+val", "fedtl train+val", "fedtl train+val by log-loss",
        "fedtl train+val by metric")


def scenarios(work: Path) -> dict[str, tuple[list[Path], float]]:
    """Each scenario's site configs and the share of rows held out for test."""
    return {
        "bundled": (list(copy_examples(work / "bundled").values()), 0.3),
        "lexicon": (lexicon_task_sites(work / "lexicon"), 0.3),
        "wordnet definitions": (wordnet_task_sites("definitions", work / "wn-definitions"), 0.3),
        "wordnet usage": (wordnet_task_sites("usage", work / "wn-usage"), 0.3),
        "wordnet nouns": (wordnet_task_sites("nouns", work / "wn-nouns", rows=600), 0.5),
    }


class Features:
    """Frozen features by text, each text embedded once."""

    def __init__(self, encoder, max_length: int):
        self.encoder, self.max_length, self.cache = encoder, max_length, {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            self.cache.update(zip(todo, embed_texts(self.encoder, todo, self.max_length)))
        return torch.stack([self.cache[t] for t in texts]) if texts else torch.zeros((0, self.encoder.hidden_size))


def sklearn_fit(kind: TaskType, x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.multiclass import OneVsRestClassifier

    if kind == TaskType.regression:
        return RidgeCV().fit(x, y)
    if kind == TaskType.classification:
        return LogisticRegression(max_iter=2000).fit(x, y)
    return OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(x, y)


def score_arms(task, features: Features, test_rows) -> dict[str, tuple[float, float]]:
    """Each arm's primary test metric and fit seconds for one prepared task."""
    spec, data = task.spec, task.data
    x_train, x_val = features(data.train.texts), features(data.val.texts)
    x_test = features(test_rows.texts)
    y_train, y_val = torch.as_tensor(data.train.targets), torch.as_tensor(data.val.targets)
    rows = {"train": (x_train, y_train), "train+val": (torch.cat([x_train, x_val]), torch.cat([y_train, y_val]))}
    out = {}

    def fedtl(x, y, select_by: str = "auto") -> tuple[float, float]:
        t0 = time.perf_counter()
        weight, bias = spec.fit_converged(x, y, select_by=select_by)
        seconds = time.perf_counter() - t0
        head = spec.build().eval()  # no dropout: the head as a site serves it
        with torch.no_grad():
            head.linear.weight.copy_(weight)
            head.linear.bias.copy_(bias)
            predicted = spec.predict(head(x_test))
        return spec.metrics(predicted, test_rows.targets)[spec.primary_metric], seconds

    out["fedtl train+val by log-loss"] = fedtl(*rows["train+val"], select_by="log_loss")
    out["fedtl train+val by metric"] = fedtl(*rows["train+val"], select_by="metric")
    for which, (x, y) in rows.items():
        out[f"fedtl {which}"] = fedtl(x, y)
        t0 = time.perf_counter()
        model = sklearn_fit(spec.type, x.numpy(), y.numpy())
        seconds = time.perf_counter() - t0
        predicted = np.asarray(model.predict(x_test.numpy()))
        if spec.type == TaskType.multilabel:
            predicted = predicted.astype(np.float32)
        out[f"sklearn {which}"] = (spec.metrics(predicted, test_rows.targets)[spec.primary_metric], seconds)
    return out


def run(seeds: list[int], work: Path) -> list[dict[str, Any]]:
    encoder = load_encoder("minilm").eval()
    results = []
    for scenario, (paths, share) in scenarios(work).items():
        features: dict[int, Features] = {}
        for seed in seeds:
            for held in hold_out(paths, work / "held" / scenario / str(seed), seed, share):
                cfg = load_site_config(held.config)
                cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": seed})})
                feats = features.setdefault(cfg.training.max_length, Features(encoder, cfg.training.max_length))
                tasks = prepare_tasks(load_site_data(cfg), encoder, None, cfg.training.max_length, seed)
                for task in tasks:
                    test_rows = load_held_out(task.data.task, [held.tests[task.name]], task.spec.labels)
                    arms = score_arms(task, feats, test_rows)
                    results.append({"scenario": scenario, "site": cfg.name, "task": task.name, "seed": seed,
                                    "metric": task.spec.primary_metric, "train_rows": len(task.data.train.texts),
                                    "val_rows": len(task.data.val.texts), "arms": arms})
                    print(f"{scenario} seed {seed} {cfg.name}/{task.name}: "
                          + ", ".join(f"{a} {v[0]:.3f}" for a, v in arms.items()), flush=True)
    return results


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def stat(values):
        return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

    keys = list(dict.fromkeys((r["scenario"], r["site"], r["task"]) for r in results))
    lines = [f"Seeds {meta['seeds']} (each redraws the test cut), encoder `minilm` frozen, {meta['machine']}. "
             "Primary metric on the test split, mean ± sd over seeds; the best arm of each row in bold.", "",
             "| scenario | site | task | metric | rows train/val | " + " | ".join(ARMS) + " |",
             "|" + "---|" * (5 + len(ARMS))]
    means = {a: [] for a in ARMS}
    wins = {a: 0 for a in ARMS}
    for key in keys:
        rows = [r for r in results if (r["scenario"], r["site"], r["task"]) == key]
        stats = {a: stat([r["arms"][a][0] for r in rows]) for a in ARMS}
        best = max(stats[a][0] for a in ARMS)
        for a in ARMS:
            means[a].append(stats[a][0])
            wins[a] += stats[a][0] >= best - 0.005
        cells = [(f"**{m:.3f} ± {s:.3f}**" if m == best else f"{m:.3f} ± {s:.3f}") for m, s in stats.values()]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {rows[0]['metric']} | {rows[0]['train_rows']}/"
                     f"{rows[0]['val_rows']} | " + " | ".join(cells) + " |")
    seconds = {a: statistics.fmean(r["arms"][a][1] for r in results) for a in ARMS}
    lines += ["", "| arm | mean over site-tasks | within 0.005 of the best | fit seconds (mean a task) |",
              "|---|---|---|---|"]
    lines += [f"| {a} | {statistics.fmean(means[a]):.3f} | {wins[a]} of {len(keys)} | {seconds[a]:.2f} |" for a in ARMS]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe-fits"))
    parser.add_argument("--readme", type=Path, default=Path(__file__).with_name("README.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fedtl-probe-fits-") as tmp:
        results = run(args.seeds, Path(tmp))
    meta = {"seeds": args.seeds, "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, "
                                            f"torch {torch.__version__}"}
    table = markdown(results, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out / "probe-fits.md").write_text(table)
    write_block(args.out.name, table, args.readme)
    print(table)


if __name__ == "__main__":
    main()

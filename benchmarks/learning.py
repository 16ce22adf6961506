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
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from lexicon_tasks import lexicon_task_sites
from readme_block import write_block
from split_sites import split_site

from fedtl.client.local_training import load_site_data, prepare_tasks
from fedtl.client.prefix_cache import PrefixCache, frozen_prefix_layers
from fedtl.client.trainer import LocalTrainer, PreparedTask
from fedtl.client.worker import SiteWorker
from fedtl.server.inprocess import InProcessGrid
from fedtl.server.rounds import FederationRun
from fedtl.shared.atomic import write_text_atomic
from fedtl.shared.config import SiteConfig, load_site_config
from fedtl.shared.encoders import load_encoder
from fedtl.shared.examples import copy_examples
from fedtl.shared.federation_config import FederationConfig
from fedtl.shared.protocol import Section, primary_metrics, report_value
from fedtl.shared.update_modes import UpdateMode, exchanged_names

METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy": {"name": "fedavg"}},
    "fedavgm": {"strategy": {"name": "fedavgm", "server_momentum": 0.5}},
    "fedadam": {"strategy": {"name": "fedadam", "eta": 3e-4, "eta_l": 3e-5, "tau": 1e-6}},
    "ditto": {"personalization": {"method": "ditto", "ditto_lambda": 0.01}},
    "similarity": {"personalization": {"method": "similarity", "similarity_temperature": 0.1}},
}


# a share of the centralized gain is reported only where that gain is at least this: a share of a
# gain of 0.0005 (noise) reads as +-2000% and says nothing
CENTRAL_GAIN_FLOOR = 0.005


# ---------------------------------------------------------------- the arms
def site_configs(paths: list[Path], seed: int, root: Path, span: str = "federation") -> list[SiteConfig]:
    configs = []
    for path in paths:
        cfg = load_site_config(path)
        training = cfg.training.model_copy(update={"seed": seed, "lr_schedule_span": span})
        configs.append(cfg.model_copy(update={"state_dir": root / cfg.name, "training": training}))
    return configs


def trainable(encoder, update: str) -> set[str]:
    return set(exchanged_names([n for n, _ in encoder.named_parameters()], UpdateMode.parse(update)))


def fit(encoder, tasks: list[PreparedTask], cfg: SiteConfig, update: str, steps: int) -> dict[str, Any]:
    """Probe, then ``steps`` encoder steps (no keep-best): what a site reaches training alone."""
    names = trainable(encoder, update)
    training = cfg.training.model_copy(update={"max_steps": steps, "encoder_epochs": 10**6, "keep_best": False})
    trainer = LocalTrainer(encoder, tasks, training, torch.device("cpu"), encoder_trainable=names.__contains__,
                           frozen_layers=frozen_prefix_layers(encoder, names), prefix_cache=PrefixCache(2**31))
    started = time.perf_counter()
    result = trainer.fit()
    return {"metrics": result.metrics, "seconds": time.perf_counter() - started}


def local_only(cfg: SiteConfig, encoder_spec: str, update: str, steps: int) -> dict[str, dict[str, float]]:
    encoder = load_encoder(encoder_spec)
    tasks = prepare_tasks(load_site_data(cfg), encoder, None, cfg.training.max_length, cfg.training.seed)
    out = fit(encoder, tasks, cfg, update, steps)
    return {t.name: {"probe": out["metrics"]["probe"][t.name][t.spec.primary_metric],
                     "finetuned": out["metrics"]["finetuned"][t.name][t.spec.primary_metric]} for t in tasks}


def centralized(cfgs: list[SiteConfig], encoder_spec: str, update: str, steps: int) -> dict[str, dict[str, float]]:
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
    results: dict[str, dict[str, float]] = {}
    for t in tasks:
        site, task = owner[t.name]
        results.setdefault(site, {})[task] = out["metrics"]["finetuned"][t.name][t.spec.primary_metric]
    return results


class Collector:
    """Observer: each site's served validation metric per round, with wall seconds."""

    def __init__(self):
        self.started = time.perf_counter()
        self.rounds: list[dict[str, Any]] = []

    def start(self, info):
        self.started = time.perf_counter()

    def round(self, record):
        sites = {}
        for site, entry in record["sites"].items():
            report = entry["report"]
            sites[site] = {task: report_value(report, Section.VAL, task, metric)
                           for task, metric in primary_metrics(report)}
        self.rounds.append({"round": record["round"], "seconds": time.perf_counter() - self.started, "sites": sites,
                            "update_norms": record.get("update_norms", {}),
                            "train_loss": {s: e["metrics"].get("train_loss") for s, e in record["sites"].items()},
                            "cosine": record.get("update_cosine", {})})

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
    FederationRun(fed, fed.state_dir, run_id=1, observers=[collector]).run(InProcessGrid(workers))
    return collector


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


def markdown(summary: dict[str, Any], methods: list[str], meta: dict[str, Any]) -> str:
    def cell(pair):
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    split = meta.get("split")
    sites = f"the bundled site {split.split(':')[0]}'s rows split across {split.split(':')[1]} sites, " if split else ""
    if meta.get("lexicon_tasks"):
        sites = ("three related tasks on disjoint words of the bundled lexicon "
                 f"({meta.get('train_rows', 600)} training, 300 validation each), ")
    lines = [f"{sites}Seeds {meta['seeds']}, encoder `{meta['encoder']}`, update mode `{meta['update']}`, "
             f"{meta['rounds']} rounds x {meta['steps']} encoder steps per site (local and centralized: "
             f"{meta['rounds'] * meta['steps']} steps), sites' lr schedule spanning "
             f"{'all rounds' if meta.get('lr_schedule_span', 'round') == 'federation' else 'one round'}, "
             f"{meta['machine']}.", ""]
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
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="override a method setting, e.g. ditto.personalization.ditto_lambda=0.5")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/learning"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readme", type=Path, default=Path(__file__).with_name("README.md"),
                        help="write the table into this file between the learning markers")
    parser.add_argument("--lr-schedule-span", choices=["federation", "round"], default="federation",
                        help="the sites' lr schedule: one over all rounds, or a fresh one each round")
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
    elif args.split:
        name, parts = args.split.split(":")
        paths = split_site(copy_examples(work / "bundled")[name], int(parts), work / "split")
    else:
        paths = args.site or list(copy_examples(work / "sites").values())
    steps = args.rounds * args.steps
    # a finished seed is kept only by a run of the same configuration
    plan = {"encoder": args.encoder, "update": args.update, "rounds": args.rounds, "steps": args.steps,
            "methods": methods, "lr_schedule_span": args.lr_schedule_span, "split": args.split,
            "lexicon_tasks": args.lexicon_tasks, "train_rows": args.train_rows, "sites": [str(p) for p in args.site or []]}
    partial = args.out / "partial.json"
    saved = json.loads(partial.read_text()) if args.resume and partial.exists() else {}
    done = {r["seed"]: r for r in saved.get("runs", [])} if saved.get("plan") == plan else {}
    results = []
    for seed in args.seeds:
        if seed in done:
            print(f"seed {seed}: kept from {partial}", flush=True)
            results.append(done[seed])
            continue
        run: dict[str, Any] = {"seed": seed, "federated": {}}
        cfgs = site_configs(paths, seed, work / f"seed{seed}" / "local")
        run["primary"] = {}
        for cfg in cfgs:
            data = load_site_data(cfg)
            from fedtl.shared.heads import PRIMARY_METRIC

            run["primary"][cfg.name] = {d.task.name: PRIMARY_METRIC[d.task.type] for d in data}
        t0 = time.perf_counter()
        run["local"] = {cfg.name: local_only(cfg, args.encoder, args.update, steps) for cfg in cfgs}
        run["central"] = centralized(cfgs, args.encoder, args.update, steps)
        print(f"seed {seed}: local-only and centralized in {time.perf_counter() - t0:.0f}s", flush=True)
        for name, settings in methods.items():
            t0 = time.perf_counter()
            root = work / f"seed{seed}" / name
            sites = site_configs(paths, seed, root / "sites", args.lr_schedule_span)
            collector = federated(sites, args.encoder, args.update, args.rounds,
                                  args.steps, settings, root)
            run["federated"][name] = {"rounds": collector.rounds, "settings": settings}
            last = collector.rounds[-1]["sites"]
            print(f"seed {seed}: {name} in {time.perf_counter() - t0:.0f}s: "
                  + ", ".join(f"{s}/{t} {v:.3f}" for s, tasks in last.items() for t, v in tasks.items()), flush=True)
        results.append(run)
        shutil.rmtree(work / f"seed{seed}", ignore_errors=True)
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(partial, json.dumps({"plan": plan, "runs": results}, default=float))
    import platform

    meta = {"seeds": args.seeds, "encoder": args.encoder, "update": args.update, "rounds": args.rounds,
            "steps": args.steps, "methods": methods, "lr_schedule_span": args.lr_schedule_span, "split": args.split,
            "lexicon_tasks": args.lexicon_tasks, "train_rows": args.train_rows,
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    report(results, meta, args.out, args.readme)


def report(results: list[dict[str, Any]], meta: dict[str, Any], out: Path, readme: Path | None) -> None:
    """results.json, learning.md, learning.png under ``out``; the table into ``readme`` between the
    markers named after ``out`` (``<!-- learning:start -->`` for results/learning); the verdict last."""
    methods = list(meta["methods"])
    summary = summarize(results, methods)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": results, "summary": summary}, indent=1,
                                                 default=float))
    table = markdown(summary, methods, meta)
    (out / "learning.md").write_text(table)
    plot(results, methods, out / "learning.png")
    if readme is not None:
        image = Path(out / "learning.png").resolve().relative_to(readme.parent.resolve())
        write_block(out.name, f"{table}\n![metric against rounds and wall seconds]({image})", readme)
    print(table)
    best = max(methods, key=lambda m: (summary["targets"][m]["every_site_at_least_best_local"],
                                       summary["targets"][m]["mean_gain"]))
    t = summary["targets"][best]
    print(f"best method: {best}: every site >= its best local: {t['every_site_at_least_best_local']}, "
          f"mean gain {t['mean_gain']:+.3f} (target >= +0.020)")
    if not math.isfinite(t["mean_gain"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

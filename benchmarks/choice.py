"""What other choice rules would have served, read from learning.py runs that recorded the
sites' candidates (site_model.json's ``candidates``: validation and test scores of every model a
site weighed at its last choice).

A site chooses, task by task, between the federation's model and its own fallback (fine-tuned
alone or the probe); runs made at commit 57d558f with ``training.interpolate`` (since removed)
also recorded the mean of the two encoders. The choice reads
validation only, so any rule over the recorded validation scores is what a site running that
rule would have served, and its test score is the candidate's: several rules compare side by side
on the same seeds, splits and trained models.

    python benchmarks/choice.py benchmarks/results/learning-test-*-interpolate --out benchmarks/results/choice
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from readme_block import write_block

from fedtl.client.site_choice import OWN, choose

Candidates = dict[str, dict[str, float]]  # candidate -> {"val": ..., "test": ...} for one task
Rule = Callable[[Candidates], str]


def by_validation(names: tuple[str, ...], margin: float = 0.0) -> Rule:
    """What a site weighing the candidates ``names`` (``own``: its fallback) serves with ``margin``:
    client/site_choice.py's rule itself."""
    def rule(c: Candidates) -> str:
        weighed = {n: c[n]["val"] for n in c if n in names or (n in OWN and "own" in names)}
        return choose(weighed, margin)
    return rule


def always(name: str) -> Rule:
    return lambda c: name if name in c else next(n for n in c if n in OWN)


def oracle(c: Candidates) -> str:
    return max(c, key=lambda n: c[n]["test"])


RULES: dict[str, Rule] = {
    "federated or own (the default)": by_validation(("federated", "own")),
    "federated, interpolated or own": by_validation(("federated", "interpolated", "own")),
    "interpolated or own": by_validation(("interpolated", "own")),
    **{f"federated or own, margin {m}": by_validation(("federated", "own"), m) for m in (0.005, 0.01, 0.02)},
    **{f"federated, interpolated or own, margin {m}": by_validation(("federated", "interpolated", "own"), m)
       for m in (0.005, 0.01, 0.02)},
    "always the federated": always("federated"),
    "always the interpolated": always("interpolated"),
    "always its own": lambda c: next(n for n in c if n in OWN),
    "best on test (oracle, for scale)": oracle,
}


def rule_scores(results: dict[str, Any], method: str, rule: Rule) -> dict[tuple[str, str], list[float]]:
    """(site, task) -> the test score the rule serves, per seed (in the order of the runs)."""
    out: dict[tuple[str, str], list[float]] = {}
    for run in results["runs"]:
        for site, tasks in run["candidates"][method].items():
            by_task: dict[str, Candidates] = {}
            for name, scores in tasks.items():
                for task, pair in scores.items():
                    by_task.setdefault(task, {})[name] = pair
            for task, candidates in by_task.items():
                out.setdefault((site, task), []).append(candidates[rule(candidates)]["test"])
    return out


def evaluate(results: dict[str, Any], method: str) -> dict[str, dict[str, Any]]:
    rows = {(r["site"], r["task"]): r for r in results["test_summary"]["rows"]}
    own = rule_scores(results, method, RULES["always its own"])  # what each site serves without joining
    recorded = {c for run in results["runs"] for site in run["candidates"][method].values() for c in site}
    out = {}
    for name, rule in RULES.items():
        if "interpolated" in name and "interpolated" not in recorded:  # a run without training.interpolate
            continue
        per_seed = rule_scores(results, method, rule)
        served = {k: statistics.fmean(v) for k, v in per_seed.items()}
        gaps = {k: served[k] - rows[k]["best_alone"][0] for k in served}
        over_own = [s - o for k in per_seed for s, o in zip(per_seed[k], own[k])]
        pays = [k for k in served if rows[k]["pooling_pays"]]
        recovered = [gaps[k] / (rows[k]["central"][0] - rows[k]["best_alone"][0]) for k in pays]
        out[name] = {"gaps": gaps, "mean_gain": statistics.fmean(gaps.values()),
                     "below": sum(g < -0.005 for g in gaps.values()), "worst": min(gaps.values()),
                     "gain_where_pays": statistics.fmean([gaps[k] for k in pays]) if pays else None,
                     "min_recovered": min(recovered) if recovered else None, "site_tasks": len(gaps),
                     "over_own": over_own}
    return out


def markdown(per_run: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One row per rule: over every scenario, then the scenario means."""
    scenarios = list(per_run)
    lines = ["| rule | site-tasks > 0.005 below best alone | worst gap | mean gain | gain where pooling pays "
             "| min % of centralized gain | mean gain over its own model (paired) | "
             + " | ".join(f"{s} mean gain" for s in scenarios) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(scenarios)]
    for rule in RULES:
        if not all(rule in per_run[s] for s in scenarios):
            continue
        gaps = [g for s in scenarios for g in per_run[s][rule]["gaps"].values()]
        pays = [per_run[s][rule]["gain_where_pays"] for s in scenarios if per_run[s][rule]["gain_where_pays"] is not None]
        recovered = [per_run[s][rule]["min_recovered"] for s in scenarios
                     if per_run[s][rule]["min_recovered"] is not None]
        total = sum(per_run[s][rule]["site_tasks"] for s in scenarios)
        pays_cell = f"{statistics.fmean(pays):+.3f}" if pays else "n/a"
        rec_cell = f"{min(recovered):.0%}" if recovered else "n/a"
        lines.append(f"| {rule} | {sum(g < -0.005 for g in gaps)} of {total} | {min(gaps):+.3f} "
                     f"| {statistics.fmean(gaps):+.3f} | {pays_cell} | {rec_cell} "
                     f"| {statistics.fmean([g for s in scenarios for g in per_run[s][rule]['over_own']]):+.3f} | "
                     + " | ".join(f"{per_run[s][rule]['mean_gain']:+.3f}" for s in scenarios) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="learning.py result folders with recorded candidates")
    parser.add_argument("--method", default="fedexp")
    parser.add_argument("--out", type=Path, help="write choice.md here and the table into the README block")
    parser.add_argument("--readme", type=Path, default=Path(__file__).with_name("README.md"))
    args = parser.parse_args()
    per_run = {}
    for folder in args.runs:
        results = json.loads((folder / "results.json").read_text())
        if not all("candidates" in run for run in results["runs"]):
            raise SystemExit(f"{folder}: no candidates recorded (a learning.py run before they were)")
        per_run[folder.name.removeprefix("learning-test-").removesuffix("-interpolate")] = evaluate(results, args.method)
    table = markdown(per_run)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "choice.md").write_text(table + "\n")
        write_block(args.out.name, table, args.readme)


if __name__ == "__main__":
    main()

"""`fedtl simulate` at 10, 100 and 1,000 virtual sites: seconds per round and per site, peak memory.

Each size runs the real command (``fedtl simulate``: fedtl's round loop and MLflow run on SQLite,
Flower's simulation engine with Ray, one actor per core running fedtl's site worker) on sites cut
from the bundled lexicon (polarity, Dirichlet label skew), the tiny encoder. Memory is the peak
proportional set size (PSS) of the command's whole process tree (driver, Ray's daemons and
actors), sampled every second.

    python benchmarks/simulation.py [--sites 10 100 1000] [--rounds 3] [--update last:1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from readme_block import README, write_block
from rich.console import Console
from rich.table import Table
from scale import tree_pss

OUT = Path(__file__).resolve().parent / "results" / "simulation"
MiB = 2**20


def federation_yaml(root: Path, sites: int, rounds: int, update: str, steps: int) -> Path:
    config = {
        "name": f"sim{sites}", "encoder": "tiny", "update_mode": update, "rounds": rounds, "min_sites": sites,
        "max_steps": steps, "round_timeout": 3600, "wait_for_sites": 120, "final_evaluate": False,
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "simulation",
                   "registered_model": None},
    }
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(sites: int, rounds: int, update: str, steps: int, root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    config = federation_yaml(root, sites, rounds, update, steps)
    fedtl = str(Path(sys.executable).with_name("fedtl"))
    cmd = [fedtl, "simulate", "--config", str(config), "--sites", str(sites), "--workdir", str(root / "w"),
           "--json", str(root / "out.json")]
    peak = 0
    t0 = time.perf_counter()
    with open(root / "simulate.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(1.0):
                peak = max(peak, tree_pss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"fedtl simulate --sites {sites} failed (rc {rc}); see {root / 'simulate.log'}")
    history = json.loads((root / "out.json").read_text())["rounds"]
    seconds = [r["seconds"] for r in history]
    return {
        "sites": sites, "rounds": len(history), "wall_s": wall,
        "failed_rounds": sum(not r["aggregated"] for r in history),
        "answered": [r["accepted"] for r in history],
        "round_s": seconds, "first_round_s": seconds[0],
        "later_round_s": statistics.mean(seconds[1:]) if len(seconds) > 1 else seconds[0],
        "peak_mib": peak / MiB,
    }


def table(results: list[dict]) -> Table:
    t = Table(title="fedtl simulate: virtual sites on Flower's simulation engine (tiny encoder)")
    for col in ("sites", "rounds", "sites answered", "round 1 s", "later rounds s", "s / site / round",
                "wall s", "peak MiB", "MiB / site"):
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(str(r["sites"]), f"{r['rounds'] - r['failed_rounds']}/{r['rounds']}", f"{min(r['answered'])}",
                  f"{r['first_round_s']:.1f}", f"{r['later_round_s']:.1f}", f"{r['later_round_s'] / r['sites']:.3f}",
                  f"{r['wall_s']:.0f}", f"{r['peak_mib']:.0f}", f"{r['peak_mib'] / r['sites']:.1f}")
    return t


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Tiny encoder, update mode `{args.update}`, {args.steps} encoder steps a site a round, {args.rounds} rounds, "
        f"every site every round; polarity from the bundled lexicon, Dirichlet alpha 0.5; "
        f"{platform.machine()} CPU, {os.cpu_count()} cores, one Ray actor per core.",
        "",
        "| sites | rounds aggregated | fewest sites answering | round 1 s | later rounds s | s / site / round "
        "| wall s | peak MiB (PSS, whole tree) | MiB / site |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['sites']} | {r['rounds'] - r['failed_rounds']}/{r['rounds']} | {min(r['answered'])} | "
                     f"{r['first_round_s']:.1f} | {r['later_round_s']:.1f} | {r['later_round_s'] / r['sites']:.3f} | "
                     f"{r['wall_s']:.0f} | {r['peak_mib']:.0f} | {r['peak_mib'] / r['sites']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update", default="last:1")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--readme", type=Path, default=README, help="write the table into this README")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedtl-sim-bench-") as tmp:
        for n in args.sites:
            results.append(run(n, args.rounds, args.update, args.steps, Path(tmp) / f"n{n}"))
            Console().print(table(results))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"args": vars(args) | {"readme": None}, "results": results}, indent=1))
    block = markdown(results, args)
    (OUT / "simulation.md").write_text(block + "\n")
    if args.readme is not None:
        write_block("simulation", block, args.readme)
    largest = results[-1]
    print(f"{largest['sites']} virtual sites: {largest['rounds'] - largest['failed_rounds']}/{largest['rounds']} "
          f"rounds aggregated, {largest['later_round_s'] / largest['sites']:.3f} s per site per round")


if __name__ == "__main__":
    main()

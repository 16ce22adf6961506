"""A site's seconds per round with the frozen-prefix cache off and on, side by side in one run.

Under ``last:N`` the bottom layers never change at a site, so embedding its texts through
them again every round repeats the same arithmetic. The cache (``training.prefix_cache_mb``)
keeps their outputs. Here the bundled sites run the same rounds through fedtl's own round
loop and site workers (an in-process Grid: no transport), once with the cache off and once
on; the per-phase seconds are what each site reports to the coordinator.

    python benchmarks/site_round.py [--sites clinic pharmacy] [--encoder minilm] [--update last:2]
                                    [--rounds 3] [--steps 12]
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

import torch
from readme_block import write_block
from rich.console import Console
from rich.table import Table

from fedtl.client.worker import SiteWorker
from fedtl.harness.grid import worker_grid
from fedtl.server.history import RoundRecord
from fedtl.server.rounds import FederationRun
from fedtl.shared.config import load_site_config
from fedtl.shared.examples import copy_examples
from fedtl.shared.federation_config import FederationConfig

OUT = Path(__file__).resolve().parent / "results" / "site-round"
PHASES = ("prefix_cache", "embed", "head", "encoder", "refit", "eval", "total")


class SecondsCollector:
    """Observer: each site's reported seconds per phase, per round."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, dict[str, float]]] = []

    def start(self, info: dict[str, Any]) -> None:
        pass

    def round(self, record: RoundRecord) -> None:
        self.rounds.append({site: {k.split("/", 1)[1]: float(v) for k, v in entry.report.items()
                                   if k.startswith("seconds/")}
                            for site, entry in record.sites.items()})

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        pass


def run_arm(sites: list[str], encoder: str, update: str, rounds: int, steps: int, cache_mb: int) -> SecondsCollector:
    with tempfile.TemporaryDirectory() as tmp:
        configs = copy_examples(Path(tmp) / "sites")
        cfgs = []
        for name in sites:
            cfg = load_site_config(configs[name])
            cfgs.append(cfg.model_copy(update={"training": cfg.training.model_copy(update={"prefix_cache_mb": cache_mb})}))
        fed = FederationConfig.model_validate({
            "name": "site-round", "encoder": encoder, "update_mode": update, "rounds": rounds,
            "min_sites": len(cfgs), "max_steps": steps, "state_dir": Path(tmp) / "coordinator",
            "final_evaluate": False, "round_timeout": 3600, "mlflow": {"enabled": False}})
        workers = {i + 1: SiteWorker(cfg, encoder) for i, cfg in enumerate(cfgs)}
        collector = SecondsCollector()
        FederationRun(fed, fed.state_dir, run_id=1, observers=[collector]).run(worker_grid(workers))
        return collector


def steady(collector: SecondsCollector, site: str, phase: str) -> float:
    """Mean seconds of a phase over rounds 2.. (round 1 also builds the cache and the local baseline)."""
    values = [r[site].get(phase, 0.0) for r in collector.rounds[1:]] or [collector.rounds[0][site].get(phase, 0.0)]
    return statistics.fmean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", nargs="+", default=["clinic", "pharmacy"])
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--update", default="last:2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cache-mb", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    started = time.perf_counter()
    arms = {"off": run_arm(args.sites, args.encoder, args.update, args.rounds, args.steps, 0),
            "on": run_arm(args.sites, args.encoder, args.update, args.rounds, args.steps, args.cache_mb)}
    meta = {"sites": args.sites, "encoder": args.encoder, "update": args.update, "rounds": args.rounds,
            "steps": args.steps, "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "site_round.json").write_text(json.dumps({"meta": meta, "rounds": {k: v.rounds for k, v in arms.items()}},
                                                         indent=1))

    table = Table(title=f"a site's seconds per round (rounds 2-{args.rounds}), {args.encoder} {args.update}, "
                        f"{args.steps} steps")
    table.add_column("site")
    table.add_column("cache")
    for phase in PHASES:
        table.add_column(phase, justify="right")
    lines = [f"Sites {', '.join(args.sites)}, encoder `{args.encoder}`, update mode `{args.update}`, "
             f"{args.rounds} rounds x {args.steps} encoder steps, mean of rounds 2-{args.rounds}, "
             f"{meta['machine']}, torch {meta['torch']}.", "",
             "| site | cache | " + " | ".join(PHASES) + " |", "|---|---|" + "---|" * len(PHASES)]
    ratios = []
    for site in args.sites:
        for arm in ("off", "on"):
            cells = [f"{steady(arms[arm], site, p):.1f}" for p in PHASES]
            table.add_row(site, arm, *cells)
            lines.append(f"| {site} | {arm} | " + " | ".join(cells) + " |")
        ratios.append(steady(arms["off"], site, "total") / steady(arms["on"], site, "total"))
    Console().print(table)
    lines += ["", "Seconds per round, cache off / on: " + ", ".join(f"{s} {r:.2f}x" for s, r in zip(args.sites, ratios))]
    (args.out / "site_round.md").write_text("\n".join(lines) + "\n")
    if args.out == OUT:
        write_block("site-round", "\n".join(lines))
    print(f"site round: cache off / on = {min(ratios):.2f}x at the least ({', '.join(f'{r:.2f}x' for r in ratios)}) "
          "(target >= 2.5x)")


if __name__ == "__main__":
    main()

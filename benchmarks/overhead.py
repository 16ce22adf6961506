"""Coordinator + transport overhead per round: fedtl against Flower's own floor, in one run.

fedtl: ``fedtl demo`` (a real SuperLink, one SuperNode and warm worker per bundled site,
gRPC on loopback); its overhead per round is the round's seconds minus the slowest site's
own seconds (what the site reports for its work), where a round lasts from its start to the
next round's start (checkpoint, resume point and MLflow logging included; so the last round
is not counted). Flower's floor: a trivial Flower app
(``benchmarks/floor_app``) with the same number of SuperNodes moving the same bytes each way
(``Grid.send_and_receive``, ClientApps that answer at once): its whole round is overhead.

    python benchmarks/overhead.py [--encoder minilm] [--update last:2] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from flower_floor import floor_rounds
from readme_block import write_block
from rich.console import Console
from rich.table import Table
from round_timing import timed_rounds

from fedtl.server.history import read_rounds
from fedtl.shared.processes import child_env, tool

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "overhead"


def fedtl_rounds(encoder: str, update: str, rounds: int, workdir: Path) -> list[dict]:
    cmd = [tool("fedtl"), "demo", "--encoder", encoder, "--update", update, "--rounds", str(rounds),
           "--workdir", str(workdir)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    out = []
    for record, wall, sites in timed_rounds(read_rounds(workdir / "coordinator")):
        out.append({"round": record.round, "seconds": wall, "sites": sites,
                    "bytes_down": record.bytes_down, "bytes_up": record.bytes_up,
                    "overhead": wall - max(sites.values())})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--update", default="last:2")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        fed = fedtl_rounds(args.encoder, args.update, args.rounds, Path(tmp) / "fedtl")
        sites = len(fed[0]["sites"])
        per_site = fed[0]["bytes_down"] // sites
        floor = floor_rounds(sites, per_site, len(fed), Path(tmp) / "floor")

    fedtl_overhead = statistics.fmean(r["overhead"] for r in fed)
    floor_mean = statistics.fmean(floor)
    table = Table(title=f"{sites} sites, {per_site / 1e6:.1f} MB each way per site, {args.encoder} {args.update}")
    for col in ("round", "fedtl round s", "slowest site s", "fedtl overhead s", "Flower floor s"):
        table.add_column(col, justify="right")
    lines = [f"{sites} bundled sites, encoder `{args.encoder}`, update mode `{args.update}` "
             f"({per_site / 1e6:.1f} MB each way per site), {args.rounds} rounds, {platform.machine()} CPU.", "",
             "| round | fedtl round s | slowest site s | fedtl overhead s | Flower floor s |", "|---|---|---|---|---|"]
    for r, f in zip(fed, floor):
        cells = [str(r["round"]), f"{r['seconds']:.1f}", f"{max(r['sites'].values()):.1f}", f"{r['overhead']:.2f}",
                 f"{f:.2f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Mean overhead per round: fedtl {fedtl_overhead:.2f} s, Flower's floor {floor_mean:.2f} s."]
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps({"fedtl": fed, "floor": floor, "sites": sites,
                                                        "bytes_per_site": per_site}, indent=1))
    (args.out / "overhead.md").write_text("\n".join(lines) + "\n")
    if args.out == OUT:
        write_block("overhead", "\n".join(lines))
    print(f"overhead: fedtl {fedtl_overhead:.2f} s per round beyond its slowest site, Flower's floor "
          f"{floor_mean:.2f} s: fedtl - floor = {fedtl_overhead - floor_mean:+.2f} s (target <= +1 s)")


if __name__ == "__main__":
    sys.exit(main())

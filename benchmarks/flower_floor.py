"""Flower's own floor: seconds per round of a trivial Flower app (``benchmarks/floor_app``: ClientApps
that answer at once) with a given number of real SuperNodes moving given bytes each way, so a
benchmark can set fedtl's rounds beside what Flower alone costs for the same sites and bytes.

Run on its own, it asks what the number of arrays costs: the same bytes in one array and in as
many arrays as an encoder has tensors (why fedtl packs its tensors into one, shared/records.py).

    python benchmarks/flower_floor.py [--sites 12] [--bytes 4045952] [--arrays 1 37] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from readme_block import write_block

from fedtl.server.control import FlowerControl
from fedtl.shared.processes import child_env, free_port, start, stop_many, tool, wait_for_port

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "flower-floor"


def floor_rounds(sites: int, nbytes: int, rounds: int, workdir: Path, arrays: int = 1) -> list[float]:
    """Seconds per round of the trivial app with ``sites`` SuperNodes and ``nbytes`` each way per site,
    split into ``arrays`` arrays."""
    fleet, control = free_port(), free_port()
    env = child_env({"FLWR_HOME": str(workdir / "flwr")})
    procs = [start([tool("flower-superlink"), "--fleet-api-address", f"127.0.0.1:{fleet}", "--host", "127.0.0.1",
                    "--port", str(control), "--insecure", "--disable-runtime-dependency-installation"],
                   workdir / "superlink.log", env=env, die_with_parent=True)]
    try:
        wait_for_port("127.0.0.1", control, 60, procs[0], "flower-superlink", workdir / "superlink.log")
        wait_for_port("127.0.0.1", fleet, 60, procs[0], "flower-superlink", workdir / "superlink.log")
        for i in range(sites):
            node_env = child_env({"FLWR_HOME": str(workdir / f"node{i}")})
            procs.append(start([tool("flower-supernode"), "--superlink", f"127.0.0.1:{fleet}", "--insecure",
                                "--port", str(free_port())], workdir / f"node{i}.log", env=node_env,
                               die_with_parent=True))
        app = workdir / "app"
        shutil.copytree(HERE / "floor_app", app, ignore=shutil.ignore_patterns("__pycache__"))
        result = workdir / "floor.json"
        client = FlowerControl(f"127.0.0.1:{control}", timeout=10)
        client.start_run(app, {"sites": sites, "bytes": nbytes, "rounds": rounds, "arrays": arrays,
                                "out": str(result)})
        deadline = time.monotonic() + 600
        while not result.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the floor app did not finish; see the logs in {workdir}")
            time.sleep(0.5)
        client.close()
        return json.loads(result.read_text())["seconds"]
    finally:
        stop_many(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=12)
    parser.add_argument("--bytes", type=int, default=4045952, help="each way per site (default: the tiny encoder)")
    parser.add_argument("--arrays", type=int, nargs="+", default=[1, 37],
                        help="the payload split into this many arrays (37: the tiny encoder's tensors)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    rows = []
    for arrays in args.arrays:
        with tempfile.TemporaryDirectory() as tmp:
            seconds = floor_rounds(args.sites, args.bytes, args.rounds, Path(tmp), arrays)
        rows.append({"arrays": arrays, "seconds": seconds, "mean": statistics.fmean(seconds[1:] or seconds)})
        print(f"{arrays} arrays: {rows[-1]['mean']:.1f} s per round (rounds 2-{args.rounds})", flush=True)
    lines = [f"Flower's trivial app, {args.sites} real SuperNodes on loopback, {args.bytes / 1e6:.1f} MB each way "
             f"per site, {args.rounds} rounds (mean of rounds 2-{args.rounds}), {platform.machine()} CPU.", "",
             "| arrays per message | s per round | rounds |", "|---|---|---|"]
    lines += [f"| {r['arrays']} | {r['mean']:.1f} | {', '.join(f'{x:.1f}' for x in r['seconds'])} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flower_floor.json").write_text(json.dumps(rows, indent=1))
    (args.out / "flower_floor.md").write_text("\n".join(lines) + "\n")
    if args.out == OUT:
        write_block("flower-floor", "\n".join(lines))
    one, many = rows[0], rows[-1]
    print(f"flower floor: the same bytes in {many['arrays']} arrays take {many['mean'] / one['mean']:.2f}x "
          f"the round of {one['arrays']}")


if __name__ == "__main__":
    main()

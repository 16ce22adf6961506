"""Flower's own floor: seconds per round of a trivial Flower app (``benchmarks/floor_app``: ClientApps
that answer at once) with a given number of real SuperNodes moving given bytes each way, so a
benchmark can set fedtl's rounds beside what Flower alone costs for the same sites and bytes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fedtl.server.control import FlowerControl
from fedtl.shared.processes import child_env, free_port, start, stop_many, tool, wait_for_port

HERE = Path(__file__).resolve().parent


def floor_rounds(sites: int, nbytes: int, rounds: int, workdir: Path) -> list[float]:
    """Seconds per round of the trivial app with ``sites`` SuperNodes and ``nbytes`` each way per site."""
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
        client.start_run(app, {"sites": sites, "bytes": nbytes, "rounds": rounds, "out": str(result)})
        deadline = time.monotonic() + 600
        while not result.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the floor app did not finish; see the logs in {workdir}")
            time.sleep(0.5)
        client.close()
        return json.loads(result.read_text())["seconds"]
    finally:
        stop_many(procs)

"""Many real sites on one machine: seconds per round, overhead and memory per site, coordinator memory.

``N`` sites (the bundled lexicon site's rows dealt across them, the tiny encoder) each with
a real Flower SuperNode, served by ``fedtl site`` processes holding ``--per-process`` sites
each, against a real ``fedtl coordinator`` (SuperLink, ServerApp, MLflow on SQLite) on
loopback, for ``--rounds`` rounds. Memory is proportional set size (PSS: shared library pages
split among the processes that map them), sampled every 2 s, the peak kept; per site it counts
the whole tree of the site processes (workers, SuperNodes, SuperExecs, ClientApps) over N.

With ``--floor``, each size is also run as Flower's floor (``benchmarks/flower_floor.py``: a
trivial app with as many real SuperNodes moving the same bytes each way), and the table sets
fedtl's round against the floor's round plus the sites' own compute spread over the cores.

    python benchmarks/scale.py [--sites 50] [--rounds 10] [--per-process 10] [--floor]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from flower_floor import floor_rounds
from readme_block import write_block
from rich.console import Console
from rich.table import Table
from round_timing import timed_rounds
from split_sites import split_site

from fedtl.client.fork_server import ENABLE_ENV as FORK_SERVER_ENV
from fedtl.server.history import read_rounds
from fedtl.shared.examples import copy_examples
from fedtl.shared.processes import child_env, free_port, start, stop_many, tool, tree

OUT = Path(__file__).resolve().parent / "results" / "scale"
MiB = 2**20


def pss(pid: int) -> int:
    """Proportional set size of one process in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# What each process of a site's tree is, by its command line: the first name found wins.
# fedtl's launchers (tiny scripts of Flower's names in the fork server's folder) come first.
KINDS = (("/flower-bin/", "launcher"), ("flwr-clientapp", "ClientApp"),
         ("flower-superexec", "SuperExec"), ("fork_server", "fork server"),
         ("flower-supernode", "SuperNode"), ("fedtl", "site worker"))
# A fork server's children carry its command line; their name (comm) says what they run.
FORKED = {"flwr-clientapp": "ClientApp", "flower-superexe": "SuperExec", "flower-supernod": "SuperNode"}
# Whom a process's reaped children were, by its kind (any other's count as the parent's own kind).
REAPED_AS = {"SuperExec": "ClientApp", "fork server": "ClientApp"}


def command(pid: int) -> str:
    """The process's command line, or its name once it has exited (a zombie's command line is
    empty, its name is the script's: ``flwr-clientapp``); empty when it is gone."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if not cmdline:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = stat[stat.index("(") + 1:stat.rindex(")")]
    except (OSError, ValueError):
        return ""
    return cmdline


def kind(pid: int) -> str:
    """The process's kind (KINDS), a forked one's by its name (FORKED); "other" when unknown."""
    label = next((label for needle, label in KINDS if needle in command(pid)), "other")
    if label == "fork server":
        try:
            label = FORKED.get(Path(f"/proc/{pid}/comm").read_text().strip(), label)
        except OSError:
            pass
    return label


def kinds_of(roots: list[int]) -> dict[int, str]:
    """Each process of the trees under ``roots`` and its kind."""
    return {pid: kind(pid) for root in roots for pid in tree(root)}


def cpu_times(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of one process, user + system; zeros when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks


def sample(roots: list[int]) -> tuple[dict[str, int], dict[str, float]]:
    """One pass over the trees under ``roots``: (PSS, CPU seconds so far) summed per kind of
    process. A process that has exited counts through its parent's reaped children's time once
    reaped (see REAPED_AS)."""
    memory: dict[str, int] = {}
    cpu: dict[str, float] = {}
    for pid, label in kinds_of(roots).items():
        memory[label] = memory.get(label, 0) + pss(pid)
        own, reaped = cpu_times(pid)
        cpu[label] = cpu.get(label, 0.0) + own
        children = REAPED_AS.get(label, label)
        cpu[children] = cpu.get(children, 0.0) + reaped
    return memory, cpu


def tree_pss(root: int) -> int:
    return sum(pss(pid) for pid in tree(root))


def rounds_done(path: Path) -> int:
    """Rounds the coordinator has recorded so far (lines of rounds.jsonl), without parsing them."""
    try:
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except FileNotFoundError:
        return 0


def federation_yaml(root: Path, sites: int, rounds: int, steps: int,
                    in_flight: int | None = None) -> tuple[Path, str]:
    config = {
        "name": "scale", "encoder": "tiny", "update_mode": "full", "rounds": rounds, "min_sites": sites,
        "min_available_sites": sites, "max_steps": steps, "round_timeout": 600, "wait_for_sites": 900,
        "sites_in_flight": in_flight,
        "final_evaluate": False, "state_dir": str(root / "coordinator"),
        "superlink": {"fleet_address": f"127.0.0.1:{free_port()}", "control_port": free_port()},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "scale"},
    }
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config["superlink"]["fleet_address"]


def run(sites: int, rounds: int, per_process: int, steps: int, root: Path, in_flight: int | None = None,
        fork_server: bool = True) -> dict:
    bundled = copy_examples(root / "bundled")
    configs = split_site(bundled["lexicon"], sites, root / "split")
    fed_path, fleet = federation_yaml(root, sites, rounds, steps, in_flight)
    coordinator = start([tool("fedtl"), "coordinator", "--config", str(fed_path), "--insecure"],
                        root / "coordinator.log", die_with_parent=True)
    hosts = []
    for k in range(0, sites, per_process):
        args = [a for c in configs[k:k + per_process] for a in ("--config", str(c))]
        hosts.append(start([tool("fedtl"), "site", *args, "--coordinator", fleet, "--insecure", "--encoder", "tiny"],
                           root / f"sites-{k // per_process}.log", die_with_parent=True,
                           env=child_env({FORK_SERVER_ENV: "1" if fork_server else "0"})))
    peak_sites = peak_coord = 0
    peak_kinds: dict[str, int] = {}
    cpu_from: tuple[int, dict[str, float]] | None = None  # (rounds done, CPU by kind) once round 1 is done
    cpu_last: tuple[int, dict[str, float]] | None = None
    started = time.monotonic()
    try:
        while coordinator.poll() is None:
            done = rounds_done(root / "coordinator" / "rounds.jsonl")
            memory, cpu = sample([h.pid for h in hosts])
            coordinator_memory, coordinator_cpu = sample([coordinator.pid])
            if done:
                cpu_last = (done, {**cpu, "coordinator": sum(coordinator_cpu.values())})
                cpu_from = cpu_from or cpu_last
            if sum(memory.values()) > peak_sites:  # the breakdown at the peak, so its parts add up to it
                peak_sites, peak_kinds = sum(memory.values()), memory
            peak_coord = max(peak_coord, sum(coordinator_memory.values()))
            if time.monotonic() - started > 3600:
                raise RuntimeError(f"no end after an hour; see {root}")
            time.sleep(2.0)
    finally:
        stop_many([*hosts, coordinator])
    records = read_rounds(root / "coordinator")
    timed = list(timed_rounds(records))
    walls = [wall for _, wall, _ in timed]
    overheads = [wall - max(sites.values()) for _, wall, sites in timed]
    computes = [sum(sites.values()) for _, _, sites in timed]
    cpu = {}
    if cpu_from and cpu_last and cpu_last[0] > cpu_from[0]:  # rounds after the first, per site and round
        n = (cpu_last[0] - cpu_from[0]) * sites
        cpu = {k: (v - cpu_from[1].get(k, 0.0)) / n for k, v in sorted(cpu_last[1].items())}
    return {
        "sites": sites, "per_process": per_process, "in_flight": in_flight, "fork_server": fork_server,
        "rounds": len(records), "exit_code": coordinator.returncode,
        "failed_rounds": sum(1 for r in records if r.accepted < sites or not r.aggregated),
        # what each such round lacked: sites that failed or were rejected (with Flower's or fedtl's
        # reason), and how many never answered before the round ended
        "incomplete_rounds": [{"round": r.round, "accepted": r.accepted, "aggregated": r.aggregated,
                               "failed": [p.model_dump() for p in r.failed],
                               "rejected": [p.model_dump() for p in r.rejected],
                               "unanswered": sites - r.accepted - len(r.failed) - len(r.rejected)}
                              for r in records if r.accepted < sites or not r.aggregated],
        "round_seconds": statistics.fmean(walls[1:] or walls) if walls else None,
        "overhead_per_site": statistics.fmean(o / sites for o in (overheads[1:] or overheads)) if overheads else None,
        "compute_seconds": statistics.fmean(computes[1:] or computes) if computes else None,
        "bytes_per_site": records[0]["bytes_down"] // sites if records else None,
        "site_pss": peak_sites / sites, "coordinator_pss": peak_coord,
        "site_pss_by_kind": {k: v / sites for k, v in sorted(peak_kinds.items())},
        "cpu_per_site_round": cpu,
        "seconds": time.monotonic() - started,
    }


def with_floor(row: dict, rounds: int, root: Path) -> dict:
    """The row plus Flower's floor for the same sites and bytes, and the round fedtl is held to:
    the floor's round + the sites' summed compute over the cores + 1 s."""
    floor = floor_rounds(row["sites"], row["bytes_per_site"], rounds, root / "floor")
    row["floor_seconds"] = statistics.fmean(floor[1:] or floor)
    row["cores"] = os.cpu_count() or 1
    row["round_bound"] = row["floor_seconds"] + row["compute_seconds"] / row["cores"] + 1.0
    return row


def row_key(r: dict) -> list[str]:
    """The settings that tell a row apart, as table cells."""
    return [str(r["sites"]), str(r["per_process"]), str(r.get("in_flight") or "all"),
            "on" if r.get("fork_server", True) else "off"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[50])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-process", type=int, nargs="+", default=[10])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[0],
                        help="federation.yaml's sites_in_flight (0: every site at once)")
    parser.add_argument("--fork-server", choices=("on", "off"), nargs="+", default=["on"],
                        help="start Flower's site processes from fedtl's fork server (on) or cold, as Flower does (off)")
    parser.add_argument("--floor", action="store_true",
                        help="also time Flower's floor (a trivial app, same SuperNodes and bytes) at each size")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep", type=Path, default=None,
                        help="run in folders under this one and keep them (logs, rounds.jsonl) instead of temporary ones")
    args = parser.parse_args()

    rows = []
    for sites in args.sites:
        for per_process in args.per_process:
            for in_flight in args.in_flight:
                for fork_server in args.fork_server:
                    keep = args.keep / f"{sites}-{per_process}-{in_flight}-{fork_server}" if args.keep else None
                    if keep:
                        keep.mkdir(parents=True, exist_ok=True)
                    with contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory() as tmp:
                        row = run(sites, args.rounds, per_process, args.steps, Path(tmp), in_flight or None,
                                  fork_server == "on")
                        rows.append(with_floor(row, args.rounds, Path(tmp)) if args.floor else row)
    table = Table(title=f"real SuperNodes on loopback, tiny encoder, {args.rounds} rounds x {args.steps} steps")
    header = ["sites", "sites per process", "sites in flight", "fork server", "rounds done", "failed rounds", "s per round",
              "overhead s per site", "MiB per site (PSS)", "coordinator MiB (PSS)"]
    if args.floor:
        header += ["sites' compute s", "Flower floor s", "floor + compute / cores + 1 s"]
    for col in header:
        table.add_column(col, justify="right")
    lines = [f"Real SuperNodes on loopback, tiny encoder, bundled lexicon rows dealt across the sites, "
             f"{args.rounds} rounds x {args.steps} encoder steps, {platform.machine()} CPU, 2 cores.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [*row_key(r), str(r["rounds"]),
                 str(r["failed_rounds"]),
                 f"{r['round_seconds']:.1f}", f"{r['overhead_per_site']:.2f}", f"{r['site_pss'] / MiB:.0f}",
                 f"{r['coordinator_pss'] / MiB:.0f}"]
        if args.floor:
            cells += [f"{r['compute_seconds']:.1f}", f"{r['floor_seconds']:.1f}", f"{r['round_bound']:.1f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    lacking = []
    for r in rows:
        for bad in r["incomplete_rounds"]:
            reasons = sorted({p["reason"][:120] for p in bad["failed"] + bad["rejected"]})
            lacking.append(f"- {' / '.join(row_key(r))}: round {bad['round']}: {bad['accepted']} accepted, "
                           f"{len(bad['failed'])} failed, {len(bad['rejected'])} rejected, {bad['unanswered']} "
                           f"unanswered{'; ' + '; '.join(reasons) if reasons else ''}")
    if lacking:
        lines += ["", "Rounds that lacked a site (sites / per process / in flight / fork server):", "", *lacking]
    kinds = sorted({k for r in rows for k in r["site_pss_by_kind"]})
    lines += ["", "MiB per site (PSS) at the peak, by process:", "",
              "| sites | sites per process | sites in flight | fork server | " + " | ".join(kinds) + " |",
              "|" + "---|" * (4 + len(kinds))]
    for r in rows:
        lines.append("| " + " | ".join(row_key(r)) + " | "
                     + " | ".join(f"{r['site_pss_by_kind'].get(k, 0) / MiB:.0f}" for k in kinds) + " |")
    kinds = sorted({k for r in rows for k in r["cpu_per_site_round"]})
    if kinds:
        lines += ["", "CPU seconds per site and round (rounds after the first), by process:", "",
                  "| sites | sites per process | sites in flight | fork server | " + " | ".join(kinds) + " | all |",
                  "|" + "---|" * (5 + len(kinds))]
        for r in rows:
            cpu = r["cpu_per_site_round"]
            lines.append("| " + " | ".join(row_key(r)) + " | "
                         + " | ".join(f"{cpu.get(k, 0):.2f}" for k in kinds) + f" | {sum(cpu.values()):.2f} |")
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
    (args.out / "scale.md").write_text("\n".join(lines) + "\n")
    if args.out == OUT:
        write_block("scale", "\n".join(lines))
    parts = []
    for setting in dict.fromkeys(row_key(r)[3] for r in rows):  # fork server on / off, in run order
        mine = [r for r in rows if row_key(r)[3] == setting]
        worst = max(mine, key=lambda r: r["site_pss"])
        part = (f"fork server {setting}: {sum(r['failed_rounds'] for r in mine)} failed rounds, at most "
                f"{worst['site_pss'] / MiB:.0f} MiB per site (PSS; target <= 400 MB)")
        if args.floor:
            slowest = max(mine, key=lambda r: r["round_seconds"] / r["round_bound"])
            part += (f", round / (floor + compute / cores + 1 s) at most "
                     f"{slowest['round_seconds'] / slowest['round_bound']:.2f} (target <= 1)")
        parts.append(part)
    summary = "scale: " + "; ".join(parts)
    print(summary)


if __name__ == "__main__":
    main()

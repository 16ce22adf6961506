"""Bytes against accuracy: update modes and codecs side by side, same sites, rounds and seeds.

On the bundled sites, with one encoder, it runs the same federation (FedAvg, ``rounds`` rounds
of ``steps`` steps, fedtl's own round loop and site workers on an in-process Grid) for
``full``, ``last:2``, ``bias`` and ``lora`` in fp32 and for ``last:2`` with each codec (the same
codec both ways). Bytes are what the coordinator counted: the encoded tensors as serialised
for the wire. It prints and writes (``--out``: ``communication.json``, ``.md``, ``.png``; the table
into ``benchmarks/README.md``): bytes per round per site each way, their ratio to ``full`` in
fp32, the final mean validation primary metric over the sites' tasks (mean over seeds) and its
difference to ``full`` fp32 and to the same mode in fp32, seconds per round; the targets last.

    python benchmarks/communication.py --seeds 0 1 2 --rounds 3 --steps 12
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
from learning import federated, site_configs
from readme_block import write_block

from fedtl.server.history import RoundRecord
from fedtl.shared.examples import copy_examples
from fedtl.shared.protocol import Section

OUT = Path(__file__).resolve().parent / "results" / "communication"
# name -> (update mode, codec both ways, lora settings)
ARMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "full": ("full", "none", {}),
    "last:2": ("last:2", "none", {}),
    "bias": ("bias", "none", {}),
    "lora r=8 lr x1": ("lora", "none", {"rank": 8, "alpha": 16, "lr_scale": 1}),
    "lora r=8 lr x3": ("lora", "none", {"rank": 8, "alpha": 16, "lr_scale": 3}),
    "lora r=8 lr x10": ("lora", "none", {"rank": 8, "alpha": 16, "lr_scale": 10}),
    "lora r=8 lr x30": ("lora", "none", {"rank": 8, "alpha": 16, "lr_scale": 30}),
    "lora r=8 lr x100": ("lora", "none", {"rank": 8, "alpha": 16, "lr_scale": 100}),
    "lora r=8 lr x50": ("lora", "none", {"rank": 8, "alpha": 16, "lr_scale": 50}),
    "lora r=16 lr x30": ("lora", "none", {"rank": 16, "alpha": 32, "lr_scale": 30}),
    "lora r=4 attn+ffn lr x30": ("lora", "none", {"rank": 4, "alpha": 8, "lr_scale": 30, "targets": [
        "query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]}),
    "last:2 fp16": ("last:2", "fp16", {}),
    "last:2 bf16": ("last:2", "bf16", {}),
    "last:2 int8": ("last:2", "int8", {}),
    "last:2 topk:0.01": ("last:2", "topk:0.01", {}),
}


class BytesCollector:
    """Observer: per round, each site's bytes each way, its served primary metrics, the round's seconds."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, Any]] = []

    def start(self, info: dict[str, Any]) -> None:
        pass

    def round(self, record: RoundRecord) -> None:
        sites = {}
        for site, entry in record.sites.items():
            sites[site] = {"down": entry.bytes_down, "up": entry.bytes_up,
                           "metrics": {t: entry.value(Section.VAL, t, m) for t, m in entry.primary()}}
        self.rounds.append({"round": record.round, "seconds": record.seconds, "sites": sites})

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        pass


def run_arm(paths: list[Path], seed: int, encoder: str, update: str, codec: str, lora: dict[str, Any],
            rounds: int, steps: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = site_configs(paths, seed, Path(tmp) / "sites")
        settings = {"seed": seed, "codec": {"up": codec, "down": codec}, **({"lora": lora} if lora else {})}
        return federated(cfgs, encoder, update, rounds, steps, settings, Path(tmp), BytesCollector()).rounds


# ---------------------------------------------------------------- the report
def per_site_round(rounds: list[dict[str, Any]], direction: str) -> float:
    return statistics.fmean(s[direction] for r in rounds for s in r["sites"].values())


def final_metric(rounds: list[dict[str, Any]]) -> float:
    return statistics.fmean(v for s in rounds[-1]["sites"].values() for v in s["metrics"].values())


def summarize(runs: dict[str, list[list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per arm: bytes and seconds (mean over seeds), metric mean and sd, paired differences."""
    out = {}
    for arm in [a for a in ARMS if a in runs]:
        seeds = runs[arm]
        metrics = [final_metric(r) for r in seeds]
        out[arm] = {"down": statistics.fmean(per_site_round(r, "down") for r in seeds),
                    "up": statistics.fmean(per_site_round(r, "up") for r in seeds),
                    "seconds": statistics.fmean(statistics.fmean(x["seconds"] for x in r) for r in seeds),
                    "metric": statistics.fmean(metrics),
                    "sd": statistics.stdev(metrics) if len(metrics) > 1 else 0.0, "per_seed": metrics}
    for arm, row in out.items():
        same_mode = ARMS[arm][0] if ARMS[arm][0] in out else None
        for ref, key in (("full", "vs_full"), (same_mode, "vs_mode")):
            if ref in out:
                row[key] = statistics.fmean(a - b for a, b in zip(row["per_seed"], out[ref]["per_seed"]))
        if "full" in out:
            row["ratio_down"] = out["full"]["down"] / row["down"]
            row["ratio_up"] = out["full"]["up"] / row["up"]
        if same_mode in out:
            row["ratio_mode"] = out[same_mode]["up"] / row["up"]
    return out


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}" if n < 1e7 else f"{n / 1e6:.1f}"


def markdown(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"Sites {', '.join(meta['sites'])}, encoder `{meta['encoder']}`, FedAvg, {meta['rounds']} rounds x "
             f"{meta['steps']} steps, seeds {meta['seeds']}, the same codec both ways, {meta['machine']}, "
             f"torch {meta['torch']}.", "",
             "| arm | MB down / site / round | MB up / site / round | full fp32 / this (down, up) | "
             "mean val primary metric | vs full fp32 | vs same mode fp32 | s / round |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in summary.items():
        ratio = f"{r.get('ratio_down', float('nan')):.1f}x, {r.get('ratio_up', float('nan')):.1f}x"
        vs_mode = f"{r['vs_mode']:+.3f}" if "vs_mode" in r and ARMS[arm][1] != "none" else "-"
        lines.append(f"| {arm} | {_mb(r['down'])} | {_mb(r['up'])} | {ratio} | {r['metric']:.3f} ± {r['sd']:.3f} | "
                     f"{r.get('vs_full', float('nan')):+.3f} | {vs_mode} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def targets(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = []

    def check(label: str, ok: bool, detail: str) -> None:
        lines.append(f"{label}: {'met' if ok else 'NOT met'} ({detail})")

    for arm in [a for a in summary if ARMS[a][0] == "lora" and "full" in summary]:
        r = summary[arm]
        check(f"{arm}: <= 1/100 of full fp32 bytes", min(r["ratio_down"], r["ratio_up"]) >= 100,
              f"1/{min(r['ratio_down'], r['ratio_up']):.0f}")
        check(f"{arm}: within 1 point of full fp32", abs(r["vs_full"]) <= 0.01, f"{r['vs_full']:+.3f}")
    if "last:2 int8" in summary:
        r = summary["last:2 int8"]
        check("int8 <= 1/3.9 of last:2 fp32 bytes", r["ratio_mode"] >= 3.9, f"1/{r['ratio_mode']:.2f}")
        check("int8 within 1 point of last:2 fp32", abs(r["vs_mode"]) <= 0.01, f"{r['vs_mode']:+.3f}")
    if "last:2 topk:0.01" in summary:
        r = summary["last:2 topk:0.01"]
        check("topk:0.01 <= 1/50 of last:2 fp32 bytes, indices counted", r["ratio_mode"] >= 50,
              f"1/{r['ratio_mode']:.1f}")
    return lines


def plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (arm, r) in enumerate(summary.items()):
        total = r["down"] + r["up"]
        ax.errorbar(total / 1e6, r["metric"], yerr=r["sd"], fmt="o", color=f"C{i}", label=arm, capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("MB per site per round, both ways (log)")
    ax.set_ylabel("mean validation primary metric")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--sites", nargs="+", default=None, help="bundled site names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report-only", action="store_true", help="rebuild table and plot from communication.json")
    parser.add_argument("--add", action="store_true", help="run only --arms and add them to the saved results "
                        "(same seeds, rounds and steps)")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((args.out / "communication.json").read_text())
        return report(saved["runs"], saved["meta"], args.out)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="fedtl-communication-"))
    bundled = copy_examples(work / "bundled")
    sites = args.sites or list(bundled)
    paths = [bundled[s] for s in sites]
    started = time.perf_counter()
    saved = json.loads((args.out / "communication.json").read_text()) if args.add else {"runs": {}, "meta": {}}
    if args.add and any(saved["meta"][k] != v for k, v in (("seeds", args.seeds), ("rounds", args.rounds),
                                                           ("steps", args.steps), ("encoder", args.encoder))):
        raise SystemExit("--add: the saved results were measured with other seeds, rounds, steps or encoder")
    runs: dict[str, list[list[dict[str, Any]]]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            t0 = time.perf_counter()
            update, codec, lora = ARMS[arm]
            runs[arm].append(run_arm(paths, seed, args.encoder, update, codec, lora, args.rounds, args.steps))
            print(f"seed {seed}: {arm} in {time.perf_counter() - t0:.0f}s: metric {final_metric(runs[arm][-1]):.3f}, "
                  f"{per_site_round(runs[arm][-1], 'up') / 1e6:.3f} MB up / site / round", flush=True)
    meta = {"sites": sites, "encoder": args.encoder, "rounds": args.rounds, "steps": args.steps, "seeds": args.seeds,
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
            "seconds": time.perf_counter() - started + saved["meta"].get("seconds", 0.0)}
    report({**saved["runs"], **runs} if args.add else runs, meta, args.out)


def report(runs: dict[str, list[list[dict[str, Any]]]], meta: dict[str, Any], out: Path) -> None:
    summary = summarize(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "communication.json").write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary}, indent=1))
    table = markdown(summary, meta)
    verdicts = targets(summary)
    (out / "communication.md").write_text(table + "\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    plot(summary, out / "communication.png")
    if out == OUT:
        write_block("communication", table + "\n" + "\n".join(f"- {v}" for v in verdicts)
                    + "\n\n![bytes against accuracy](results/communication/communication.png)")
    print(table)
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()

"""A site's training in mixed precision on a GPU against a bare PyTorch AMP loop on the same steps.

fedtl: ``LocalTrainer.fit``, what a site worker runs each round, on the device with the site's
``precision`` (``auto``: bf16 where the GPU has it, else fp16 with a gradient scaler). Bare: the
same round written as a plain loop over ``transformers.AutoModel`` under ``torch.autocast``
(``site_vs_bare.bare_round``: the same texts, tokens, batches, passes, optimizer, schedule and
head solver). The whole encoder trains (``full``). One untimed pair first (CUDA start-up,
kernel selection), then pairs, every other pair with the bare loop first, so drift hits both
alike; the device's queue is drained before each clock read. Throughput is work per second and
both do the same work, so fedtl's throughput against the bare loop's is the bare loop's seconds
over fedtl's.

    python benchmarks/gpu.py                                   # on a CUDA machine
    python benchmarks/gpu.py --federation                      # also the site inside a real federation
    python benchmarks/gpu.py --device cpu --precision bf16 --steps 20 --repeats 1   # a dry run on CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from readme_block import write_block
from site_vs_bare import PHASES, bare_round, fedtl_rounds, site_config, trainer_round

from fedtl.client.trainer import resolve_device, resolve_precision

OUT = Path(__file__).resolve().parent / "results" / "gpu"
TARGET = 0.9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="clinic", help="a bundled site")
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--steps", type=int, default=300, help="encoder steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="timed pairs (fedtl, bare) after one untimed pair")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--federation", action="store_true",
                        help="also run 3 rounds of the site in a real federation (fedtl demo) on the device")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_precision(device, args.precision)
    precision = str(dtype).removeprefix("torch.") if dtype is not None else "fp32"

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        site_yaml = site_config(workdir, args.site, args.steps, args.device, args.precision)
        trainer_round(site_yaml, args.encoder, args.steps, seed=0)  # untimed: start-up, kernel choice
        bare_round(site_yaml, args.encoder, args.steps, seed=0)
        fedtl, bare = [], []
        for seed in range(1, args.repeats + 1):  # which goes first alternates: drift hits both alike
            arms = [(fedtl, trainer_round), (bare, bare_round)]
            for results, run in arms if seed % 2 else arms[::-1]:
                results.append(run(site_yaml, args.encoder, args.steps, seed=seed))
        federation = fedtl_rounds(site_yaml, args.encoder, args.steps, 3, workdir)[0][1:] if args.federation else []

    fedtl_s = statistics.fmean(r["seconds"] for r in fedtl)
    bare_s = statistics.fmean(r["seconds"] for r in bare)
    ratio = bare_s / fedtl_s
    lines = [f"Site `{args.site}`, encoder `{args.encoder}`, update mode `full`, {args.steps} encoder steps a round, "
             f"{precision} autocast, {device_name(device)}, torch {torch.__version__}.", "",
             "| pair | fedtl trainer s | bare AMP loop s | fedtl throughput / bare |", "|---|---|---|---|"]
    for i, (f, b) in enumerate(zip(fedtl, bare), start=1):
        lines.append(f"| {i} | {f['seconds']:.2f} | {b['seconds']:.2f} | {b['seconds'] / f['seconds']:.3f} |")
    lines += ["", "Seconds per phase, mean over the pairs (fedtl's phase clocks; the bare loop's laps at the "
              "same points):", "", "| phase | fedtl trainer | bare AMP loop |", "|---|---|---|"]
    for phase in PHASES:
        cells = [statistics.fmean(x["phases"].get(phase, 0.0) for x in xs) for xs in (fedtl, bare)]
        if any(cells):
            lines.append(f"| {phase} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    if federation:
        handled = statistics.fmean(r["handled"] for r in federation)
        lines += ["", f"Inside a real federation (`fedtl demo`, rounds 2-3, message in to reply out): "
                  f"{handled:.2f} s a round, {bare_s / handled:.3f} of the bare loop's throughput."]
    lines += ["", f"fedtl site training / bare AMP loop throughput: {ratio:.3f} (target >= {TARGET})"]

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps({"fedtl": fedtl, "bare": bare, "federation": federation,
                                                   "device": device_name(device), "precision": precision}, indent=1))
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    if args.out == OUT and device.type == "cuda":
        write_block("gpu", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

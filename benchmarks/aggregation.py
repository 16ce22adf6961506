"""Coordinator aggregation: throughput and peak memory against the number of sites.

For 2 to 64 sites, each sending an update with the tensors of the chosen encoder and update
mode (MiniLM ``last:2``: 14.2 MB), side by side in one run:

- **fedtl** (``RoundAggregator``, streaming): each update arrives, is folded into running
  sums and dropped, as in the round loop; throughput counts the fold alone and the fold
  plus the interference sketch.
- **Flower** (``FedAvg.aggregate_train``): every reply held at once, as ``send_and_receive``
  returns them, then aggregated.

Throughput is update bytes aggregated per second, against this machine's memory-copy
bandwidth (``numpy.copyto`` of 256 MiB, bytes copied per second, best of 5). Peak memory is
what ``tracemalloc`` sees above the start of each configuration (updates included).

    python benchmarks/aggregation.py [--encoder minilm] [--update-mode last:2] [--sites 2 4 8 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np
from readme_block import write_block
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedtl.server.aggregation import CountSketch, RoundAggregator, RunningSum  # noqa: E402
from fedtl.server.validation import Verdict  # noqa: E402
from fedtl.shared.protocol import ARRAYS, METRICS, SiteMetric  # noqa: E402
from fedtl.shared.records import to_record  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "aggregation"
MiB = 2**20


def copy_bandwidth(nbytes: int = 256 * MiB, repeats: int = 5) -> float:
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def update_shapes(encoder: str, mode: str) -> dict[str, tuple[int, ...]]:
    from fedtl.shared.encoders import load_encoder
    from fedtl.shared.update_modes import UpdateMode, exchanged_names

    model = load_encoder(encoder)
    params = dict(model.named_parameters())
    return {n: tuple(params[n].shape) for n in exchanged_names(list(params), UpdateMode.parse(mode))}


class _Grid:
    def __init__(self, n: int):
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


def _site_update(shapes, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3) for n, s in shapes.items()}


def _reply(sent: Message, node: int, arrays) -> Message:
    content = RecordDict({ARRAYS: to_record(arrays),
                          METRICS: MetricRecord({SiteMetric.NUM_EXAMPLES: 100 + node, SiteMetric.TRAIN_LOSS: 1.0})})
    msg = Message(content, reply_to=sent)
    msg.metadata.__dict__["_src_node_id"] = node
    return msg


def _strategy(n: int, global_arrays) -> tuple[FedAvg, Message]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    strategy = FedAvg(min_available_nodes=1, min_train_nodes=1)
    sent = list(strategy.configure_train(1, to_record(global_arrays), ConfigRecord({}), _Grid(n)))[0]
    return strategy, sent


def run_fedtl(shapes, global_arrays, n: int, sketch, sums: RunningSum, pool=None) -> tuple[float, float]:
    """Seconds spent folding the updates in and seconds of the final aggregate.

    ``pool``: updates to take in turn (made beforehand, larger than the caches, so each fold
    reads its update from memory); else each site's update is made just before it arrives.
    """
    strategy, sent = _strategy(n, global_arrays)
    agg = RoundAggregator(strategy, global_arrays, keep_models=False, sketch=sketch, sums=sums)
    fold = 0.0
    for node in range(1, n + 1):
        arrays = pool[node % len(pool)] if pool else _site_update(shapes, node)
        msg = _reply(sent, node, arrays)
        start = time.perf_counter()
        agg.add(msg, Verdict(node, f"site{node}", "accepted", delta=arrays), global_arrays)
        fold += time.perf_counter() - start
        del arrays, msg
    start = time.perf_counter()
    agg.aggregate(1)
    return fold, time.perf_counter() - start


def best_of(repeats: int, fn) -> tuple[float, ...]:
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r[0])


class _NoSketch:
    def __call__(self, arrays):
        return np.zeros(1)


def run_flower(shapes, global_arrays, n: int) -> float:
    strategy, sent = _strategy(n, global_arrays)
    replies = [_reply(sent, node, {k: global_arrays[k] + d for k, d in _site_update(shapes, node).items()})
               for node in range(1, n + 1)]
    start = time.perf_counter()
    strategy.aggregate_train(1, replies)
    return time.perf_counter() - start


def measure_speed(shapes, global_arrays, n: int, sketch, no_sketch, sums, pool, update: int) -> dict:
    fold, final = best_of(3, partial(run_fedtl, shapes, global_arrays, n, no_sketch, sums, pool))
    fold_sketch, _ = best_of(3, partial(run_fedtl, shapes, global_arrays, n, sketch, sums, pool))
    flower = min(run_flower(shapes, global_arrays, n) for _ in range(3))
    return {"sites": n, "fold_bps": n * update / fold, "fold_sketch_bps": n * update / fold_sketch,
            "final_s": final, "flower_bps": n * update / flower}


def peak_bytes(fn) -> int:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--update-mode", default="last:2")
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    shapes = update_shapes(args.encoder, args.update_mode)
    update = sum(int(np.prod(s)) * 4 for s in shapes.values())
    global_arrays = {n: np.zeros(s, dtype=np.float32) for n, s in shapes.items()}
    bandwidth = copy_bandwidth()
    sketch, sums, no_sketch = CountSketch(), RunningSum(), _NoSketch()  # kept from round to round
    pool = [_site_update(shapes, 1000 + i) for i in range(max(2, (512 * MiB) // update))]
    run_fedtl(shapes, global_arrays, 1, sketch, sums, pool)  # an earlier round: buffers and signs exist
    rows = [measure_speed(shapes, global_arrays, n, sketch, no_sketch, sums, pool, update) for n in args.sites]
    pool.clear()
    for row in rows:  # updates made as they arrive: peak memory is what one round needs
        row["fedtl_peak"] = peak_bytes(partial(run_fedtl, shapes, global_arrays, row["sites"], sketch, sums))
        row["flower_peak"] = peak_bytes(partial(run_flower, shapes, global_arrays, row["sites"]))

    table = Table(title=f"aggregation: {args.encoder} {args.update_mode}, update {update / MiB:.1f} MiB per site, "
                        f"memory copy {bandwidth / 1e9:.1f} GB/s")
    for col in ("sites", "fold GB/s", "fold+sketch GB/s", "Flower FedAvg GB/s", "fedtl peak MiB",
                "Flower peak MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["sites"]), f"{r['fold_bps'] / 1e9:.2f}", f"{r['fold_sketch_bps'] / 1e9:.2f}",
                      f"{r['flower_bps'] / 1e9:.2f}", f"{r['fedtl_peak'] / MiB:.0f}", f"{r['flower_peak'] / MiB:.0f}")
    Console().print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"encoder": args.encoder, "update_mode": args.update_mode, "update_bytes": update,
            "copy_bandwidth": bandwidth, "machine": f"{platform.machine()} {platform.processor() or 'CPU'}",
            "numpy": np.__version__}
    (args.out / "aggregation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"{args.encoder} `{args.update_mode}` ({update / MiB:.1f} MiB per update), memory copy "
             f"{bandwidth / 1e9:.1f} GB/s (numpy copyto, one thread), {meta['machine']}.", "",
             "| sites | fold GB/s | fold + sketch GB/s | Flower FedAvg GB/s | fedtl peak MiB | Flower peak MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sites']} | {r['fold_bps'] / 1e9:.2f} | {r['fold_sketch_bps'] / 1e9:.2f} | "
                     f"{r['flower_bps'] / 1e9:.2f} | {r['fedtl_peak'] / MiB:.0f} | {r['flower_peak'] / MiB:.0f} |")
    (args.out / "aggregation.md").write_text("\n".join(lines) + "\n")
    if args.out == OUT:
        write_block("aggregation", "\n".join(lines))

    worst = min(r["fold_bps"] for r in rows) / bandwidth
    peaks = [r["fedtl_peak"] for r in rows]
    spread = max(peaks) / min(peaks) - 1
    print(f"aggregation: fold throughput >= {worst:.2f} x memory-copy bandwidth (target >= 0.50); "
          f"peak memory {min(peaks) / MiB:.0f}-{max(peaks) / MiB:.0f} MiB from {rows[0]['sites']} to "
          f"{rows[-1]['sites']} sites, spread {spread:.0%} (target <= 10%)")


if __name__ == "__main__":
    main()

"""Per-round start-up at a site: a cold ClientApp process vs fedtl's shim + warm worker.

Flower starts a fresh ClientApp process for every message. Without a site worker, each
round would pay for importing torch and transformers and loading the encoder. With it, the
fresh process only imports the shim and reaches the warm worker over its unix socket.
Both are measured here, side by side, as fresh processes; the ratio is what matters.

    python benchmarks/site_startup.py [--encoder minilm|tiny] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLD = """
import torch, transformers
from fedtl.shared.encoders import load_encoder
load_encoder({encoder!r})
"""

WARM = """
import grpc, fedtl.client.shim
from fedtl.v1 import site_pb2, site_pb2_grpc
with grpc.insecure_channel("unix://{socket}") as ch:
    assert site_pb2_grpc.SiteWorkerStub(ch).Status(site_pb2.StatusRequest(), timeout=30).ready
"""


def timed(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from fedtl.client.worker import SiteWorker
    from fedtl.client.worker_api import serve
    from fedtl.shared.config import load_site_config
    from fedtl.shared.examples import copy_examples

    with tempfile.TemporaryDirectory() as tmp:
        config = load_site_config(copy_examples(tmp)["clinic"])
        worker = SiteWorker(config, args.encoder)
        socket = Path(tmp) / "w.sock"
        server = serve(worker, socket)
        try:
            timed(WARM.format(socket=socket))  # warm the OS file cache for both sides alike
            timed(COLD.format(encoder=args.encoder))
            cold = [timed(COLD.format(encoder=args.encoder)) for _ in range(args.repeats)]
            warm = [timed(WARM.format(socket=socket)) for _ in range(args.repeats)]
        finally:
            server.stop(0)

    table = Table(title=f"per-message start-up at a site ({args.encoder}, median of {args.repeats})")
    table.add_column("fresh process does")
    table.add_column("seconds", justify="right")
    table.add_row("import torch + transformers, load encoder (no worker)", f"{statistics.median(cold):.2f}")
    table.add_row("import fedtl shim, reach the warm worker", f"{statistics.median(warm):.2f}")
    table.add_row("[bold]ratio cold / warm[/]", f"[bold]{statistics.median(cold) / statistics.median(warm):.1f}x[/]")
    Console().print(table)


if __name__ == "__main__":
    main()

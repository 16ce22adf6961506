"""The trivial Flower app that benchmarks/overhead.py measures fedtl's rounds against.

Each round the ServerApp sends every SuperNode ``bytes`` of float32 and each ClientApp
answers with as many fresh bytes (fresh, so that no content-addressed store can reuse what
it already holds). No training, no checks: what is left is Flower's own cost of a round.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server_app = ServerApp()
client_app = ClientApp()


def _payload(nbytes: int, seed: int, arrays: int = 1) -> ArrayRecord:
    values = np.random.default_rng(seed).standard_normal(nbytes // 4, dtype=np.float32)
    return ArrayRecord({f"payload{i}": Array(np.ascontiguousarray(part))
                        for i, part in enumerate(np.array_split(values, arrays))})


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    sites, nbytes, rounds, arrays = int(cfg["sites"]), int(cfg["bytes"]), int(cfg["rounds"]), int(cfg["arrays"])
    deadline = time.monotonic() + 120
    while len(nodes := sorted(grid.get_node_ids())) < sites and time.monotonic() < deadline:
        time.sleep(0.2)
    seconds = []
    for rnd in range(1, rounds + 1):
        content = RecordDict({"arrays": _payload(nbytes, rnd, arrays)})
        messages = [Message(content, dst_node_id=node, message_type="train") for node in nodes[:sites]]
        start = time.perf_counter()
        replies = list(grid.send_and_receive(messages))
        seconds.append(time.perf_counter() - start)
        assert len(replies) == sites and not any(r.has_error() for r in replies), "a SuperNode failed"
    Path(str(cfg["out"])).write_text(json.dumps({"seconds": seconds, "nodes": len(nodes)}))


@client_app.train()
def echo(msg: Message, context: Context) -> Message:
    record = msg.content["arrays"]
    nbytes = sum(len(a.data) for a in record.values())
    return Message(RecordDict({"arrays": _payload(nbytes, int(time.time_ns() % 2**31), len(record))}), reply_to=msg)

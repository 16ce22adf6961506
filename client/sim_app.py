"""The ClientApp of `fedtl simulate`: each virtual site's messages go to fedtl's own site worker.

In a real federation a thin ClientApp forwards each message to the site's warm worker over a
unix socket. On Flower's simulation engine the ClientApp runs in a Ray actor that stands in for
many sites in turn, so it holds the site workers itself: node ``partition-id`` is the virtual
site ``site-NNNN`` under the sites folder. The workers of the sites seen last stay in memory
(``cache`` of them, least recently used out); a site whose worker was let go gets a fresh one
that reads its heads and baseline from its state folder, as a restarted site daemon would. Only
the AdamW moments kept between rounds are lost then.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedtl.shared.protocol import NodeConfigKey


class WorkerCache:
    """At most ``size`` site workers of this process, the least recently used let go first."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.workers: OrderedDict[Path, object] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, site_yaml: Path):
        from fedtl.client.worker import SiteWorker
        from fedtl.shared.config import load_site_config

        with self.lock:
            worker = self.workers.pop(site_yaml, None)
            if worker is None:
                worker = SiteWorker(load_site_config(site_yaml))
            self.workers[site_yaml] = worker
            while len(self.workers) > self.size:
                self.workers.popitem(last=False)
            return worker


_caches: dict[int, WorkerCache] = {}  # one per process, created on first use


def worker_for(site_yaml: Path, cache: int):
    """This process's worker for the site (module state: the ClientApp itself is shipped by value)."""
    return _caches.setdefault(cache, WorkerCache(cache)).get(site_yaml)


def release_freed_memory() -> None:
    """Hand memory freed by a site's round back to the system (glibc keeps it otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def simulation_client_app(sites_dir: Path, cache: int = 16, threads: int = 1) -> ClientApp:
    """A ClientApp serving the virtual sites under ``sites_dir`` with fedtl's site worker."""
    sites_dir = Path(sites_dir).resolve()
    app = ClientApp()

    def handle(msg: Message, context: Context) -> Message:
        import torch

        from fedtl.client.sim_app import release_freed_memory, worker_for  # imported here: this process's module, not a copy
        from fedtl.client.worker_api import Timing

        received_at = time.time()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)  # an actor per core: no oversubscription
        site = int(context.node_config[NodeConfigKey.PARTITION_ID])
        worker = worker_for(sites_dir / f"site-{site:04d}" / "site.yaml", cache)
        content = worker.handle(msg.metadata.message_type, msg.content, Timing(received_at, received_at))
        release_freed_memory()
        return Message(content=content, reply_to=msg)

    app.train()(handle)
    app.evaluate()(handle)
    return app

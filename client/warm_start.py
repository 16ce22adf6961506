"""`fedtl site --warm-start`: begin from the federation's latest global encoder, pulled from the hub.

A site that joins a federation late, or that does not hold the coordinator's encoder at all
(a model folder only the coordinator has), pulls the newest checkpoint through the
coordinator's hub before its first round; round 0 is the encoder a fresh run starts from. The
site's worker then loads that folder instead of site.yaml's encoder, and treats it as the
coordinator's encoder (``WarmStart.stands_for``): it fits its local baseline on it, serves it
until its first round, and needs no copy of the coordinator's own.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedtl.shared.hub_client import HubClient, HubError

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0
WAIT_ON = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)  # while the coordinator is starting


@dataclass(frozen=True)
class HubAccess:
    """How to reach the coordinator's hub: address, TLS roots (None: plain gRPC), token."""

    address: str
    root_certificates: Path | None
    token: str | None


@dataclass(frozen=True)
class WarmStart:
    """A pulled global encoder and what it stands for."""

    folder: Path  # the Hugging Face folder in the site's state_dir
    round: int  # the checkpoint's round (0: the encoder the federation started from)
    stands_for: str  # the coordinator's encoder spec (federation.yaml `encoder`) it is a checkpoint of


@dataclass(frozen=True)
class WarmStartOptions:
    """`fedtl site --warm-start`: the hub to pull from, and how long to wait for it to answer."""

    hub: HubAccess
    wait: float  # seconds


def pull_warm_start(options: WarmStartOptions, state_dir: Path, stop: threading.Event) -> WarmStart | None:
    """Pull the latest checkpoint into ``state_dir/warm-start/round-NNNN``; None if stopped first.

    Waits up to ``options.wait`` seconds for the hub to answer with a checkpoint (the coordinator
    may start after the site); any other refusal (token, TLS) raises ``HubError`` at once.
    """
    hub = options.hub
    client = HubClient(hub.address, hub.root_certificates, hub.token, timeout=10)
    deadline = time.monotonic() + options.wait
    root = state_dir / "warm-start"
    incoming = root / "incoming"
    try:
        while True:
            try:
                round_ = client.pull(incoming)
                break
            except HubError as exc:  # not up yet, or up before its run has written round 0
                if exc.code not in WAIT_ON or time.monotonic() >= deadline:
                    raise
                log.info("warm start: waiting for the hub at %s (%s)", hub.address, exc)
                if stop.wait(POLL_SECONDS):
                    return None
    finally:
        client.close()
    meta = incoming / "fedtl.json"
    try:
        stands_for = json.loads(meta.read_text())["encoder"]
    except (OSError, ValueError, KeyError):
        shutil.rmtree(incoming, ignore_errors=True)
        raise HubError(f"the hub's checkpoint of round {round_} has no fedtl.json naming its encoder; "
                       "is the coordinator a fedtl coordinator of this version?") from None
    final = root / f"round-{round_:04d}"
    if final.exists():  # an earlier start pulled this round (maybe of another run): keep the newest bytes
        shutil.rmtree(final)
    incoming.rename(final)
    log.info("warm start: the global encoder of round %d, pulled from %s into %s", round_, hub.address, final)
    return WarmStart(final, round_, stands_for)

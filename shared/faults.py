"""Fault injection for tests and drills, off unless ``FEDTL_INJECT_FAULT`` is set.

Comma-separated faults:
- ``nan_update``: the site sends an update full of NaN (the coordinator must reject it);
- ``hold:ROUND:PATH``: before training round ROUND (or later), wait until PATH exists, so a
  test can act while a site is known to be mid-round, with no sleeps and no races;
- ``hold_stop:PATH`` (coordinator): a clean stop waits until PATH exists before stopping the
  SuperLink, i.e. a shutdown that hangs, so a test can check that a second Ctrl-C still kills
  everything at once.

Used by the site worker and the coordinator, hence in ``shared``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
ENV = "FEDTL_INJECT_FAULT"


def _faults() -> list[str]:
    return [f.strip() for f in os.environ.get(ENV, "").split(",") if f.strip()]


def poison_update(delta: dict[str, np.ndarray]) -> None:
    if "nan_update" in _faults() and delta:
        first = next(iter(delta))
        delta[first] = np.full_like(delta[first], np.nan)
        log.warning("%s=nan_update: sending a NaN update on purpose", ENV)


def _wait_for(path: str) -> None:
    while not Path(path).exists():
        time.sleep(0.1)


def hold_before_training(round_: int) -> None:
    for fault in _faults():
        if fault.startswith("hold:"):
            _, first_round, path = fault.split(":", 2)
            if round_ >= int(first_round) and not Path(path).exists():
                log.warning("%s: holding round %d until %s exists", ENV, round_, path)
                _wait_for(path)


def hold_stop() -> None:
    for fault in _faults():
        if fault.startswith("hold_stop:"):
            path = fault.split(":", 1)[1]
            log.warning("%s: holding the stop until %s exists", ENV, path)
            _wait_for(path)

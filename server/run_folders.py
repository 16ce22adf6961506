"""The folders a coordinator's run keeps in its state_dir, and what a fresh run does with an earlier run's.

Kept free of torch: the CLI checks a state_dir here before it starts anything.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from fedtl.shared.safe_paths import UnsafePath, made_by

log = logging.getLogger(__name__)

RUN_FOLDERS = ("checkpoints", "resume")  # what a run keeps in state_dir, and sets aside when a fresh one starts


def fedtl_run_folder(folder: Path) -> bool:
    """Did fedtl write this ``checkpoints/`` or ``resume/`` folder (or its ``.previous``)?"""
    if (folder / "latest.json").exists():
        return True
    entries = [e for e in folder.iterdir() if not e.name.startswith((".round-", ".latest.json."))]  # our temps
    return all(made_by(e) is not None or (e / "fedtl.json").exists() or (e / "round.json").exists()
               for e in entries)


def check_state_dir(state_dir: Path) -> None:
    """Refuse a state_dir whose run folders hold what fedtl did not write: a fresh run sets them aside
    and later deletes the set-aside generation, which must never be the user's own files."""
    for name in RUN_FOLDERS:
        for folder in (state_dir / name, state_dir / f"{name}.previous"):
            if folder.is_dir() and not fedtl_run_folder(folder):
                raise UnsafePath(f"state_dir {state_dir}: {folder} holds files fedtl did not write, and a run "
                                 "would move or delete them; give the federation its own state_dir")


def set_aside_previous_run(root: Path) -> None:
    """A fresh run's checkpoints and resume points must not mix with an earlier run's in the same
    state_dir: those move to ``checkpoints.previous/`` and ``resume.previous/`` (one generation
    kept; ``--resume`` would have continued them), so the new run never deletes its own points."""
    check_state_dir(root)
    for name in RUN_FOLDERS:
        folder = root / name
        if folder.exists() and any(folder.iterdir()):
            previous = root / f"{name}.previous"
            if previous.exists():
                shutil.rmtree(previous)
            folder.rename(previous)
            log.info("fresh run: the earlier run's %s moved to %s", name, previous)

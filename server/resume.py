"""Resume points: everything needed to continue a federation exactly after any crash.

After every round the coordinator writes ``state_dir/resume/round-NNNN/``: the exchanged
global tensors (``global.safetensors``), the strategy's state (FedAdam/FedYogi/FedAdagrad
moments, FedAvgM's momentum: ``strategy.safetensors``), each site's own model under
``similarity`` (``site_models.safetensors``) and the round's record (``round.json``), then
points ``resume/latest.json`` at it. The folder appears by one rename and the pointer by one
atomic write, so a reader sees a whole round or the one before.

Hugging Face checkpoints (``checkpoints/``) are for people and MLflow; this is for ``--resume``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from safetensors.numpy import load_file, save_file

from fedtl.server.history import RoundRecord
from fedtl.shared.atomic import atomic_folder, folder_number, keep_newest, write_json_atomic

log = logging.getLogger(__name__)
KEEP = 2
# Strategy attributes that hold state across rounds, in Flower 1.39's Message API strategies.
DICT_STATE = ("m_t", "v_t")          # FedOpt family: {tensor name: array}
LIST_STATE = ("momentum_vector",)    # FedAvgM: [array, ...] in ArrayRecord order


@dataclass
class ResumePoint:
    round: int
    arrays: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray] = field(default_factory=dict)
    record: RoundRecord | None = None  # the round's record, replayed to observers that missed it
    site_models: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # similarity: per-site models


def strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """The strategy's round-to-round state as flat named arrays (empty for stateless ones)."""
    state: dict[str, np.ndarray] = {}
    for attr in DICT_STATE:
        for name, value in (getattr(strategy, attr, None) or {}).items():
            state[f"{attr}/{name}"] = np.ascontiguousarray(value)
    for attr in LIST_STATE:
        for i, value in enumerate(getattr(strategy, attr, None) or []):
            state[f"{attr}/{i:06d}"] = np.ascontiguousarray(value)
    return state


def restore_strategy(strategy: object, state: dict[str, np.ndarray]) -> None:
    """Put saved state back on a freshly built strategy of the same kind."""
    for attr in DICT_STATE:
        values = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{attr}/")}
        if values:
            setattr(strategy, attr, values)
    for attr in LIST_STATE:
        values = [v for k, v in sorted(state.items()) if k.startswith(f"{attr}/")]
        if values:
            setattr(strategy, attr, values)


RESUME_POINT = "fedtl resume point"  # the marker of a resume point's folder (shared/safe_paths.py)


def _earlier_point(folder: Path) -> bool:
    """A resume point an earlier fedtl wrote before folders were marked."""
    return (folder / "round.json").exists()


def save_resume_point(state_dir: Path, point: ResumePoint) -> Path:
    root = state_dir / "resume"
    final = root / f"round-{point.round:04d}"
    with atomic_folder(final, RESUME_POINT, legacy=_earlier_point) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in point.arrays.items()}, str(tmp / "global.safetensors"))
        save_file(point.strategy or {}, str(tmp / "strategy.safetensors"))
        save_file({f"{site}/{name}": np.ascontiguousarray(v) for site, arrays in point.site_models.items()
                   for name, v in arrays.items()}, str(tmp / "site_models.safetensors"))
        (tmp / "round.json").write_text(point.record.line() if point.record is not None else "{}")
    write_json_atomic(root / "latest.json", {"round": point.round, "path": final.name})
    keep_newest(root, "round-*", KEEP, RESUME_POINT, legacy=_earlier_point)
    return final


def load_resume_point(state_dir: Path) -> ResumePoint | None:
    """The newest resume point that reads whole; an unreadable newest one (a disk that lost its
    last write) falls back to the one before, with a warning. None when there is none."""
    root = state_dir / "resume"
    pointer = root / "latest.json"
    candidates: list[Path] = []
    try:
        candidates.append(root / json.loads(pointer.read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        if not root.is_dir():
            return None
    older = sorted((p for p in root.glob("round-*") if p not in candidates), key=folder_number, reverse=True)
    for folder in candidates + older:
        try:
            point = _read_point(folder)
        except Exception as exc:  # noqa: BLE001 - a truncated file fails in many ways
            log.warning("resume point %s cannot be read (%s: %s); trying the one before", folder,
                        type(exc).__name__, exc)
            continue
        return point
    return None


def _read_point(folder: Path) -> ResumePoint:
    try:  # a point written without a record, or by a version whose record does not read: nothing to replay
        record: RoundRecord | None = RoundRecord.model_validate(json.loads((folder / "round.json").read_text()))
    except ValidationError:
        record = None
    site_models: dict[str, dict[str, np.ndarray]] = {}
    if (folder / "site_models.safetensors").exists():
        for key, value in load_file(str(folder / "site_models.safetensors")).items():
            site, name = key.split("/", 1)
            site_models.setdefault(site, {})[name] = value
    return ResumePoint(
        round=folder_number(folder),
        arrays=load_file(str(folder / "global.safetensors")),
        strategy=load_file(str(folder / "strategy.safetensors")),
        record=record,
        site_models=site_models,
    )

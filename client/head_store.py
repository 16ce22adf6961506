"""A site's private heads on disk: ``<task>.safetensors`` plus a ``<task>.json`` sidecar.

Both files are written atomically; the sidecar holds the weights' SHA-256, so a head whose
two files do not belong together (a crash between the writes, a hand edit) is detected
instead of silently loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedtl.shared import __version__
from fedtl.shared.atomic import write_bytes_atomic, write_json_atomic
from fedtl.shared.heads import HeadSpec


class HeadStoreError(RuntimeError):
    """A stored head is unreadable or inconsistent."""


class HeadStore:
    """Heads of one site (or one training mode of a site) under ``root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def _paths(self, task: str) -> tuple[Path, Path]:
        return self.root / f"{task}.safetensors", self.root / f"{task}.json"

    def exists(self, task: str) -> bool:
        return all(p.exists() for p in self._paths(task))

    def save(self, spec: HeadSpec, state: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> Path:
        weights_path, meta_path = self._paths(spec.task)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        blob = save_safetensors(tensors, metadata={"task": spec.task, "fedtl": __version__})
        write_bytes_atomic(weights_path, blob)
        meta = {
            "spec": spec.to_json(),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fedtl_version": __version__,
            **(extra or {}),
        }
        write_json_atomic(meta_path, meta)
        return weights_path

    def load(self, task: str) -> tuple[HeadSpec, dict[str, torch.Tensor], dict[str, Any]] | None:
        """(spec, weights, sidecar) of a stored head, or None when there is none."""
        weights_path, meta_path = self._paths(task)
        if not weights_path.exists() and not meta_path.exists():
            return None
        if not (weights_path.exists() and meta_path.exists()):
            missing = meta_path if weights_path.exists() else weights_path
            raise HeadStoreError(f"head '{task}' is incomplete: {missing} is missing; delete the other file "
                                 "to start this head afresh")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise HeadStoreError(f"{meta_path}: corrupt sidecar ({exc.msg})") from None
        blob = weights_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise HeadStoreError(f"{weights_path} does not match its sidecar {meta_path} (checksum differs)")
        return HeadSpec.from_json(meta["spec"]), load_safetensors(blob), meta

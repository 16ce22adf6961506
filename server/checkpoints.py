"""Global encoder checkpoints: Hugging Face folders written atomically, plus resume state.

``<state_dir>/checkpoints/round-0003/`` holds ``model.safetensors``, ``config.json`` and the
tokenizer, so ``load_encoder(path)`` (or ``transformers.AutoModel``) loads it directly.
``<state_dir>/checkpoints/latest.json`` names the newest one; ``--resume`` starts from it.
Under update mode ``lora`` the folder holds the encoder with the adapters merged in, and
``adapter/`` the adapters themselves as a PEFT folder (``PeftModel.from_pretrained(base, path)``).
``round-0000`` is the encoder a fresh run starts from (what `fedtl site --warm-start` pulls
before the first round ends).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedtl.server.run_folders import set_aside_previous_run
from fedtl.shared.atomic import atomic_folder, keep_newest, write_json_atomic
from fedtl.shared.encoders import TextEncoder
from fedtl.shared.lora import LoraSettings, merged, save_adapter_folder
from fedtl.shared.records import digest

PREFIX = "backbone."
CHECKPOINT = "fedtl checkpoint"  # the marker of a checkpoint folder (shared/safe_paths.py)
log = logging.getLogger(__name__)


def apply_arrays(encoder: TextEncoder, arrays: dict[str, np.ndarray]) -> None:
    params = dict(encoder.named_parameters())
    with torch.no_grad():
        for name, value in arrays.items():
            params[name].copy_(torch.from_numpy(np.asarray(value)))


@dataclass(frozen=True)
class LoraCheckpoint:
    """What a lora checkpoint needs besides the adapters: their settings and the plain target weights."""

    settings: LoraSettings
    base_weights: dict[str, np.ndarray]  # the pretrained weights the adapters go on
    base_name: str  # written into adapter_config.json as base_model_name_or_path


def save_checkpoint(root: Path, round_: int, encoder: TextEncoder, arrays: dict[str, np.ndarray],
                    keep: int = 3, lora: LoraCheckpoint | None = None) -> Path:
    """Write the full global encoder after ``round_``; keep the newest ``keep`` checkpoints."""
    apply_arrays(encoder, merged(lora.base_weights, arrays, lora.settings) if lora is not None else arrays)
    folder = root / "checkpoints"
    final = folder / f"round-{round_:04d}"
    with atomic_folder(final, CHECKPOINT, legacy=_earlier_checkpoint) as tmp:
        encoder.backbone.save_pretrained(tmp, safe_serialization=True)
        encoder.tokenizer.save_pretrained(tmp)
        if lora is not None:
            save_adapter_folder(tmp / "adapter", arrays, lora.settings, lora.base_name)
        (tmp / "fedtl.json").write_text(json.dumps({"round": round_, "encoder": encoder.name,
                                                    "digest": digest(arrays)}, indent=2))
    write_json_atomic(folder / "latest.json", {"round": round_, "path": final.name, "digest": digest(arrays),
                                               "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    keep_newest(folder, "round-*", keep, CHECKPOINT, legacy=_earlier_checkpoint)
    return final


def _earlier_checkpoint(folder: Path) -> bool:
    """A checkpoint folder an earlier fedtl wrote before folders were marked."""
    return (folder / "fedtl.json").exists()


def save_start_checkpoint(root: Path, encoder: TextEncoder, arrays: dict[str, np.ndarray],
                          lora: LoraCheckpoint | None = None) -> Path:
    """Write round 0, the encoder a fresh run starts from, so sites can pull it before round 1.

    The earlier run's checkpoints and resume points are set aside first (``set_aside_previous_run``).
    """
    set_aside_previous_run(root)
    return save_checkpoint(root, 0, encoder, arrays, lora=lora)


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    meta = root / "checkpoints" / "latest.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return int(info["round"]), root / "checkpoints" / info["path"]


def load_checkpoint_into(encoder: TextEncoder, folder: Path, required: list[str]) -> None:
    """Load a checkpoint's weights into an encoder built from the federation's base encoder.

    Loading the folder with ``AutoModel`` could add layers the sites do not have (BERT's
    pooler, say); loading into the configured encoder keeps both sides' tensors identical.
    """
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {folder} holds no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    result = encoder.backbone.load_state_dict(state, strict=False)
    missing = sorted(PREFIX + k for k in result.missing_keys if PREFIX + k in set(required))
    if missing:
        raise ValueError(f"checkpoint {folder} lacks tensors the federation exchanges: {missing[:3]}")

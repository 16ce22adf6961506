"""Frozen-prefix cache: the frozen layers' outputs for a site's texts, computed once.

Under update mode ``last:N`` the embeddings and the first L-N layers never change at a site,
so their output for each training and validation text is the same every round. The site
keeps those token states (one ``[tokens, hidden]`` tensor per text) and runs only the last N
layers for the head phase, encoder training and evaluation. Both paths run the prefix in
eval mode (no dropout), so cached and uncached compute the same numbers.

The cache is keyed by a fingerprint of the prefix's weights (a new encoder, or a prefix that
did change, rebuilds it) and bounded by ``max_bytes``: over the bound it stays off and the
trainer runs the prefix every time.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from torch.nn.utils.rnn import pad_sequence

from fedtl.client.batching import pad_batch
from fedtl.shared.encoders import TextEncoder

log = logging.getLogger(__name__)
BUILD_BATCH = 64


def frozen_prefix_layers(encoder: TextEncoder, trainable: set[str]) -> int:
    """How many leading layers (after the embeddings) train nowhere: 0 when the split does not apply."""
    layers = encoder.layers
    if layers is None or not trainable:
        return 0
    prefix = "backbone.encoder.layer."
    indices = []
    for name in trainable:
        if not name.startswith(prefix):
            return 0  # embeddings, pooling or anything outside the layers trains: no frozen prefix
        indices.append(int(name[len(prefix):].split(".", 1)[0]))
    k = min(indices)
    return k if encoder.can_split(k) else 0


def prefix_fingerprint(encoder: TextEncoder, frozen_layers: int) -> str:
    h = hashlib.sha256(f"{encoder.name}|{frozen_layers}".encode())
    modules = [encoder.backbone.embeddings, *encoder.layers[:frozen_layers]]
    for module in modules:
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class PrefixCache:
    """Token states after the frozen prefix, per text, for named lists of token sequences."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.key: tuple[str, int] | None = None
        self.states: dict[str, list[torch.Tensor]] = {}
        self.disabled_reason = ""

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for seqs in self.states.values() for t in seqs)

    def prepare(self, encoder: TextEncoder, frozen_layers: int, sequences: dict[str, list[list[int]]],
                device: torch.device) -> bool:
        """Make sure the cache holds ``sequences``' prefix states for this prefix; False if it cannot."""
        if frozen_layers <= 0:
            return False
        hidden = encoder.hidden_size
        need = sum(len(s) for seqs in sequences.values() for s in seqs) * hidden * 4
        if need > self.max_bytes:
            if not self.disabled_reason:
                self.disabled_reason = f"needs {need / 2**20:.0f} MiB, over the {self.max_bytes / 2**20:.0f} MiB cap"
                log.info("frozen-prefix cache off: it %s (training.prefix_cache_mb)", self.disabled_reason)
            return False
        key = (prefix_fingerprint(encoder, frozen_layers), frozen_layers)
        if key != self.key:
            self.states, self.key = {}, key
        for name, seqs in sequences.items():
            if name not in self.states:
                self.states[name] = self._build(encoder, frozen_layers, seqs, device)
        return True

    @staticmethod
    @torch.no_grad()
    def _build(encoder: TextEncoder, frozen_layers: int, seqs: list[list[int]],
               device: torch.device) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths pad less
        for start in range(0, len(order), BUILD_BATCH):
            chunk = order[start:start + BUILD_BATCH]
            ids, mask = pad_batch([seqs[i] for i in chunk], encoder.pad_token_id, device)
            states = encoder.prefix(ids, mask, frozen_layers).float()
            for row, i in enumerate(chunk):
                out[i] = states[row, : len(seqs[i])].clone()
        return out  # type: ignore[return-value]

    def batch(self, name: str, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded prefix states and the attention mask for texts ``index`` of list ``name``."""
        seqs = [self.states[name][i] for i in index]
        states = pad_sequence(seqs, batch_first=True)
        lengths = torch.tensor([len(s) for s in seqs], device=states.device)
        mask = (torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]).long()
        return states, mask

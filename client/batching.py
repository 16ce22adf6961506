"""Token batches for the encoder: padding and batched pooled features.

One module that the trainer, the prefix cache, the predictor and the benchmarks import, so the
serving path needs no trainer and the cache no cycle back into it.
"""

from __future__ import annotations

import torch

from fedtl.shared.encoders import TextEncoder

EMBED_BATCH = 64  # texts per forward pass when only features are wanted (no gradients)


def pad_batch(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to the longest sequence, and the attention mask, on ``device``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


@torch.no_grad()
def embed_texts(encoder: TextEncoder, texts: list[str], max_length: int,
                device: torch.device | None = None) -> torch.Tensor:
    """Pooled float features of ``texts`` from ``encoder`` as it is now (every layer run, nothing
    cached): what ``fedtl predict`` feeds its heads."""
    device = device or torch.device("cpu")
    ids = encoder.tokenize(texts, max_length)
    out = [encoder(*pad_batch(ids[start:start + EMBED_BATCH], encoder.pad_token_id, device)).float()
           for start in range(0, len(ids), EMBED_BATCH)]
    return torch.cat(out) if out else torch.zeros((0, encoder.hidden_size))

"""``lora.aggregation: product``: average what the adapters do, not their factors.

A LoRA adapter changes a weight by ``B @ A``. Averaging the factors (FedAvg of A and of B)
gives ``mean(B) @ mean(A)``, which is not the average change ``mean(B @ A)``: it adds cross
terms ``B_i @ A_j`` of different sites that no site trained. Here the coordinator averages the
products and factors the mean again at rank r (truncated SVD, split evenly between B and A),
the best rank-r approximation of the average change (Eckart-Young); what does not fit in rank r
is lost.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def product_mean(models: Mapping[str, Mapping[str, np.ndarray]], weights: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Adapters (A, B per target) whose ``B @ A`` is the rank-r truncation of the weighted mean of
    the sites' ``B @ A``."""
    total = float(sum(weights[s] for s in models))
    first = next(iter(models.values()))
    out: dict[str, np.ndarray] = {}
    for a_name in sorted(n for n in first if ".lora_A." in n):
        b_name = a_name.replace(".lora_A.", ".lora_B.")
        rank = first[a_name].shape[0]
        mean = sum((weights[s] / total) * (m[b_name].astype(np.float64) @ m[a_name].astype(np.float64))
                   for s, m in models.items())
        u, sing, vt = np.linalg.svd(mean, full_matrices=False)
        root = np.sqrt(sing[:rank])
        out[b_name] = (u[:, :rank] * root).astype(np.float32)
        out[a_name] = (root[:, None] * vt[:rank]).astype(np.float32)
    return out

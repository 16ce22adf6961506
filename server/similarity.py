"""Similarity-weighted personalized aggregation (in the spirit of FedAMP, Huang et al. 2021).

Each site i gets its own model: a mixture of every site's model after local training,

    w_i <- sum_j alpha_ij (base_j + delta_j),   alpha_i = softmax_j(log n_j + cos(delta_i, delta_j) / T)

where ``base_j`` is the model site j received, ``n_j`` its example count and ``T`` the
temperature. Sites whose updates point the same way share freely; a site whose task pulls
the encoder elsewhere keeps mostly its own model instead of being averaged away. With
identical updates this is FedAvg exactly; as ``T`` goes to 0 every site trains alone.
"""

from __future__ import annotations

import numpy as np

from fedtl.shared.records import l2_norm


def cosine_matrix(deltas: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Pairwise cosine similarity of the sites' updates: which tasks pull the encoder apart."""
    sites = sorted(deltas)
    norms = {s: l2_norm(deltas[s]) for s in sites}
    out: dict[str, dict[str, float]] = {s: {} for s in sites}
    for i, a in enumerate(sites):
        out[a][a] = 1.0
        for b in sites[i + 1:]:
            dot = sum(float(np.dot(deltas[a][n].ravel().astype(np.float64), deltas[b][n].ravel()))
                      for n in deltas[a])
            cos = dot / (norms[a] * norms[b]) if norms[a] > 0 and norms[b] > 0 else 0.0
            out[a][b] = out[b][a] = cos
    return out


def mixing_weights(cosine: dict[str, dict[str, float]], examples: dict[str, int],
                   temperature: float) -> dict[str, dict[str, float]]:
    """alpha[i][j]: how much of site j's model goes into site i's. Each row sums to 1."""
    sites = sorted(cosine)
    alphas: dict[str, dict[str, float]] = {}
    for i in sites:
        logits = np.array([np.log(max(examples[j], 1)) + cosine[i][j] / temperature for j in sites])
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        alphas[i] = {j: float(w) for j, w in zip(sites, weights)}
    return alphas


def mix(models: dict[str, dict[str, np.ndarray]], alphas: dict[str, dict[str, float]]) -> dict[str, dict[str, np.ndarray]]:
    """Each site's new model: the alpha-weighted sum of the sites' trained models (float64 sums)."""
    out = {}
    for i, row in alphas.items():
        first = next(iter(models.values()))
        out[i] = {name: sum(row[j] * models[j][name].astype(np.float64) for j in row).astype(first[name].dtype)
                  for name in first}
    return out

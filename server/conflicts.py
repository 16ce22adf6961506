"""Conflict-averse aggregation: project out the parts of site updates that fight each other.

Sites with different tasks can pull the shared encoder in opposite directions; a plain mean
then cancels both pulls. PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"),
applied to the sites' encoder updates as FedHCA2-style aggregators do: for every site i, in a
random order of the other sites j, when ``<d_i, d_j> < 0`` remove from ``d_i`` its component
along ``d_j``::

    d_i <- d_i - <d_i, d_j> / |d_j|^2 * d_j

The strategy then averages the projected updates as usual. Updates that agree (or are
orthogonal) pass unchanged, so with no conflicts this is exactly the configured strategy.

``scope``: ``update`` compares whole updates (one dot product over every exchanged tensor);
``tensor`` compares and projects each tensor on its own, since two tasks may agree on one
layer and fight on another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

ConflictScope = Literal["update", "tensor"]


@dataclass
class Projection:
    """What a round's projection did: the new updates and how much it changed."""

    deltas: dict[str, dict[str, np.ndarray]]
    pairs: int  # ordered (i, j) pairs compared (times the tensors, with scope "tensor")
    conflicting: int  # of those, the ones whose dot product was negative: each was projected
    norm_removed: float  # |what was projected out, summed over sites| / sum of the sites' update norms


def _dot(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], names: list[str]) -> float:
    return sum(float(np.dot(a[n].ravel().astype(np.float64), b[n].ravel().astype(np.float64))) for n in names)


def project_conflicts(deltas: Mapping[str, Mapping[str, np.ndarray]], scope: ConflictScope = "update",
                      seed: int = 0) -> Projection:
    """PCGrad on the sites' updates (``site -> tensor name -> update``); inputs are not modified.

    Each site is projected against the *original* updates of the others (as in PCGrad), in an
    order drawn from ``seed`` so a round is reproducible."""
    sites = sorted(deltas)
    names = sorted(next(iter(deltas.values()))) if sites else []
    groups = [names] if scope == "update" else [[n] for n in names]
    rng = np.random.default_rng(seed)
    sq = {s: [_dot(deltas[s], deltas[s], g) for g in groups] for s in sites}
    out: dict[str, dict[str, np.ndarray]] = {}
    pairs = conflicting = 0
    for i in sites:
        d = {n: deltas[i][n].astype(np.float64) for n in names}
        others = [j for j in sites if j != i]
        for k in rng.permutation(len(others)):
            j = others[k]
            for gi, group in enumerate(groups):
                pairs += 1
                dot = _dot(d, deltas[j], group)
                if dot < 0 and sq[j][gi] > 0:
                    conflicting += 1
                    for n in group:
                        d[n] -= dot / sq[j][gi] * deltas[j][n].astype(np.float64)
        out[i] = {n: d[n].astype(deltas[i][n].dtype) for n in names}
    removed = {n: sum(deltas[s][n].astype(np.float64) - out[s][n] for s in sites) for n in names}
    denom = sum(np.sqrt(sq_total) for sq_total in (sum(sq[s]) for s in sites))
    norm_removed = float(np.sqrt(sum(float(np.sum(removed[n] ** 2)) for n in names)) / denom) if denom > 0 else 0.0
    return Projection(out, pairs, conflicting, norm_removed)

"""Differential privacy for a site's encoder update: clip, add Gaussian noise, account for it.

Site-level DP with noise added at the site (DP-FedAvg with local noise): each round, a site
clips its whole encoder update (all exchanged tensors together) to L2 norm ``clip`` and adds
N(0, (z * clip)^2) to every value before anything leaves it. The unit of privacy is the site's
entire contribution in a round, so the guarantee covers everything in its data at once, and it
holds against the coordinator itself, which never sees an un-noised update.

The noise multiplier z is chosen once by the coordinator so that ``rounds`` rounds, each with
the site taking part with probability ``sample_rate`` (the federation's ``fraction``), spend at
most ``epsilon`` at ``delta`` under Opacus's RDP accountant (the subsampled Gaussian
mechanism); the epsilon spent after each round is logged. Heads never travel, so they are
untouched. What DP costs in accuracy grows with the number of values sent: noise of norm about
``z * clip * sqrt(d)`` against an update of norm ``clip`` (use ``lora`` or ``last:N`` with DP).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedtl.shared.records import l2_norm

# Opacus's default Renyi orders stop at 63; a few rounds at a large epsilon are tightest at
# higher orders (Opacus warns "optimal order is the largest alpha"), so the grid goes on.
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + list(range(64, 1025, 16))


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, rounds: int) -> float:
    """The smallest z (Opacus's search) that keeps ``rounds`` rounds within (epsilon, delta)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=rounds, accountant="rdp", alphas=ALPHAS))


def epsilon_spent(z: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds of noise multiplier z (RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if rounds <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(z, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta, alphas=ALPHAS))


def epsilon_of(noise_multipliers: list[float], delta: float) -> float:
    """Epsilon at ``delta`` after one full-participation round (q = 1) per entry, each with its own z."""
    from collections import Counter

    from opacus.accountants import RDPAccountant

    if not noise_multipliers:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(z, 1.0, count) for z, count in Counter(noise_multipliers).items()]
    return float(accountant.get_epsilon(delta, alphas=ALPHAS))


def privatize(delta: Mapping[str, np.ndarray], clip: float, z: float,
              rng: np.random.Generator | None = None) -> tuple[dict[str, np.ndarray], float]:
    """``delta`` clipped to L2 norm ``clip`` plus N(0, (z*clip)^2) per value; also its norm before clipping.

    ``rng`` defaults to fresh OS entropy: noise must not be reproducible by anyone who knows
    the seed. A non-finite update stays non-finite (the coordinator rejects it).
    """
    rng = rng if rng is not None else np.random.default_rng()
    norm = l2_norm(delta)
    scale = min(1.0, clip / norm) if norm > 0 and math.isfinite(norm) else 1.0
    sigma = z * clip
    out = {}
    for name, array in delta.items():
        noise = rng.standard_normal(array.shape, dtype=np.float32) * np.float32(sigma)
        out[name] = (array.astype(np.float32) * np.float32(scale) + noise).astype(np.float32)
    return out, norm

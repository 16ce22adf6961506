"""Bounded influence: no site's update may be much larger than the sites' typical update.

Weighted averaging lets one large update move the model as far as its sender likes; a bound
relative to what honest sites send stops that without a number the operator must guess per
encoder and update mode. The typical norm is the lower median of the previous round's
accepted updates (a minority of large updates cannot raise it). In the first round, or after
a resume, there is no previous round: the gate holds the first ``WARMUP`` replies, takes
their lower median, then judges them and every later reply against it. Holding costs memory
for at most ``WARMUP`` updates, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
WARMUP = 5


def lower_median(values: Sequence[float]) -> float:
    """The median, the lower middle value for an even count: with two sites, the smaller norm."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


class NormGate(Generic[Item]):
    """Admits or refuses replies by norm; ``factor`` None turns the bound off."""

    def __init__(self, factor: float | None, reference: float | None):
        self.factor = factor
        self.reference = reference if reference and reference > 0 else None
        self._held: list[tuple[Item, float]] = []

    def offer(self, item: Item, norm: float) -> list[tuple[Item, str | None]]:
        """Replies now decided, each with the reason it is refused (None: admitted)."""
        if self.factor is None:
            return [(item, None)]
        if self.reference is None:
            self._held.append((item, norm))
            return self._release() if len(self._held) >= WARMUP else []
        return [(item, self._refusal(norm))]

    def flush(self) -> list[tuple[Item, str | None]]:
        """The replies still held when the round's replies are all in."""
        return self._release() if self._held else []

    def _release(self) -> list[tuple[Item, str | None]]:
        self.reference = lower_median([norm for _, norm in self._held]) or None
        held, self._held = self._held, []
        return [(item, self._refusal(norm)) for item, norm in held]

    def _refusal(self, norm: float) -> str | None:
        if self.factor is None or self.reference is None or norm <= self.factor * self.reference:
            return None
        return (f"update norm {norm:.3g} is over norm_bound {self.factor:g} x the sites' typical norm "
                f"{self.reference:.3g}")

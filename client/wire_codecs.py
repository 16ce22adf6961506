"""A site's end of the update codecs (``shared/codecs.py``, ``server/downlink.py``).

Downlink: with a lossy ``codec.down`` the coordinator sends the change of the encoder since
the reference the sites hold (or, ``base_digest`` empty, the reference itself in fp32). The
site keeps that reference, checks that a change was made against it (by digest) and adds it.
A site that holds another reference refuses the round; the coordinator then sends the whole
reference the next round.

Uplink: with a lossy ``codec.up`` the site encodes its delta with error feedback: what the
encoding dropped is carried into the next round's delta (in memory; a restarted site starts
with no residual, which costs nothing but that one round's correction).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from fedtl.shared.codecs import Codec, ErrorFeedback, decode
from fedtl.shared.protocol import RoundConfig
from fedtl.shared.records import digest


class OutOfStep(ValueError):
    """The coordinator sent a change to an encoder this site does not hold."""


class SiteCodecs:
    def __init__(self) -> None:
        self.reference: dict[str, np.ndarray] | None = None
        self.reference_digest = ""
        self.uplink: ErrorFeedback | None = None
        self._uplink_key: tuple[str, int] | None = None

    def reset(self) -> None:
        """Another encoder was loaded: nothing held so far applies to it."""
        self.reference, self.reference_digest, self.uplink, self._uplink_key = None, "", None, None

    def receive(self, config: RoundConfig, arrays: dict[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                pretrained: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The global encoder tensors this round's message stands for (the reference, when coded).

        ``pretrained()`` gives the pretrained tensors of ``shapes``: the reference of a new federation.
        """
        down = Codec.parse(config.down_codec or "none")
        if not down.lossy:
            self.reference, self.reference_digest = None, ""
            return arrays
        if not config.base_digest:  # the whole reference
            self._hold({n: np.array(a, dtype=np.float32) for n, a in arrays.items()})
            return {n: a.copy() for n, a in self.reference.items()}
        base = self._base(config.base_digest, pretrained)
        change = decode(arrays, down, shapes)
        self._hold({n: base[n] + change[n] for n in shapes})
        return {n: a.copy() for n, a in self.reference.items()}

    def _base(self, wanted: str, pretrained: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if self.reference is not None and self.reference_digest == wanted:
            return self.reference
        start = pretrained()
        if digest(start) == wanted:
            return start
        raise OutOfStep(f"the coordinator sent a change to encoder {wanted}, but this site holds "
                        f"{self.reference_digest or 'none it knows of'} (restarted or missed a round?); "
                        "the coordinator sends the whole encoder next round")

    def _hold(self, reference: dict[str, np.ndarray]) -> None:
        self.reference, self.reference_digest = reference, digest(reference)

    def send(self, config: RoundConfig, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What goes up for ``delta``: itself (fp32), or its encoding with the carried residual."""
        up = Codec.parse(config.up_codec or "none")
        if not up.lossy:
            return delta
        key = (str(up), config.run_id)
        if self.uplink is None or self._uplink_key != key:  # a new federation or codec: no residual carries over
            self.uplink, self._uplink_key = ErrorFeedback(up), key
        wire, _ = self.uplink.encode(delta)
        return wire

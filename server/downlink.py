"""The coordinator's side of a lossy downlink codec: what the sites hold, and what brings them up to date.

With ``codec.down`` lossy the coordinator keeps a *reference*: the encoder tensors every site in
step holds, made of nothing but what was sent. Each round it encodes ``global - reference``,
adds what that decodes to into the reference, and sends the encoded change. What the codec
dropped stays in ``global - reference`` and goes out with the next round's change (error
feedback at the coordinator), so the sites' encoder never drifts from the global one by more
than one round's coding error.

Sites train from the reference and send deltas against it; the coordinator adds them to its
exact global tensors. The reference starts as the pretrained tensors, which every site loads
itself, so a new federation's first round sends only a change. A site that is not in step
(one that failed or did not answer, or every site after the coordinator resumed) gets the
reference itself in fp32 once; a site that finds its encoder is not the base a change was
made against refuses the round, and gets the whole reference the round after.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedtl.shared.codecs import Codec, decode, encode
from fedtl.shared.records import digest


class Downlink:
    def __init__(self, codec: Codec, start: Mapping[str, np.ndarray], sites_hold_start: bool):
        """``start``: the tensors the reference starts from; ``sites_hold_start``: every site
        already has them (the pretrained encoder of a fresh federation), else each site gets
        the reference in full the first time."""
        self.codec = codec
        self.reference = {n: np.array(a, dtype=np.float32) for n, a in start.items()}
        self.reference_digest = digest(self.reference)
        self._start_digest = self.reference_digest if sites_hold_start else None
        self.held: dict[int, str | None] = {}  # node -> digest of the reference it holds (None: unknown)
        self.change: dict[str, np.ndarray] = {}
        self.base_digest = ""

    def prepare(self, global_arrays: Mapping[str, np.ndarray]) -> None:
        """Encode this round's change of the global tensors and move the reference by what it decodes to."""
        self.base_digest = self.reference_digest
        pending = {n: np.asarray(global_arrays[n], dtype=np.float32) - self.reference[n] for n in self.reference}
        self.change = encode(pending, self.codec)
        decoded = decode(self.change, self.codec, {n: a.shape for n, a in pending.items()})
        for name, value in decoded.items():
            self.reference[name] += value
        self.reference_digest = digest(self.reference)

    def payload(self, node: int) -> tuple[dict[str, np.ndarray], str]:
        """(ARRAYS, base digest) for ``node`` this round: the change, or ("") the whole reference."""
        held = self.held.get(node, self._start_digest)
        if held is not None and held == self.base_digest:
            return self.change, self.base_digest
        return self.reference, ""

    def answered(self, node: int, ok: bool) -> None:
        """A node that trained this round holds the new reference; one that failed is out of step."""
        self.held[node] = self.reference_digest if ok else None

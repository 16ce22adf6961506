"""The epsilon a site has spent, across every run it ever took part in.

A federation's accountant counts one run; a site that joins run after run (or several
federations from one state folder) spends more than any one of them reports. The ledger
keeps one entry per private round whose noised update this site produced, written before
the update leaves, and ``site.yaml``'s ``privacy.max_epsilon`` refuses a round that would
take the total past the site's own budget. Each entry counts in full (q = 1): the
coordinator picks which sites take part, so sampling hides nothing from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedtl.shared.atomic import write_bytes_atomic
from fedtl.shared.privacy import epsilon_of

LEDGER = "privacy_ledger.json"


class PrivacyLedger:
    def __init__(self, path: Path, delta: float):
        self.path = Path(path)
        self.delta = delta
        self.entries: list[dict] = self._read()

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:  # a ledger that cannot be read must not reset the budget: refuse until a person looks
            entries = json.loads(self.path.read_text())["rounds"]
            return [dict(e, noise_multiplier=float(e["noise_multiplier"])) for e in entries]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path}: the privacy ledger cannot be read ({exc}); fix or restore it "
                             "(deleting it forgets the epsilon this site has spent)") from None

    def spent(self) -> float:
        return epsilon_of([e["noise_multiplier"] for e in self.entries], self.delta)

    def refusal(self, noise_multiplier: float, budget: float) -> str | None:
        """Why one more round at ``noise_multiplier`` is refused under ``budget`` (None: it fits)."""
        after = epsilon_of([e["noise_multiplier"] for e in self.entries] + [noise_multiplier], self.delta)
        if after <= budget:
            return None
        return (f"the round would take this site's epsilon to {after:.3g} at delta {self.delta:g} "
                f"({len(self.entries)} private rounds so far: {self.spent():.3g}), past its budget {budget:g} "
                "(site.yaml privacy.max_epsilon)")

    def record(self, run_id: int, server_round: int, noise_multiplier: float, clip: float) -> None:
        """One more private round: written (atomically, fsynced) before the update leaves the site."""
        self.entries.append({"run_id": run_id, "round": server_round, "noise_multiplier": noise_multiplier,
                             "clip_norm": clip, "at": time.time()})
        body = {"delta": self.delta, "epsilon": self.spent(), "rounds": self.entries}
        write_bytes_atomic(self.path, json.dumps(body, indent=1).encode(), mode=0o600)

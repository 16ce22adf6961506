"""Check every site's encoder update before it reaches aggregation.

A bad update (wrong names, shapes or dtypes, NaN/inf, too large a norm, nonsense example
count) is rejected with a reason and logged; the round goes on with the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from fedtl.shared.protocol import ARRAYS, METRICS, REPORT, ReportKey, SiteMetric
from fedtl.shared.records import from_record, l2_norm


@dataclass
class Verdict:
    """``kind``: accepted, failed (the site reported an error) or rejected (its update is bad)."""

    node_id: int
    site: str
    kind: str
    reason: str = ""
    norm: float = 0.0
    delta: dict[str, np.ndarray] | None = None
    note: str = ""  # an accepted update that was changed on the way in (its example count capped)

    @property
    def ok(self) -> bool:
        return self.kind == "accepted"


MAX_REPORT_BYTES = 64 * 1024  # a site's report (names, per-task scores, timings) is a few KiB


def report_bytes(msg: Message) -> int:
    """About how many bytes a reply's report holds (what the history and MLflow would store)."""
    if REPORT not in msg.content.config_records:
        return 0
    total = 0
    for key, value in msg.content[REPORT].items():
        items = value if isinstance(value, list) else [value]
        total += len(key) + sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in items)
    return total


def count_problem(msg: Message, max_examples: int | None) -> str | None:
    """Why a reply's example count cannot weigh it (None: it can); caps it at ``max_examples``."""
    n = msg.content[METRICS].get(SiteMetric.NUM_EXAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return f"{SiteMetric.NUM_EXAMPLES} must be a positive integer, got {n!r}"
    if max_examples is not None and n > max_examples:
        msg.content[METRICS][SiteMetric.NUM_EXAMPLES] = max_examples
    return None


def values_problem(msg: Message) -> str | None:
    """Why a reply's metrics or report cannot be kept (None: they can)."""
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in msg.content[METRICS].values()):
        return "metrics hold a non-finite value"
    if (size := report_bytes(msg)) > MAX_REPORT_BYTES:
        return f"report of {size} bytes is over {MAX_REPORT_BYTES} bytes"
    return None


def check_evaluation(msg: Message, max_examples: int | None) -> str | None:
    """Why an evaluate reply is refused (None: it is used)."""
    if METRICS not in msg.content.metric_records:
        return "reply lacks its metrics"
    return count_problem(msg, max_examples) or values_problem(msg)


def site_name(msg: Message) -> str:
    try:
        return str(msg.content[REPORT][ReportKey.SITE])
    except Exception:
        return f"node-{msg.metadata.src_node_id}"


def check_update(msg: Message, expected: Mapping[str, np.ndarray], max_norm: float | None,
                 max_examples: int | None = None) -> Verdict:
    """The verdict on one site's reply. ``max_examples`` caps the self-reported example count that
    weights the site in aggregation (the reply is changed to say the cap), so no site can claim
    all the weight."""
    node = msg.metadata.src_node_id
    if msg.has_error():
        return Verdict(node, f"node-{node}", "failed", f"site failed: {msg.error.reason}")
    site = site_name(msg)
    content = msg.content
    if ARRAYS not in content.array_records or METRICS not in content.metric_records:
        return Verdict(node, site, "rejected", "reply lacks the encoder update or its metrics")
    n = content[METRICS].get(SiteMetric.NUM_EXAMPLES)
    if (why := count_problem(msg, max_examples)) is not None:
        return Verdict(node, site, "rejected", why)
    note = ""
    if max_examples is not None and isinstance(n, int) and n > max_examples:
        note = f"{SiteMetric.NUM_EXAMPLES} {n} capped at max_site_examples {max_examples}"
    try:
        delta = from_record(content[ARRAYS])
    except ValueError as err:
        return Verdict(node, site, "rejected", f"malformed update: {err}")
    extra = sorted(set(delta) - set(expected))
    missing = sorted(set(expected) - set(delta))
    if extra or missing:
        return Verdict(node, site, "rejected", f"unexpected tensors {extra[:3]} / missing tensors {missing[:3]}")
    for name, ref in expected.items():
        got = delta[name]
        if got.shape != ref.shape:
            return Verdict(node, site, "rejected", f"tensor {name}: shape {got.shape}, expected {ref.shape}")
        if got.dtype != ref.dtype:
            return Verdict(node, site, "rejected", f"tensor {name}: dtype {got.dtype}, expected {ref.dtype}")
        if not np.isfinite(got).all():
            return Verdict(node, site, "rejected", f"tensor {name} holds NaN or inf")
    if (why := values_problem(msg)) is not None:  # after the tensors: a NaN update is named as such
        return Verdict(node, site, "rejected", why)
    norm = l2_norm(delta)
    if max_norm is not None and norm > max_norm:
        return Verdict(node, site, "rejected", f"update norm {norm:.3g} exceeds max_update_norm {max_norm:.3g}", norm)
    return Verdict(node, site, "accepted", "", norm, delta, note)

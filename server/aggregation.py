"""Streaming aggregation: each site's update is folded in as it arrives, then dropped.

FedAvg and every strategy built on FedAvg's weighted mean (FedProx, FedAvgM, FedAdam,
FedYogi) need only ``sum_i n_i * model_i`` and ``sum_i n_i``. ``RoundAggregator`` keeps those
running sums (one BLAS multiply-add pass per tensor), so the coordinator holds one model's worth
of sums whatever the number of sites, and hands the strategy a single reply carrying the
weighted mean: Flower's own server optimizers (momentum, Adam moments) then run unchanged.

Robust strategies (``trimmed_mean``, ``median``) need every update at once, and so does
``similarity`` personalization (each site's mixture of all models): for those the
aggregator keeps every model, and memory grows with the number of sites.

The interference heatmap (pairwise cosine of the sites' updates) needs every pair; a count
sketch (Charikar, Chen & Farach-Colton 2002) of each update, 8,192 numbers, estimates it
without keeping the updates: exact when the update has no more values than the sketch,
otherwise within about ``1/sqrt(8192) = 0.011`` of the true cosine.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from scipy.linalg.blas import saxpy

from fedtl.server.similarity import cosine_matrix
from fedtl.server.validation import Verdict
from fedtl.shared.protocol import ARRAYS, METRICS, SiteMetric
from fedtl.shared.records import tensor_record

# Strategies whose aggregate is linear in the replies: a running weighted sum computes them exactly.
STREAMING_STRATEGIES = frozenset({"fedavg", "fedexp", "fedprox", "fedavgm", "fedadam", "fedyogi"})
SKETCH_SIZE = 1 << 13  # 32 KiB per site
COSINE_MAX_SITES = 200  # sites up to which a round records their pairwise update cosine


class RunningSum:
    """``sum_i w_i * x_i`` and ``sum_i w_i`` over named tensors, one BLAS ``saxpy`` per tensor.

    ``saxpy`` reads the update once and the sum once and writes the sum once, in one pass
    (numpy's multiply then add would take two). Its result does not depend on where the
    buffers lie in memory, only on the order the updates come in (it rounds each
    multiply-add once): the same replies in the same order give bit-identical sums.
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.weight = 0.0

    def reset(self) -> None:
        """Start over, keeping the buffers: a new round costs no fresh pages (first-touch faults)."""
        for total in self.sums.values():
            total.fill(0.0)
        self.weight = 0.0

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        for name, value in arrays.items():
            flat = np.ascontiguousarray(value, dtype=np.float32).reshape(-1)
            if name not in self.sums or self.sums[name].size != flat.size:
                self.sums[name] = np.zeros(flat.size, dtype=np.float32)
                self.shapes[name] = value.shape
            out = saxpy(flat, self.sums[name], a=float(weight))
            if out is not self.sums[name]:  # scipy works in place on contiguous float32; never rely on it silently
                self.sums[name] = out
        self.weight += weight

    def mean(self, base: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The weighted mean; with ``base``: ``base + mean`` (the sums hold updates relative to it)."""
        out = {}
        for name, total in self.sums.items():
            mean = (total / np.float32(self.weight)).reshape(self.shapes[name])
            out[name] = mean if base is None else (base[name] + mean).astype(base[name].dtype, copy=False)
        return out


class CountSketch:
    """A fixed random linear map of an update to ``size`` numbers that preserves dot products in expectation.

    Value ``i`` of a tensor goes to bucket ``i % size`` with a random sign drawn once per tensor
    name, so every site's sketch uses the same map. Sites' sketches give unbiased estimates of
    their updates' dot products, with an error around ``|a| |b| / sqrt(size)``. The signs are
    kept (one float per exchanged value, the same for every round and site).
    """

    def __init__(self, size: int = SKETCH_SIZE):
        self.size = size
        self._signs: dict[tuple[str, int], np.ndarray] = {}

    def signs(self, name: str, n: int) -> np.ndarray:
        key = (name, n)
        if key not in self._signs:
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            self._signs[key] = rng.integers(0, 2, n).astype(np.float32) * 2 - 1
        return self._signs[key]

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        out = np.zeros(self.size, dtype=np.float64)
        k = self.size
        for name in sorted(arrays):
            flat = np.ascontiguousarray(arrays[name], dtype=np.float32).reshape(-1)
            signs = self.signs(name, flat.size)
            whole = flat.size - flat.size % k
            if whole:  # one pass over the update and the signs, no temporary
                out += np.einsum("ij,ij->j", flat[:whole].reshape(-1, k), signs[:whole].reshape(-1, k))
            if whole < flat.size:
                out[: flat.size - whole] += flat[whole:] * signs[whole:]
        return out.astype(np.float32)


def sketch_cosine(sketches: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    sites = sorted(sketches)
    sketches = {s: np.asarray(sketches[s], dtype=np.float64) for s in sites}
    norms = {s: float(np.linalg.norm(sketches[s])) for s in sites}
    out: dict[str, dict[str, float]] = {s: {s: 1.0} for s in sites}
    for i, a in enumerate(sites):
        for b in sites[i + 1:]:
            dot = float(sketches[a] @ sketches[b])
            cos = dot / (norms[a] * norms[b]) if norms[a] > 0 and norms[b] > 0 else 0.0
            out[a][b] = out[b][a] = max(-1.0, min(1.0, cos))
    return out


@dataclass(frozen=True)
class Extrapolation:
    """FedExP (Jhunjhunwala et al., ICLR 2023): the server steps past the sites' mean update by
    max(1, scale x sum_i p_i ||d_i||^2 / ||mean d||^2) (p_i: example weights; the paper's scale
    is 1/2). About 1 where the updates agree; where they are close to orthogonal (sites with
    different tasks) their mean hands each one a fraction of its own step, and the step grows to
    scale x K for K sites. Capped at ``max_step``: a mean near zero (updates that cancel) would
    ask for an unbounded one."""

    max_step: float
    scale: float = 0.5

    def step(self, spread: float, mean_square: float) -> float:
        """The step for ``spread`` (sum_i p_i ||d_i||^2) and ``mean_square`` (||mean d||^2)."""
        if not mean_square > 0 or not np.isfinite(spread):
            return 1.0
        return float(min(self.max_step, max(1.0, self.scale * spread / mean_square)))


def squared_norm(arrays: Mapping[str, np.ndarray]) -> float:
    return float(sum(np.vdot(a, a) for a in arrays.values()))


class RoundAggregator:
    """Accepted replies in, one at a time; the strategy's new global tensors out.

    ``keep_models``: keep every site's trained model (robust strategies, similarity); else
    only running sums, and each reply's tensors are released once folded in. ``sketch`` and
    ``sums`` may be shared from round to round (their buffers are reused).
    """

    def __init__(self, strategy, global_arrays: Mapping[str, np.ndarray], keep_models: bool,
                 sketch: CountSketch | None = None, sums: RunningSum | None = None,
                 extrapolation: Extrapolation | None = None):
        self.strategy = strategy
        self.extrapolation = extrapolation
        self.spread, self.weight = 0.0, 0  # sum_i w_i ||d_i||^2 and sum_i w_i over the accepted updates
        self.global_arrays = global_arrays
        self.keep_models = keep_models
        self.sketch = sketch or CountSketch()
        self.sum = sums or RunningSum()
        self.sum.reset()
        self.accepted: list[tuple[Message, Verdict]] = []
        self.models: dict[str, dict[str, np.ndarray]] = {}
        self.deltas: dict[str, dict[str, np.ndarray]] = {}
        self.sketches: dict[str, np.ndarray] = {}

    def add(self, msg: Message, verdict: Verdict, base: Mapping[str, np.ndarray]) -> None:
        """Fold in one accepted reply whose site trained from ``base``."""
        delta = verdict.delta
        assert delta is not None
        weight = int(msg.content[METRICS][SiteMetric.NUM_EXAMPLES])
        relative = delta  # the update relative to the global tensors, as the mean sees it
        if base is not self.global_arrays and (self.extrapolation is not None or not self.keep_models):
            relative = {n: base[n] - self.global_arrays[n] + d for n, d in delta.items()}
        if self.extrapolation is not None:
            self.spread += weight * squared_norm(relative)
            self.weight += weight
        if self.keep_models:
            self.models[verdict.site] = {n: base[n] + d for n, d in delta.items()}
            self.deltas[verdict.site] = delta
        else:
            self.sum.add(relative, weight)  # the sums hold models relative to the global tensors
            self.sketches[verdict.site] = self.sketch(verdict.delta)
            verdict.delta = None
            msg.content = RecordDict({k: v for k, v in msg.content.items() if k != ARRAYS})
        self.accepted.append((msg, verdict))

    def cosine(self) -> dict[str, dict[str, float]]:
        """Pairwise cosine of the accepted updates: exact where they were kept, else from sketches.

        Not past ``COSINE_MAX_SITES`` sites: the matrix grows with their square (a million numbers
        a round for 1,000 sites in the history, MLflow and a plot nobody can read)."""
        if not 2 <= len(self.accepted) <= COSINE_MAX_SITES:
            return {}
        return cosine_matrix(self.deltas) if self.keep_models else sketch_cosine(self.sketches)

    def aggregate(self, rnd: int) -> tuple[dict[str, np.ndarray] | None, dict[str, float]]:
        """The strategy's new global tensors (None if it produced none) and its aggregated metrics."""
        if not self.accepted:
            return None, {}
        if self.keep_models:
            replies = []
            for msg, verdict in self.accepted:  # strategies aggregate full tensors: what the site ended with
                msg.content[ARRAYS] = tensor_record(self.models[verdict.site])
                replies.append(msg)
        else:
            replies = [self._mean_reply()]
        new_arrays, metrics = self.strategy.aggregate_train(rnd, replies)
        if new_arrays is None:
            return None, dict(metrics or {})
        merged = dict(self.global_arrays)
        for name, value in new_arrays.items():
            merged[name] = np.asarray(value.numpy(), dtype=self.global_arrays[name].dtype)
        metrics = dict(metrics or {})
        if self.extrapolation is not None and self.weight > 0:
            mean = {name: merged[name] - self.global_arrays[name] for name in new_arrays}
            step = self.extrapolation.step(self.spread / self.weight, squared_norm(mean))
            for name, update in mean.items():
                merged[name] = (self.global_arrays[name] + step * update).astype(self.global_arrays[name].dtype)
            metrics["server_step"] = step
        return merged, metrics

    def _mean_reply(self) -> Message:
        """One reply that stands for all: the weighted mean model and the weighted mean metrics."""
        key = self.strategy.weighted_by_key
        contents = [RecordDict({METRICS: msg.content[METRICS]}) for msg, _ in self.accepted]
        metrics = dict(self.strategy.train_metrics_aggr_fn(contents, key))
        metrics[key] = int(self.sum.weight)
        content = RecordDict({ARRAYS: tensor_record(self.sum.mean(self.global_arrays)), METRICS: MetricRecord(metrics)})
        return Message(content, reply_to=self.accepted[0][0])

"""Private task heads: one small module per task, plus its loss, decoding and metrics.

Heads never leave a site. Each task type knows its loss, how to turn head outputs into
predictions, its metrics, and which metric says "better" (the primary metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedtl.shared import metrics as M
from fedtl.shared.config import TaskType
from fedtl.shared.data import TaskData
from fedtl.shared.probes import logistic_cv, ridge_gcv

PRIMARY_METRIC = {
    TaskType.classification: "macro_f1",
    TaskType.multilabel: "micro_f1",
    TaskType.regression: "r2",
}


class TaskHead(nn.Module):
    """Dropout + linear layer on the pooled encoder output (a linear probe when frozen)."""

    def __init__(self, hidden_size: int, out_features: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))


@dataclass
class HeadSpec:
    """Everything needed to rebuild and use a task's head. Stored beside its weights."""

    task: str
    type: TaskType
    hidden_size: int
    labels: list[str] | None = None
    target_mean: float = 0.0
    target_std: float = 1.0
    class_weights: list[float] | None = None  # classification: balanced, so the loss serves macro-F1

    @classmethod
    def for_data(cls, data: TaskData, hidden_size: int) -> HeadSpec:
        weights = None
        if data.task.type == TaskType.classification and data.labels:
            counts = np.bincount(np.asarray(data.train.targets, dtype=np.int64), minlength=len(data.labels))
            weights = (len(data.train) / (len(data.labels) * np.maximum(counts, 1))).tolist()
        return cls(data.task.name, data.task.type, hidden_size, data.labels, data.target_mean, data.target_std,
                   weights)

    @property
    def out_features(self) -> int:
        return 1 if self.type == TaskType.regression else len(self.labels or [])

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.type]

    def build(self) -> TaskHead:
        return TaskHead(self.hidden_size, self.out_features)

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "type": self.type.value,
            "hidden_size": self.hidden_size,
            "labels": self.labels,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "class_weights": self.class_weights,
        }

    @classmethod
    def from_json(cls, obj: dict) -> HeadSpec:
        return cls(obj["task"], TaskType(obj["type"]), int(obj["hidden_size"]), obj.get("labels"),
                   float(obj.get("target_mean", 0.0)), float(obj.get("target_std", 1.0)), obj.get("class_weights"))

    def compatible_with(self, other: HeadSpec) -> bool:
        return (self.type, self.hidden_size, self.labels) == (other.type, other.hidden_size, other.labels)

    # ---- learning
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        if self.type == TaskType.classification:
            return F.cross_entropy(outputs, targets.long(), weight=self.weight_tensor(outputs))
        if self.type == TaskType.multilabel:
            return F.binary_cross_entropy_with_logits(outputs, targets.float())
        return F.mse_loss(outputs.squeeze(-1), self.standardise(targets))

    def fit_converged(self, feats: torch.Tensor, targets: torch.Tensor, seed: int = 0,
                      select_by: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of this task's head fitted to convergence on frozen features: ridge by GCV
        for regression, else logistic regression with a cross-validated penalty (shared/probes.py),
        chosen by held-out log-loss (``"log_loss"``) or by the task's primary metric (``"metric"``).

        ``"auto"``: the metric for multi-label tasks, log-loss for classification. On held-out test
        splits of 17 site-tasks (benchmarks/probe_fits.py) choosing by micro-F1 lifted both
        multi-label tasks by 0.02-0.03 (log-loss picks penalties that keep probabilities under the
        0.5 threshold), and changed classification by -0.010 to +0.009, about 0 on the mean."""
        if self.type == TaskType.regression:
            weight, bias, _ = ridge_gcv(feats, self.standardise(targets))
        else:
            if select_by == "auto":
                select_by = "metric" if self.type == TaskType.multilabel else "log_loss"
            cost = self._metric_cost if select_by == "metric" else None
            weight, bias, _ = logistic_cv(feats, targets, multilabel=self.type == TaskType.multilabel, seed=seed,
                                          class_weights=self.weight_tensor(feats), classes=self.out_features,
                                          held_out_cost=cost)
        return weight, bias

    def _metric_cost(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """Minus the primary metric of these logits: a penalty chosen for the score the site is judged on."""
        return -self.metrics(self.predict(logits), targets.cpu().numpy())[self.primary_metric]

    def weight_tensor(self, like: torch.Tensor) -> torch.Tensor | None:
        if not self.class_weights:
            return None
        return torch.tensor(self.class_weights, dtype=like.dtype, device=like.device)

    def standardise(self, targets: torch.Tensor) -> torch.Tensor:
        """Regression targets on the scale the head predicts (training mean 0, sd 1)."""
        return (targets.float() - self.target_mean) / self.target_std

    def predict(self, outputs: torch.Tensor) -> np.ndarray:
        outputs = outputs.detach().float().cpu()
        if self.type == TaskType.classification:
            return outputs.argmax(-1).numpy()
        if self.type == TaskType.multilabel:
            return (outputs > 0).numpy().astype(np.float32)
        return (outputs.squeeze(-1) * self.target_std + self.target_mean).numpy()

    def metrics(self, predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        if self.type == TaskType.classification:
            return {
                "accuracy": M.accuracy(targets, predictions),
                "macro_f1": M.macro_f1(targets, predictions, self.out_features),
            }
        if self.type == TaskType.multilabel:
            micro, macro = M.multilabel_f1(targets, predictions)
            return {"micro_f1": micro, "macro_f1": macro}
        return M.regression_metrics(targets.astype(np.float64), predictions.astype(np.float64))

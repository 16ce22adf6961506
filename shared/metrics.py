"""Validation metrics per task type, in plain numpy (checked against scikit-learn in tests)."""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes present in either truth or prediction (scikit-learn's convention)."""
    classes = np.arange(num_classes)
    tp = np.array([np.sum((y_pred == c) & (y_true == c)) for c in classes], dtype=float)
    fp = np.array([np.sum((y_pred == c) & (y_true != c)) for c in classes], dtype=float)
    fn = np.array([np.sum((y_pred != c) & (y_true == c)) for c in classes], dtype=float)
    present = (tp + fp + fn) > 0
    return float(_f1(tp, fp, fn)[present].mean()) if present.any() else 0.0


def multilabel_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(micro-F1, macro-F1) for 0/1 indicator matrices; macro over labels present anywhere."""
    y_true, y_pred = y_true.astype(bool), y_pred.astype(bool)
    tp = (y_true & y_pred).sum(0).astype(float)
    fp = (~y_true & y_pred).sum(0).astype(float)
    fn = (y_true & ~y_pred).sum(0).astype(float)
    micro = float(_f1(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0])
    present = (tp + fp + fn) > 0
    macro = float(_f1(tp, fp, fn)[present].mean()) if present.any() else 0.0
    return micro, macro


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    err = y_pred - y_true
    ss_res = float((err**2).sum())
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
    }

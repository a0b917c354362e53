"""AUC, average precision and log loss in numpy, as scikit-learn computes them.

A target node scores the global model in a fresh process for every evaluate message;
importing ``sklearn.metrics`` costs it about 1 s on 2 busy cores for three formulas, and a
bootstrap (the fidelity report's lesion-contrast intervals) pays scikit-learn's input checks,
about 3 ms, on each of its thousand calls. ``tests/test_federation.py`` checks these against
scikit-learn, ties included.
"""

from __future__ import annotations

import numpy as np


def _thresholds(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest first."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tied block
    tp = np.cumsum(y)[last]
    return tp, (last + 1) - tp


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal over distinct thresholds, ties count half)."""
    y, s = np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64)
    tp, fp = _thresholds(y, s)
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return float(np.trapezoid(tpr, fpr))


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision (no interpolation)."""
    y, s = np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64)
    tp, fp = _thresholds(y, s)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``p`` (clip them away from 0 and 1 first)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

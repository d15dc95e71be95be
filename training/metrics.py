"""Classification metrics in plain numpy (no sklearn dependency in the training extra).

Average precision follows scikit-learn's definition, AP = sum_n (R_n - R_{n-1}) P_n over
distinct score thresholds, so figures can be compared with published results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.shape != scores.shape:
        raise ValueError(f"targets {y_true.shape} and scores {scores.shape} differ in shape")
    return (y_true > 0.5).astype(np.float64), scores


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class; NaN when it has no positive (AP is undefined there)."""
    y, s = _check(y_true, scores)
    y, s = y.ravel(), s.ravel()
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # One threshold per distinct score: ties are ranked together, as sklearn does.
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[last_of_run]
    precision = tps / (last_of_run + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    y, s = _check(y_true, scores)
    if y.ndim != 2:
        raise ValueError(f"expected (N, C) arrays, got {y.shape}")
    return np.array([average_precision(y[:, c], s[:, c]) for c in range(y.shape[1])])


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro mAP over the classes that have at least one positive."""
    ap = per_class_ap(y_true, scores)
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else float("nan")


def binary_ap(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class against all others pooled, e.g. "clapping" versus the rest."""
    return average_precision(np.asarray(is_positive).ravel(), np.asarray(scores).ravel())


@dataclass(frozen=True)
class PRF:
    precision: np.ndarray  # per class
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # positives per class
    micro_precision: float
    micro_recall: float
    micro_f1: float
    macro_precision: float
    macro_recall: float
    macro_f1: float


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def precision_recall_f1(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> PRF:
    """P/R/F1 with predictions `scores >= threshold`; 0 where undefined (as sklearn's
    zero_division=0). Macro averages run over classes with at least one positive."""
    y, s = _check(y_true, scores)
    if y.ndim != 2:
        raise ValueError(f"expected (N, C) arrays, got {y.shape}")
    pred = (s >= threshold).astype(np.float64)
    tp = (pred * y).sum(0)
    fp = (pred * (1 - y)).sum(0)
    fn = ((1 - pred) * y).sum(0)
    p = _safe_div(tp, tp + fp)
    r = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * p * r, p + r)
    mp = float(_safe_div(tp.sum(), tp.sum() + fp.sum()))
    mr = float(_safe_div(tp.sum(), tp.sum() + fn.sum()))
    mf = float(_safe_div(2 * mp * mr, mp + mr))
    support = y.sum(0)
    has = support > 0

    def macro(v: np.ndarray) -> float:
        return float(v[has].mean()) if has.any() else float("nan")

    return PRF(p, r, f1, support, mp, mr, mf, macro(p), macro(r), macro(f1))


def top1_accuracy(
    y_true: np.ndarray, scores: np.ndarray, rivals: np.ndarray | None = None
) -> float:
    """Share of clips whose highest-scoring class is their (single) label.

    `rivals`: (N, K) scores of the model's outputs that no clip here carries, which compete
    for the top all the same: recordings of a dog and a knock, scored by a 50-class model,
    are not right because the dog scored above the knock when rain scored above both.
    """
    y, s = _check(y_true, scores)
    if y.shape[0] == 0:
        return float("nan")
    right = np.argmax(s, axis=1) == np.argmax(y, axis=1)
    if rivals is not None and rivals.size:
        r = np.asarray(rivals, dtype=np.float64)
        if r.shape[0] != s.shape[0]:
            raise ValueError(f"rivals hold {r.shape[0]} rows for {s.shape[0]} clips")
        right &= np.max(s, axis=1) >= np.max(r, axis=1)
    return float(np.mean(right))


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic

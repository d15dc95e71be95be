"""XGBoost on the 36 handcrafted features, with feature importance and a top-15 retrain.

Boosters (xgboost's native `xgb.train` API, so scikit-learn is not needed):
- single-label data (ESC-50): ONE booster with `multi:softprob`, the natural multi-class
  set-up: its class probabilities sum to one, like the argmax decision used for scoring;
- multi-label data (FSD50K, own recordings with several labels): ONE BOOSTER PER LABEL with
  `binary:logistic`, each weighting its positives by `training.data.pos_weights` (the same
  clipped (N - pos) / pos as the networks' BCE), so every label is its own yes/no question,
  as the networks' sigmoid outputs are.
Early stopping watches the validation folds (never the test folds); the kept model is cut at
the best round.

Feature importance, both reported:
- gain: each feature's share of the total loss reduction of all splits on it ("total_gain",
  summed over the boosters, normalised to sum 1). xgboost's per-split average ("gain") was
  not used: it ranks a feature split once by luck above one that carries a label;
- permutation: the drop in validation mAP when one column is shuffled (mean of `repeats`
  shuffles). It measures what the model loses on held-out clips, so it decides which
  `top_k` (15) features the second, smaller model is retrained on (`rank_by`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb

from training.compare.handcrafted import FEATURE_NAMES
from training.data import pos_weights
from training.metrics import mean_average_precision

__all__ = [
    "XGBConfig",
    "XGBModel",
    "XGBReport",
    "gain_importance",
    "permutation_importance",
    "run_xgboost",
    "train_xgb",
]

log = logging.getLogger(__name__)


@dataclass
class XGBConfig:
    n_estimators: int = 500
    learning_rate: float = 0.05
    max_depth: int = 4
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    #: Stop when the validation loss has not improved for this many rounds (needs val folds).
    early_stopping: int = 50
    top_k: int = 15
    #: Which importance picks the retrain's features: "permutation" or "gain".
    rank_by: str = "permutation"
    permutation_repeats: int = 5
    pos_weight_clip: tuple[float, float] = (1.0, 10.0)
    n_jobs: int = 2
    seed: int = 0

    def params(self) -> dict[str, Any]:
        return {
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "tree_method": "hist",
            "nthread": self.n_jobs,
            "seed": self.seed,
            "verbosity": 0,
        }


@dataclass
class XGBModel:
    """Boosters plus the feature columns (of the 36) they were trained on."""

    boosters: list[xgb.Booster | None]
    mode: str  # "softmax" or "per_label"
    n_classes: int
    feature_idx: np.ndarray
    #: Per-label prior, used for a label with no training positive (no booster).
    priors: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def feature_names(self) -> list[str]:
        return [FEATURE_NAMES[i] for i in self.feature_idx]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, 36) features (all columns) -> (N, C) probabilities."""
        x = np.asarray(features, dtype=np.float32)[:, self.feature_idx]
        dm = xgb.DMatrix(x, feature_names=self.feature_names)
        if self.mode == "softmax":
            booster = self.boosters[0]
            assert booster is not None
            return np.asarray(booster.predict(dm), dtype=np.float64).reshape(-1, self.n_classes)
        out = np.empty((x.shape[0], self.n_classes), dtype=np.float64)
        for c, booster in enumerate(self.boosters):
            out[:, c] = self.priors[c] if booster is None else booster.predict(dm)
        return out

    def n_parameters(self) -> int:
        """Tree nodes (split thresholds and leaf values): the trees' counterpart of weights."""
        total = 0
        for booster in self.boosters:
            if booster is not None:
                total += sum(len(t.strip().splitlines()) for t in booster.get_dump())
        return total

    def n_trees(self) -> int:
        return sum(len(b.get_dump()) for b in self.boosters if b is not None)


def _fit_one(
    params: dict[str, Any],
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    names: list[str],
    cfg: XGBConfig,
) -> xgb.Booster:
    dtrain = xgb.DMatrix(x_tr, label=y_tr, feature_names=names)
    evals = []
    if x_val is not None and y_val is not None and len(x_val):
        evals = [(xgb.DMatrix(x_val, label=y_val, feature_names=names), "val")]
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=cfg.n_estimators,
        evals=evals,
        early_stopping_rounds=cfg.early_stopping if evals and cfg.early_stopping else None,
        verbose_eval=False,
    )
    best = getattr(booster, "best_iteration", None)
    if evals and cfg.early_stopping and best is not None:
        booster = booster[: best + 1]  # keep the best round, not the last one tried
    return booster


def train_xgb(
    features: np.ndarray,
    targets: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    multi_label: bool,
    cfg: XGBConfig,
    feature_idx: np.ndarray | None = None,
) -> XGBModel:
    feature_idx = np.arange(features.shape[1]) if feature_idx is None else np.asarray(feature_idx)
    names = [FEATURE_NAMES[i] for i in feature_idx]
    x = np.asarray(features, dtype=np.float32)[:, feature_idx]
    y = np.asarray(targets, dtype=np.float32)
    n_classes = y.shape[1]
    x_tr, y_tr = x[train_idx], y[train_idx]
    has_val = len(val_idx) > 0
    x_val = x[val_idx] if has_val else None
    y_val = y[val_idx] if has_val else None
    priors = y_tr.mean(0).astype(np.float64)
    if not multi_label:
        params = {**cfg.params(), "objective": "multi:softprob", "num_class": n_classes}
        params["eval_metric"] = "mlogloss"
        booster = _fit_one(
            params,
            x_tr,
            y_tr.argmax(1),
            x_val,
            None if y_val is None else y_val.argmax(1),
            names,
            cfg,
        )
        return XGBModel([booster], "softmax", n_classes, feature_idx, priors)
    weights = pos_weights(y_tr, clip=cfg.pos_weight_clip)
    boosters: list[xgb.Booster | None] = []
    for c in range(n_classes):
        if y_tr[:, c].sum() == 0:
            log.warning("label %d has no training positive; predicting its prior (0)", c)
            boosters.append(None)
            continue
        params = {
            **cfg.params(),
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "scale_pos_weight": float(weights[c]),
        }
        boosters.append(
            _fit_one(
                params,
                x_tr,
                y_tr[:, c],
                x_val,
                None if y_val is None else y_val[:, c],
                names,
                cfg,
            )
        )
    return XGBModel(boosters, "per_label", n_classes, feature_idx, priors)


def gain_importance(model: XGBModel) -> dict[str, float]:
    """Total split gain per feature, summed over the boosters, normalised to sum 1."""
    total = dict.fromkeys(model.feature_names, 0.0)
    for booster in model.boosters:
        if booster is None:
            continue
        for name, gain in booster.get_score(importance_type="total_gain").items():
            total[name] += float(gain)
    norm = sum(total.values())
    return {k: (v / norm if norm > 0 else 0.0) for k, v in total.items()}


def permutation_importance(
    model: XGBModel,
    features: np.ndarray,
    targets: np.ndarray,
    indices: np.ndarray,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Mean drop of mAP on `indices` when one of the model's columns is shuffled."""
    x = np.array(features[indices], dtype=np.float32)
    y = np.asarray(targets[indices])
    base = mean_average_precision(y, model.predict_proba(x))
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for col, name in zip(model.feature_idx, model.feature_names, strict=True):
        drops = []
        for _ in range(max(1, repeats)):
            shuffled = x.copy()
            shuffled[:, col] = x[rng.permutation(len(x)), col]
            drops.append(base - mean_average_precision(y, model.predict_proba(shuffled)))
        out[name] = float(np.mean(drops))
    return out


@dataclass
class XGBReport:
    full: XGBModel
    top: XGBModel
    full_train_s: float
    top_train_s: float
    gain: dict[str, float]
    permutation: dict[str, float]
    top_features: list[str]
    rank_by: str

    def importance_table(self) -> list[dict[str, Any]]:
        """One row per feature: gain, permutation, and whether the retrain kept it."""
        keep = set(self.top_features)
        rows = [
            {
                "feature": name,
                "gain": self.gain.get(name, 0.0),
                "permutation": self.permutation.get(name),
                "in_top": name in keep,
            }
            for name in FEATURE_NAMES
        ]
        key = "permutation" if self.rank_by == "permutation" else "gain"
        return sorted(rows, key=lambda r: -(r[key] if r[key] is not None else -np.inf))


def run_xgboost(
    features: np.ndarray,
    targets: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    multi_label: bool,
    cfg: XGBConfig | None = None,
) -> XGBReport:
    """Train on all 36 features, rank them, retrain on the `top_k` best."""
    cfg = cfg or XGBConfig()
    if cfg.rank_by not in ("permutation", "gain"):
        raise ValueError(f"rank_by must be 'permutation' or 'gain', got {cfg.rank_by!r}")
    if not 1 <= cfg.top_k <= features.shape[1]:
        raise ValueError(f"top_k must lie in 1..{features.shape[1]}, got {cfg.top_k}")
    t0 = time.perf_counter()
    full = train_xgb(features, targets, train_idx, val_idx, multi_label, cfg)
    full_s = time.perf_counter() - t0
    gain = gain_importance(full)
    rank_by = cfg.rank_by
    if len(val_idx):
        perm = permutation_importance(
            full, features, targets, val_idx, cfg.permutation_repeats, cfg.seed
        )
    else:
        log.warning("no validation folds: permutation importance skipped, ranking by gain")
        perm, rank_by = {}, "gain"
    score = perm if rank_by == "permutation" else gain
    # Ties (e.g. features the model never used) fall back to gain, then to column order.
    order = sorted(
        range(len(FEATURE_NAMES)),
        key=lambda i: (-score.get(FEATURE_NAMES[i], 0.0), -gain.get(FEATURE_NAMES[i], 0.0), i),
    )
    top_idx = np.array(sorted(order[: cfg.top_k]))
    t0 = time.perf_counter()
    top = train_xgb(features, targets, train_idx, val_idx, multi_label, cfg, top_idx)
    top_s = time.perf_counter() - t0
    top_names = [FEATURE_NAMES[i] for i in order[: cfg.top_k]]
    log.info("xgboost: top %d features by %s: %s", cfg.top_k, rank_by, ", ".join(top_names))
    return XGBReport(full, top, full_s, top_s, gain, perm, top_names, rank_by)

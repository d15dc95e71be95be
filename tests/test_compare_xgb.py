"""XGBoost baseline: per-label boosters for multi-label data, importances, the top-k retrain."""

from __future__ import annotations

import numpy as np
import pytest

from training.compare.handcrafted import FEATURE_NAMES
from training.compare.xgb import XGBConfig, run_xgboost, train_xgb
from training.metrics import mean_average_precision

FAST = XGBConfig(n_estimators=60, learning_rate=0.2, early_stopping=15, n_jobs=1)


def _multi_label(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 36)).astype(np.float32)
    y = np.zeros((n, 3), dtype=np.float32)
    y[:, 0] = x[:, 0] > 0
    y[:, 1] = (x[:, 5] + x[:, 7]) > 0.5
    y[:, 2] = x[:, 20] > 1.0  # rarer label
    idx = rng.permutation(n)
    return x, y, idx[:180], idx[180:240], idx[240:]


def test_multi_label_gets_one_booster_per_label_and_learns() -> None:
    x, y, tr, va, te = _multi_label()
    model = train_xgb(x, y, tr, va, multi_label=True, cfg=FAST)
    assert model.mode == "per_label" and len(model.boosters) == 3
    probs = model.predict_proba(x[te])
    assert probs.shape == (len(te), 3)
    assert mean_average_precision(y[te], probs) > 0.85
    assert model.n_parameters() > model.n_trees() > 0


def test_importances_find_the_informative_columns_and_retrain_on_them() -> None:
    x, y, tr, va, te = _multi_label()
    report = run_xgboost(x, y, tr, va, multi_label=True, cfg=FAST)
    informative = {FEATURE_NAMES[i] for i in (0, 5, 7, 20)}
    by_perm = sorted(report.permutation, key=lambda k: -report.permutation[k])
    by_gain = sorted(report.gain, key=lambda k: -report.gain[k])
    assert set(by_perm[:4]) == informative
    assert set(by_gain[:4]) == informative
    assert sum(report.gain.values()) == pytest.approx(1.0)
    assert len(report.top_features) == 15 and informative <= set(report.top_features)
    assert len(report.top.feature_idx) == 15
    assert set(report.top.feature_names) == set(report.top_features)
    assert mean_average_precision(y[te], report.top.predict_proba(x[te])) > 0.85
    table = report.importance_table()
    assert len(table) == 36 and sum(r["in_top"] for r in table) == 15


def test_single_label_uses_one_softmax_booster() -> None:
    rng = np.random.default_rng(1)
    n = 240
    x = rng.normal(size=(n, 36)).astype(np.float32)
    cls = np.digitize(x[:, 3], [-0.5, 0.5])  # three classes from one feature
    y = np.eye(3, dtype=np.float32)[cls]
    model = train_xgb(x, y, np.arange(160), np.arange(160, 200), multi_label=False, cfg=FAST)
    assert model.mode == "softmax" and len(model.boosters) == 1
    probs = model.predict_proba(x[200:])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert np.mean(probs.argmax(1) == cls[200:]) > 0.8


def test_label_without_training_positive_predicts_zero() -> None:
    x, y, tr, va, _ = _multi_label()
    y = np.concatenate([y, np.zeros((len(y), 1), dtype=np.float32)], axis=1)
    model = train_xgb(x, y, tr, va, multi_label=True, cfg=FAST)
    assert model.boosters[3] is None
    assert np.all(model.predict_proba(x[:5])[:, 3] == 0.0)


def test_bad_settings_are_refused() -> None:
    x, y, tr, va, _ = _multi_label(60)
    with pytest.raises(ValueError, match="rank_by"):
        run_xgboost(x, y, tr, va, True, XGBConfig(rank_by="magic"))
    with pytest.raises(ValueError, match="top_k"):
        run_xgboost(x, y, tr, va, True, XGBConfig(top_k=40))

"""Metrics against values worked out by hand on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    average_precision,
    binary_ap,
    mean_average_precision,
    per_class_ap,
    precision_recall_f1,
    sigmoid,
    top1_accuracy,
)


def test_ap_hand_computed() -> None:
    # Ranked: P N P N -> thresholds give (R, P) = (.5, 1), (.5, .5), (1, 2/3), (1, .5)
    # AP = .5 * 1 + 0 + .5 * 2/3 + 0
    ap = average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_ap_ties_are_one_threshold() -> None:
    # Scores .5 .5 tie: first threshold takes both (tp 1 of 2 predicted), P=.5 R=.5;
    # then P=2/3 R=1. AP = .5*.5 + .5*2/3 (sklearn gives the same).
    ap = average_precision(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.2]))
    assert ap == pytest.approx(0.25 + 1 / 3)


def test_ap_perfect_and_no_positive() -> None:
    assert average_precision(np.array([0, 1, 1]), np.array([0.1, 0.8, 0.9])) == 1.0
    assert math.isnan(average_precision(np.zeros(3), np.array([0.1, 0.2, 0.3])))


def test_map_skips_classes_without_positives() -> None:
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.3, 0.1], [0.8, 0.6, 0.2], [0.1, 0.7, 0.9]])
    ap = per_class_ap(y, s)
    # class 0: ranked P P -> 1.0; class 1: scores .7(N) .6(N) .3(P) .1 -> AP = 1/3
    assert ap[0] == pytest.approx(1.0)
    assert ap[1] == pytest.approx(1 / 3)
    assert math.isnan(ap[2])
    assert mean_average_precision(y, s) == pytest.approx((1.0 + 1 / 3) / 2)


def test_precision_recall_f1_hand_computed() -> None:
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    s = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.8], [0.1, 0.6]])
    r = precision_recall_f1(y, s, threshold=0.5)
    # class 0: tp 1, fp 1, fn 1; class 1: tp 2, fp 1, fn 0
    np.testing.assert_allclose(r.precision, [0.5, 2 / 3])
    np.testing.assert_allclose(r.recall, [0.5, 1.0])
    np.testing.assert_allclose(r.f1, [0.5, 0.8])
    np.testing.assert_allclose(r.support, [2, 2])
    assert r.micro_precision == pytest.approx(3 / 5)
    assert r.micro_recall == pytest.approx(3 / 4)
    assert r.micro_f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert r.macro_precision == pytest.approx((0.5 + 2 / 3) / 2)
    assert r.macro_recall == pytest.approx(0.75)
    assert r.macro_f1 == pytest.approx(0.65)


def test_prf_zero_division_is_zero() -> None:
    r = precision_recall_f1(np.array([[1], [0]]), np.array([[0.1], [0.2]]), threshold=0.5)
    assert r.precision[0] == 0.0 and r.recall[0] == 0.0 and r.f1[0] == 0.0


def test_top1_accuracy() -> None:
    y = np.eye(3)[[0, 1, 2, 2]]
    s = np.array([[3, 1, 0], [0, 2, 5], [0, 0, 1], [1, 0, 0.5]])
    assert top1_accuracy(y, s) == pytest.approx(0.5)


def test_top1_accuracy_counts_the_models_other_outputs() -> None:
    """A 50-class model scoring recordings of two labels: rain above both is wrong."""
    y = np.eye(2)[[0, 0, 1]]
    s = np.array([[2.0, 1.0], [2.0, 1.0], [0.0, 1.0]])
    rivals = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    assert top1_accuracy(y, s) == pytest.approx(1.0)
    assert top1_accuracy(y, s, rivals) == pytest.approx(2 / 3)
    assert top1_accuracy(y, s, np.zeros((3, 0))) == pytest.approx(1.0)


def test_binary_ap_clap_vs_rest() -> None:
    is_clap = np.array([True, False, True, False, False])
    score = np.array([0.95, 0.9, 0.4, 0.3, 0.5])
    # Ranked: P(.95) N(.9) N(.5) P(.4) N(.3): AP = .5*1 + .5*(2/4)
    assert binary_ap(is_clap, score) == pytest.approx(0.75)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        per_class_ap(np.zeros((3, 2)), np.zeros((3, 3)))


def test_sigmoid_is_stable() -> None:
    out = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])

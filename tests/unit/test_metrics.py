"""declora.learn.metrics against values worked out by hand, including the degenerate cases a young model hits."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from declora.learn import metrics as m


def test_classification_metrics_by_hand():
    # labels 1 1 0 0 1, predictions 1 0 0 1 1: TP=2, FN=1, TN=1, FP=1.
    labels, pred = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    assert m.accuracy(pred, labels) == pytest.approx(3 / 5)
    assert m.f1(pred, labels) == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    assert m.f1_macro(pred, labels) == pytest.approx((2 / 3 + 1 / 2) / 2)  # class 0: precision 1/2, recall 1/2
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert m.mcc(pred, labels) == pytest.approx(1 / 6)


def test_three_classes_have_no_binary_f1():
    labels, pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2])
    out = m.classification_metrics(pred, labels, num_labels=3)
    assert "f1" not in out and out["accuracy"] == pytest.approx(3 / 4)
    # class 0: F1 1; class 1: 0 (never predicted); class 2: precision 2/3, recall 1 -> 4/5
    assert out["f1_macro"] == pytest.approx((1 + 0 + 0.8) / 3)
    assert set(m.classification_metrics(pred % 2, labels % 2, num_labels=2)) == {"accuracy", "f1", "f1_macro", "mcc"}


def test_regression_metrics_by_hand():
    labels, pred = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])
    assert m.mse(pred, labels) == pytest.approx(2 / 3)
    assert m.pearson(pred, labels) == pytest.approx(0.5)  # cov 0.5 / (1 * 1)
    assert m.spearman(pred, labels) == pytest.approx(0.5)  # ranks are the values
    assert m.spearman(np.array([1.0, 10.0, 100.0]), labels) == pytest.approx(1.0)


def test_degenerate_cases_give_a_number_or_none_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be one line per peer per round in the logs
        constant, labels = np.ones(4), np.array([0, 1, 0, 1])
        assert m.mcc(constant.astype(int), labels) == 0.0  # one class predicted everywhere: chance
        assert m.mcc(labels, np.zeros(4, dtype=int)) == 0.0  # one class in the labels
        assert m.f1(np.zeros(4, dtype=int), np.zeros(4, dtype=int)) == 0.0  # no positive anywhere
        assert m.pearson(constant, labels.astype(float)) is None  # zero variance: undefined
        assert m.spearman(constant, labels.astype(float)) is None
        assert m.pearson(np.array([1.0]), np.array([2.0])) is None  # one point
        out = m.regression_metrics(constant, labels.astype(float))
        assert out["pearson"] is None and math.isfinite(out["mse"])


def test_the_table_names_every_metric_once_with_its_record_key():
    assert {"accuracy", "f1", "f1-macro", "mcc", "pearson", "spearman", "mse", "loss", "mc-accuracy"} <= set(m.METRICS)
    assert m.record_key("f1-macro") == "eval_f1_macro" and m.record_key("mc-accuracy") == "eval_mc_accuracy"
    assert not m.METRICS["mse"].higher_is_better and m.METRICS["mcc"].higher_is_better
    assert m.METRICS["pearson"].tasks == ("regression",)

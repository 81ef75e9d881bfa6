"""GLUE metrics on small examples computed by hand."""

import math

import pytest

from sweep.metrics import accuracy, compute_metrics, f1, mcc

# labels 1 1 1 0 0 0, predictions 1 1 0 1 0 0: TP 2, FN 1, FP 1, TN 2
Y = [1, 1, 1, 0, 0, 0]
P = [1, 1, 0, 1, 0, 0]


def test_accuracy_by_hand():
    assert accuracy(P, Y) == pytest.approx(4 / 6)


def test_f1_is_the_positive_class_f1():
    # precision 2/3, recall 2/3 → F1 2/3; the negative class would give the same here, so also
    # check an asymmetric case: labels 1 1 0 0, predictions 1 1 1 1 → P 0.5, R 1 → F1 2/3, and
    # the negative class's F1 would be 0
    assert f1(P, Y) == pytest.approx(2 / 3)
    assert f1([1, 1, 1, 1], [1, 1, 0, 0]) == pytest.approx(2 / 3)
    assert f1([0, 0, 0, 0], [1, 1, 0, 0]) == 0.0


def test_mcc_by_hand():
    # (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 − 1) / √(3·3·3·3) = 1/3
    assert mcc(P, Y) == pytest.approx(1 / 3)
    assert mcc([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


@pytest.mark.parametrize("preds", [[1, 1, 1, 1], [0, 0, 0, 0]])
def test_mcc_is_zero_for_constant_predictions(preds):
    value = mcc(preds, [1, 0, 1, 1])
    assert value == 0.0 and not math.isnan(value)


def test_compute_metrics_names():
    assert compute_metrics(["accuracy", "f1"], P, Y) == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx(2 / 3)}

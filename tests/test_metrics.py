"""GLUE metrics (scikit-learn, scipy) against small examples computed by hand."""

import math

import pytest

from sweep.metrics import accuracy, compute_metrics, f1, mcc, pearson, spearman

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


def test_pearson_and_spearman_by_hand():
    # deviations from the mean 2.5: (-1.5, -0.5, 0.5, 1.5) and (-1.5, 0.5, -0.5, 1.5): Σxy = 4, Σx² = Σy² = 5
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 5)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 5)  # ranks equal the values here
    # a monotonic but not linear relation: ranks agree perfectly, values do not
    # (deviations (-25.5, -24.5, -23.5, 73.5) and (-1.5, -0.5, 0.5, 1.5): Σxy = 149, Σx² = 7205, Σy² = 5)
    assert spearman([1, 2, 3, 100], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 100], [1, 2, 3, 4]) == pytest.approx(149 / math.sqrt(7205 * 5))


def test_correlation_of_a_constant_prediction_is_zero():
    # the mean baseline of STS-B predicts one value: no correlation, not NaN
    for fn in (pearson, spearman):
        assert fn([2.7, 2.7, 2.7], [1.0, 4.0, 2.5]) == 0.0

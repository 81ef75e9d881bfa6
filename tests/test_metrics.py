"""Metrics (scikit-learn, scipy) against small examples computed by hand, and the table of their directions,
units and default tolerances."""

import math

import pytest

from sweep.cli import compose
from sweep.errors import UserError
from sweep.metrics import METRICS, POINTS, accuracy, compute_metrics, f1, mcc, metric_of, mse, pearson, spearman

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


def test_mse_by_hand():
    # errors 0, 1, 2 (and their signs do not matter): (0 + 1 + 4) / 3
    assert mse([1.0, 2.0, 3.0], [1.0, 3.0, 5.0]) == pytest.approx(5 / 3)
    assert mse([1.0, 4.0, 7.0], [1.0, 3.0, 5.0]) == pytest.approx(5 / 3)
    assert mse([2.5, 2.5], [2.5, 2.5]) == 0.0
    assert compute_metrics(["pearson", "mse"], [1, 2, 3, 4], [1, 3, 2, 4]) == {
        "pearson": pytest.approx(4 / 5),
        "mse": pytest.approx((0 + 1 + 1 + 0) / 4),
    }


# name -> (direction, scale, unit, default tolerance, noise floor applies, computed for)
REGISTRY = {
    "accuracy": ("maximise", 100.0, "points", 1.0, True, "single_label_classification"),
    "f1": ("maximise", 100.0, "points", 1.0, True, "single_label_classification"),
    "mcc": ("maximise", 100.0, "points", 1.0, True, "single_label_classification"),
    "pearson": ("maximise", 100.0, "points", 1.0, True, "regression"),
    "spearman": ("maximise", 100.0, "points", 1.0, True, "regression"),
    "mse": ("minimise", 1.0, "squared label units", 0.04, False, "regression"),
    "loss": ("minimise", 1.0, "nats", 0.01, False, "causal_lm"),
    "perplexity": ("minimise", 1.0, "perplexity", 0.1, False, "causal_lm"),
    "token_accuracy": ("maximise", 100.0, "points", 1.0, False, "causal_lm"),
}


@pytest.mark.parametrize("name, expected", REGISTRY.items(), ids=list(REGISTRY))
def test_every_metric_has_one_direction_unit_and_tolerance(name, expected):
    m = METRICS[name]
    assert (m.direction.value, m.scale, m.unit, m.tolerance, m.per_example, m.problem_type) == expected
    assert m.compute is not None


@pytest.mark.parametrize(
    "name, value, score",
    [("accuracy", 0.8235, 82.35), ("mcc", -0.25, -25.0), ("mse", 0.512, -0.512), ("loss", 2.25, -2.25)],
)
def test_score_is_higher_is_better_in_the_unit_and_real_undoes_the_sign(name, value, score):
    m = METRICS[name]
    assert m.score(value) == pytest.approx(score)
    assert m.real(m.score(value)) == pytest.approx(m.scale * value)  # an MSE shown as itself, not negated
    assert m.value(m.score(value)) == pytest.approx(value)
    assert metric_of(None) == POINTS and metric_of(None).score(0.8) == pytest.approx(80.0)


def test_an_mse_objective_gets_its_default_tolerance_and_a_metric_of_another_problem_type_is_refused():
    stsb = ["task=stsb", "task.metrics=[pearson,spearman,mse]", "task.objective=mse"]
    assert compose(stsb)[0].sweep.tolerance == 0.04  # sweep.tolerance: null, the objective's default
    assert compose([*stsb, "sweep.tolerance=0.1"])[0].sweep.tolerance == 0.1
    assert compose([])[0].sweep.tolerance == 1.0  # MRPC accuracy: 1 point, as before
    with pytest.raises(
        UserError, match=r"task.metrics='loss' is invalid for task.problem_type=regression: valid values are pearson, "
    ):
        compose(["task=stsb", "task.metrics=[pearson,loss]"])
    with pytest.raises(UserError, match=r"task.metrics='mse' is invalid for task.problem_type=single_label"):
        compose(["task.metrics=[accuracy,mse]"])

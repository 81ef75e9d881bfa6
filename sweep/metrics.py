"""GLUE metrics from predictions and gold labels (Wang et al. 2019, GLUE, §3 and Table 1), computed by
the reference implementations: scikit-learn for classification, scipy for correlations.

Classification metrics take 1-D integer arrays of equal length N (class ids); the correlations take
1-D float arrays (STS-B scores, 0–5). Every metric returns a float in metric units (accuracy and F1 in
[0, 1], MCC and the correlations in [-1, 1]) and is maximised.
"""

from __future__ import annotations

import warnings
from typing import Dict, Sequence

import numpy as np


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of the N predictions equal to the labels (``sklearn.metrics.accuracy_score``)."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC: 2·TP / (2·TP + FP + FN);
    0.0 when there is no positive prediction nor label (``sklearn.metrics.f1_score``)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0.0))


def mcc(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation coefficient (Matthews 1975), as GLUE reports for CoLA:
    (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0.0 when a factor of the denominator is 0
    (e.g. constant predictions) (``sklearn.metrics.matthews_corrcoef``)."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def _correlation(fn, preds: Sequence[float], labels: Sequence[float]) -> float:
    # a constant prediction (the mean baseline, a collapsed regressor) has no correlation: scipy
    # returns NaN with a warning; 0.0 is the value that compares sensibly, as MCC does for constants
    p, y = np.asarray(preds, dtype=float), np.asarray(labels, dtype=float)
    if np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(p, y).statistic)


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation of predicted and gold scores, as GLUE reports for STS-B (``scipy.stats.pearsonr``);
    0.0 when either is constant."""
    from scipy.stats import pearsonr

    return _correlation(pearsonr, preds, labels)


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation of predicted and gold scores, as GLUE reports for STS-B
    (``scipy.stats.spearmanr``); 0.0 when either is constant."""
    from scipy.stats import spearmanr

    return _correlation(spearmanr, preds, labels)


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}
#: metrics of regression tasks (predicted scores, not class ids)
REGRESSION_METRICS = ("pearson", "spearman")


def compute_metrics(names: Sequence[str], preds: Sequence, labels: Sequence) -> Dict[str, float]:
    """The named GLUE metrics of one set of predictions, e.g. ``{"accuracy": 0.8, "f1": 0.86}``."""
    return {name: METRICS[name](preds, labels) for name in names}

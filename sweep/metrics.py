"""GLUE metrics from predicted and true labels (Wang et al. 2019, GLUE, §3 and Table 1).

All functions take 1-D integer arrays of equal length N and return a float in metric units
(accuracy and F1 in [0, 1], MCC in [-1, 1]).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of the N predictions equal to the labels."""
    p, y = np.asarray(preds), np.asarray(labels)
    return float((p == y).mean())


def f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC: 2·TP / (2·TP + FP + FN);
    0.0 when there is no positive prediction nor label."""
    p, y = np.asarray(preds), np.asarray(labels)
    tp = int(((p == 1) & (y == 1)).sum())
    denom = int((p == 1).sum() + (y == 1).sum())
    return 2 * tp / denom if denom else 0.0


def mcc(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation coefficient (Matthews 1975) of binary predictions, as GLUE reports for
    CoLA: (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); defined as 0.0 when a factor of the
    denominator is 0 (e.g. constant predictions), as scikit-learn does."""
    p, y = np.asarray(preds), np.asarray(labels)
    tp = int(((p == 1) & (y == 1)).sum())
    tn = int(((p == 0) & (y == 0)).sum())
    fp = int(((p == 1) & (y == 0)).sum())
    fn = int(((p == 0) & (y == 1)).sum())
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / math.sqrt(denom) if denom else 0.0


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc}


def compute_metrics(names: Sequence[str], preds: Sequence[int], labels: Sequence[int]) -> Dict[str, float]:
    """The named GLUE metrics of one set of predictions, e.g. ``{"accuracy": 0.8, "f1": 0.86}``."""
    return {name: METRICS[name](preds, labels) for name in names}

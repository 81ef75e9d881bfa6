"""Metrics from predictions and gold labels, and the one table (``METRICS``) that says how the sweep reads
each of them: its direction (maximised or minimised), its display unit and scale, its documented default
``sweep.tolerance`` and whether ``sweep.noise_floor`` applies to it.

GLUE metrics (Wang et al. 2019, GLUE, §3 and Table 1) are computed by the reference implementations:
scikit-learn for classification, scipy for correlations; the regression error ``mse`` by scikit-learn.
Classification metrics take 1-D integer arrays of equal length N (class ids); the regression metrics take
1-D float arrays (STS-B scores, 0–5). Every metric returns a float in metric units (accuracy and F1 in
[0, 1], MCC and the correlations in [-1, 1], MSE in squared label units, ≥ 0).

How the decisions compare values (``Metric.score``): in the objective's display unit (``Metric.unit``:
points, 100 × metric, for the GLUE metrics; the metric itself for ``mse`` and a loss), signed so that
higher is better (a minimised objective is negated). That is the one conversion: ``sweep/stats.py`` and
``sweep/decide.py`` compare scores and never ask which way an objective goes; sentences, reports and plots
turn scores back into real values (``Metric.real``) and name the unit and the direction.

The causal-LM metrics (``loss``, ``perplexity``, ``token_accuracy``) are computed over the completion tokens
of the whole validation split (token-weighted, not a mean of per-example or per-batch means) from per-example
sums that ``token_scores`` takes from the logits: ``preds`` of shape (N, 2) or (N, 3) (``sweep.trial.evaluate``
adds the scored tokens), each example's summed negative log-likelihood (nats) and its correctly predicted
tokens, and ``labels`` of shape (N,), each example's count of scored (completion) tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from sweep.config import Choice


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


def mse(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Mean squared error of predicted and gold scores, (1/N)·Σ(pred − label)², in squared label units
    (``sklearn.metrics.mean_squared_error``); the loss an STS-B regressor is trained on, minimised."""
    from sklearn.metrics import mean_squared_error

    return float(mean_squared_error(labels, preds))


def token_scores(logits, labels):
    """Per-example sums of next-token prediction over the labelled tokens, as transformers' causal-LM loss
    counts them: position t predicts ``labels[t + 1]``; a label of −100 is not scored.

    Args:
        logits: tensor (batch, length, vocab). labels: tensor (batch, length), token ids or −100.

    Returns:
        (nll, correct, tokens): float64 tensors of shape (batch,): summed −log p(label) in nats (log-softmax
        in float32 or wider), count of labels that are the argmax, count of scored labels.
    """
    import torch

    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    scored = labels != -100
    target = labels.clamp(min=0).unsqueeze(-1)
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, target).squeeze(-1)
    correct = (logits.argmax(-1) == labels) & scored
    return (
        (nll * scored).sum(-1).double(),
        correct.sum(-1).double(),
        scored.sum(-1).double(),
    )


def loss(preds: Sequence, labels: Sequence[float]) -> float:
    """Validation loss per completion token, nats: Σ NLL / Σ tokens over the split (``preds[:, 0]`` summed
    NLL per example, ``labels`` its scored tokens; see ``token_scores``)."""
    return float(np.asarray(preds, dtype=float)[:, 0].sum() / np.asarray(labels, dtype=float).sum())


def perplexity(preds: Sequence, labels: Sequence[float]) -> float:
    """exp(``loss``): the perplexity of the completion tokens."""
    return float(np.exp(loss(preds, labels)))


def token_accuracy(preds: Sequence, labels: Sequence[float]) -> float:
    """Fraction of completion tokens whose next-token argmax is right: Σ correct / Σ tokens (``preds[:, 1]``)."""
    return float(np.asarray(preds, dtype=float)[:, 1].sum() / np.asarray(labels, dtype=float).sum())


class Direction(Choice):
    """Which way an objective improves."""

    MAXIMISE = "maximise"
    MINIMISE = "minimise"


@dataclass(frozen=True)
class Metric:
    """One metric as the whole sweep reads it (the decisions, their sentences, the reports, the plots).

    Attributes:
        name: its key in ``task.metrics`` and ``task.objective``.
        label: as written in sentences and labels (``accuracy``, ``F1``, ``MSE``).
        direction: ``maximise`` or ``minimise``.
        scale: display units per metric unit: 100 for points (100 × accuracy), 1 for the metric itself.
        unit: the display unit, plural (``points``, ``squared label units``, ``nats``).
        tolerance: the documented default ``sweep.tolerance`` in ``unit`` (what ``sweep.tolerance: null``
            reads as); ``METRICS`` says why each value.
        per_example: whether ``sweep.noise_floor`` applies: the metric moves in steps of about one
            validation example, ``scale``/n_eval (an accuracy: 100/n_eval points; F1 and MCC move by at
            least about as much per example, and the correlations take the same share by convention).
            A continuous metric of its own unit (``mse``, a loss) has no such step: no floor.
        decimals: decimals its display values are written with (about a tenth of ``tolerance``).
        problem_type: the ``task.problem_type`` whose predictions it is computed from; None: declared only.
        compute: ``compute(preds, labels) -> float`` in metric units; None: declared only (no task may
            measure it).
    """

    name: str
    label: str
    direction: Direction
    scale: float
    unit: str
    tolerance: float
    per_example: bool
    decimals: int = 2
    problem_type: Optional[str] = None
    compute: Optional[Callable[[Sequence, Sequence], float]] = None

    @property
    def sign(self) -> int:
        """+1 for a maximised metric, −1 for a minimised one."""
        return 1 if self.direction == Direction.MAXIMISE else -1

    @property
    def better(self) -> str:
        """``higher is better`` or ``lower is better``."""
        return "higher is better" if self.sign > 0 else "lower is better"

    def score(self, value: float) -> float:
        """A value in metric units as the decisions compare it: sign · scale · value, in ``unit``, higher is
        better (accuracy 0.8235 -> 82.35 points; MSE 0.512 -> −0.512)."""
        return self.sign * self.scale * value

    def real(self, score: float) -> float:
        """A score (or a difference of scores) back in ``unit`` with its real sign (−0.512 -> MSE 0.512)."""
        return self.sign * score

    def value(self, score: float) -> float:
        """A score back in metric units (82.35 points -> 0.8235; −0.512 -> 0.512)."""
        return self.sign * score / self.scale

    def fmt(self, x: float, signed: bool = False) -> str:
        """``x`` (in ``unit``) written with ``decimals`` decimals, with its sign when ``signed``."""
        return f"{x:+.{self.decimals}f}" if signed else f"{x:.{self.decimals}f}"


_C, _R, _L = "single_label_classification", "regression", "causal_lm"
_MAX, _MIN = Direction.MAXIMISE, Direction.MINIMISE

#: every metric a task may name.
#: Default tolerances: 1 point for the GLUE metrics (the calibrated default, docs/validation.md); 0.04 for
#: MSE, about what 1 point of Pearson r is worth on STS-B (for calibrated predictions MSE ≈ Var(y)(1 − r²),
#: dMSE/dr = −2r·Var(y) ≈ −2 · 0.87 · 2.25 ≈ −3.9 at the r ≈ 0.87 LoRA reaches, Var(y) = 2.25 on the
#: validation split); 0.01 nats for a loss per completion token, a factor e^0.01 ≈ 1.01 on perplexity:
#: a 1% perplexity change, about the last digit papers report perplexity with (e.g. 12.3), and of the
#: order of one point of accuracy; 0.1 for perplexity (1% at a perplexity of 10; its tolerance depends
#: on the level, so prefer ``loss`` as the objective).
METRICS: Dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "accuracy", _MAX, 100.0, "points", 1.0, True, 2, _C, accuracy),
        Metric("f1", "F1", _MAX, 100.0, "points", 1.0, True, 2, _C, f1),
        Metric("mcc", "MCC", _MAX, 100.0, "points", 1.0, True, 2, _C, mcc),
        Metric("pearson", "Pearson r", _MAX, 100.0, "points", 1.0, True, 2, _R, pearson),
        Metric("spearman", "Spearman ρ", _MAX, 100.0, "points", 1.0, True, 2, _R, spearman),
        Metric("mse", "MSE", _MIN, 1.0, "squared label units", 0.04, False, 3, _R, mse),
        Metric("loss", "loss", _MIN, 1.0, "nats", 0.01, False, 4, _L, loss),
        Metric("perplexity", "perplexity", _MIN, 1.0, "perplexity", 0.1, False, 3, _L, perplexity),
        Metric("token_accuracy", "token accuracy", _MAX, 100.0, "points", 1.0, False, 2, _L, token_accuracy),
    )
}
#: how the decisions read an objective a record does not name (a crashed trial's): a maximised metric in
#: points, as every objective was before minimised ones existed
POINTS = Metric("objective", "objective", _MAX, 100.0, "points", 1.0, True)


def metric_of(name: Optional[str]) -> Metric:
    """The ``Metric`` named ``name``; ``POINTS`` for None or a name this version does not know."""
    return METRICS.get(name, POINTS) if name is not None else POINTS


def computed(problem_type: str) -> list:
    """The names of the metrics a task of ``problem_type`` can measure, in ``METRICS`` order."""
    return [m.name for m in METRICS.values() if m.problem_type == problem_type and m.compute is not None]


#: metrics of regression tasks (predicted scores, not class ids)
REGRESSION_METRICS = tuple(computed(_R))


def compute_metrics(names: Sequence[str], preds: Sequence, labels: Sequence) -> Dict[str, float]:
    """The named metrics of one set of predictions, e.g. ``{"accuracy": 0.8, "f1": 0.86}``."""
    return {name: METRICS[name].compute(preds, labels) for name in names}

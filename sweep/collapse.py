"""Is a trial collapsed? A trial whose validation predictions are one constant answer has not learnt the
task: every example gets the same class (classification) or the same score (regression). Fine-tuning on
small data sets ends there in a share of runs, at the majority class's accuracy (Mosbach et al., ICLR 2021,
"On the stability of fine-tuning BERT"; MRPC at ``train.lr=8e-3`` in issue #22: every seed at 68.38).

Such a trial is a measurement that its configuration is unstable at this recipe, not a value of seed noise:
``sweep/decide.py`` leaves it out of the statistics and asks for the next seed in its place
(docs/validation.md §7). A causal-LM objective has no collapse (its per-token loss is never a constant
answer): None.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: a regressor is collapsed when its predictions' s.d. is below this share of the validation labels' s.d.:
#: a constant output rounded to float32 spreads by about 1e-7 of its value, a trained STS-B regressor about
#: as much as the labels (s.d. 1.5 on 0–5); a head that has collapsed onto its bias still moves its output a
#: little with the input (padding, layer norm), well under a thousandth of the labels' spread
REGRESSION_SD_SHARE = 1e-3
#: how a collapsed trial's line says so (``python -m sweep.trial``, the sweep's trial lines)
NOTE = "collapsed: every validation prediction is the same answer"


def is_collapsed(preds: Optional[np.ndarray], labels: np.ndarray, problem_type: str) -> Optional[bool]:
    """Whether the validation predictions ``preds`` of one epoch are one constant answer.

    Args:
        preds: shape (N,), class ids (classification) or predicted scores (regression), as
            ``sweep.trial.evaluate`` returns them; None: no epoch was evaluated.
        labels: shape (N,), the validation labels (the regression threshold is relative to their s.d.).
        problem_type: ``single_label_classification``, ``regression`` or ``causal_lm``.

    Returns:
        Classification: every prediction is the same class. Regression: the predictions' s.d. is at most
        ``REGRESSION_SD_SHARE`` × the labels' s.d. None for ``causal_lm``, when ``preds`` is None, and when
        the labels are all one value (a constant answer cannot be told from a right one there).
    """
    if problem_type == "causal_lm" or preds is None or len(np.unique(np.asarray(labels))) < 2:
        return None
    preds = np.asarray(preds)
    if problem_type == "regression":
        return bool(np.std(preds.astype(np.float64)) <= REGRESSION_SD_SHARE * np.std(np.asarray(labels, np.float64)))
    return bool(np.all(preds == preds[0]))

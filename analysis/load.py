"""Read a sweep's Optuna study (layout: ``sweep/study.py``) into plain tables: one row per trial, the
study's settings and its decisions placed on the trial axis.

Reading never writes to the study and accepts any state: trials still RUNNING while another process
writes, FAIL trials with or without a stored ``status``, an interrupted or resumed sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Tuple

import pandas as pd

from sweep.config import HEAD_ONLY, SweepSettings
from sweep.decide import Outcome, plan
from sweep.decision import Action, ConfigKey, Decision
from sweep.errors import UserError
from sweep.metrics import Metric, metric_of
from sweep.record import TrialResult, record_fields
from sweep.study import numbered_results, settings_of, stored_result, trial_rank

#: trial states that hold a result (an objective or a failure); the others are still to come
FINISHED_STATES = ("complete", "diverged", "failed", "pruned")


@dataclass(frozen=True)
class StudyInfo:
    """What a report needs to know about a sweep besides its trials.

    Attributes:
        name: the Optuna study name.
        task, model: the GLUE task and the base model's short name.
        objective: the metric the sweep optimises (``metric``: its direction and unit); metrics: every
            metric of the task.
        settings: the sweep settings of the study's latest run (mode, seeds, tolerance, confidence, …).
        decisions: every decision stored so far, in the order they were taken.
        recommendation: the stored (r, targets) of a finished sweep, else None.
        stop_reason: why the sweep stopped; None while it runs or after an interruption.
        running: trials in state RUNNING (training now, or orphaned by a killed process).
        finished: the sweep reached its end and the stored recommendation belongs to the stored
            decisions (a resumed sweep rewrites its decisions but keeps the old ``stop_reason``).
        baseline: the objective of always predicting the majority class (regression: the training
            mean; causal LM: of the base model without the adapter), in metric units (as measured: an MSE
            not negated); None when no trial recorded it.
        dropped: causal LM: (training, validation) examples left out because their completion cannot fit
            ``data.max_length``; None for other tasks or when none was left out.
        overrides: the command-line overrides of the sweep's latest run (to print commands that
            continue it).
        params_per_rank: LoRA parameters per unit of rank of each target set (the study's
            ``target_costs``, as ``sweep.decide.plan`` takes it); None for a study that lacks it.
        history: (trial number, decision input) of every finished trial with a configuration, in
            trial-number order (``sweep.study.numbered_results``): what the decisions saw.
        data_digest: what the trials read (``TrialResult.data_digest``: SHA-256 of the train and validation
            rows), that of the first finished trial that recorded one; None when none did.
        method, lora_init: the trials' ``method.name`` and ``lora.init`` (``TrialResult.method``, ``lora_init``),
            those of the first finished trial that recorded them; ``lora`` and ``kaiming`` (their defaults) for
            trials written before they existed.

    ``lr``: the learning rate the sweep's configurations are compared at when its settings hold a bracket of
    rates (``sweep.lrs``): that of its recommendation, else of the last rate it chose; None without a bracket
    (every trial at ``train.lr``). The summary, the recommendation and the reliability take the trials at
    that rate; the report's learning-rate section shows the others.
    """

    name: str
    task: str
    model: str
    objective: str
    metrics: List[str]
    settings: SweepSettings
    decisions: List[Decision]
    recommendation: Optional[ConfigKey]
    stop_reason: Optional[str]
    running: int
    finished: bool
    baseline: Optional[float]
    overrides: List[str]
    dropped: Optional[Tuple[int, int]] = None
    params_per_rank: Optional[Dict[str, int]] = None
    history: List[Tuple[int, Outcome]] = field(default_factory=list)
    data_digest: Optional[str] = None
    method: str = "lora"
    lora_init: str = "kaiming"

    @property
    def lr(self) -> Optional[float]:
        if not self.settings.lrs or len(self.settings.lrs) < 2:
            return None
        chosen = [d.lr for d in self.decisions if d.action in (Action.RECOMMEND, Action.RATE_CHOSEN)]
        return chosen[-1] if chosen else None

    @property
    def method_name(self) -> str:
        """The method as the report names it (``analysis.methods.METHOD_NAMES``: LoRA, DoRA, AdaLoRA)."""
        from analysis.methods import METHOD_NAMES

        return METHOD_NAMES.get(self.method, self.method)

    @property
    def task_group(self) -> str:
        """The ``task=`` group the sweep was run with (``custom`` for the user's data named
        ``task.name=reviews``): what a printed command must give, since ``task`` is not a group option."""
        given = [o.split("=", 1)[1] for o in self.overrides if o.split("=", 1)[0] == "task"]
        return given[-1] if given else self.task

    @property
    def metric(self) -> Metric:
        """The objective as every view reads it (``sweep.metrics.Metric``): direction, unit, scale, label."""
        return metric_of(self.objective)


def _layout_attr(study, key: str):
    try:
        return study.user_attrs[key]
    except KeyError:
        raise UserError(
            f"study '{study.study_name}' has no '{key}' attribute: it was not written by "
            "`python -m sweep`, so it cannot be reported"
        ) from None


def _state(trial) -> str:
    """complete, diverged or failed (FAIL, split by the stored status), abandoned (FAIL without a status:
    its worker died or stepped back, see ``sweep/claims.py``), pruned, running, waiting."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        if "status" not in trial.user_attrs and "targets_key" in trial.user_attrs:
            return "abandoned"
        return "diverged" if trial.user_attrs.get("status") == "diverged" else "failed"
    return trial.state.name.lower()


def _dtype(name: str) -> Optional[str]:
    """The pandas dtype of a record field in trials.csv: nullable integers for counts, floats for
    measurements, as they are for text and choices."""
    hint = next(f.type for f in fields(TrialResult) if f.name == name)
    return {"Optional[int]": "Int64", "Optional[float]": "float64"}.get(str(hint))


def trials_frame(study, trials=None) -> pd.DataFrame:
    """One row per trial of ``study`` (or of ``trials``, frozen trials of it read once), in trial-number order.

    Columns: ``number``; ``state`` (complete, diverged, failed, abandoned, pruned, running); ``status`` (the stored
    ``ok``/``diverged``/``failed``; ``failed`` for a FAIL trial without one, ``ok`` for a COMPLETE one,
    empty while running); ``stage``; ``r``; ``targets`` (``targets_key`` such as ``q,v``); ``seed``; the
    fields of ``sweep.record.TrialResult`` marked ``csv``, in its order and units (``lora_alpha``,
    ``scaling``, parameter counts, ``trainable_pct``, executed FLOPs, measured seconds, ``peak_mem_mb``,
    ``best_epoch``…); one column per GLUE metric of the task at the best epoch (``accuracy``, ``f1``,
    ``mcc``: metric units); ``objective`` (the trial's value, metric units, COMPLETE trials only);
    ``reason`` (why a trial failed or diverged). Values a trial has not stored (yet) are missing.

    Raises:
        UserError: the study lacks the ``metrics`` attribute every sweep study has.
    """
    from optuna.trial import TrialState

    metrics = list(_layout_attr(study, "metrics"))
    shown = record_fields("csv")
    rows = []
    for t in study.get_trials(deepcopy=False) if trials is None else trials:
        a = t.user_attrs
        default_status = {TrialState.COMPLETE: "ok", TrialState.FAIL: "failed"}.get(t.state)
        record = stored_result(t)  # the store's reader, also for running and abandoned trials
        values = record.to_dict()
        rows.append(
            {
                "number": t.number,
                "state": _state(t),
                "status": a.get("status", default_status),
                "stage": a.get("stage"),
                "r": trial_rank(t),
                "targets": a.get("targets_key"),
                "seed": t.params.get("seed"),
                **{k: values[k] for k in shown},
                **{m: record.best.get(m) for m in metrics},
                "objective": t.value if t.state == TrialState.COMPLETE else None,
                "reason": record.reason,
            }
        )
    columns = ["number", "state", "status", "stage", "r", "targets", "seed", *shown, *metrics, "objective", "reason"]
    df = pd.DataFrame(rows, columns=columns).sort_values("number", ignore_index=True)
    types = {"r": "Int64", "seed": "Int64", **{k: _dtype(k) for k in shown if _dtype(k)}}
    return df.astype({**types, **{c: "float64" for c in (*metrics, "objective")}})


def study_info(study, trials=None) -> StudyInfo:
    """The task, model, objective, settings, decisions and stopping state stored with ``study`` (its trials
    read now, or ``trials``: frozen trials of it read once, so that a report's tables agree).

    Raises:
        UserError: the study lacks an attribute every sweep study has (``task``, ``model``,
            ``objective``, ``metrics``, ``settings``).
    """
    from optuna.trial import TrialState

    for key in ("task", "model", "objective", "metrics", "settings"):
        _layout_attr(study, key)
    attrs = study.user_attrs
    objective = attrs["objective"]
    decisions = [Decision.from_dict(d) for d in attrs.get("decisions") or []]
    stored = attrs.get("recommendation")
    recommendation = (int(stored[0]), str(stored[1])) if stored else None
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    running = sum(t.state == TrialState.RUNNING for t in trials)
    recommended_now = any(d.action == Action.RECOMMEND and (d.r, d.targets) == recommendation for d in decisions)
    finished = attrs.get("stop_reason") is not None and running == 0 and (recommendation is None or recommended_now)
    results = numbered_results(trials)
    baselines = [result.majority_baseline.get(objective) for _, result in results]
    baseline = next((b for b in baselines if b is not None), None)
    dropped = next(((r.dropped_train, r.dropped_eval) for _, r in results if r.dropped_train is not None), None)
    digest = next((r.data_digest for _, r in results if r.data_digest), None)
    method = next((r.method for _, r in results if r.method and r.rank != HEAD_ONLY), "lora")  # the swept method
    lora_init = next((r.lora_init for _, r in results if r.lora_init), "kaiming")
    return StudyInfo(
        name=study.study_name,
        task=attrs["task"],
        model=attrs["model"],
        objective=objective,
        metrics=list(attrs["metrics"]),
        settings=settings_of(study),
        decisions=decisions,
        recommendation=recommendation,
        stop_reason=attrs.get("stop_reason"),
        running=running,
        finished=finished,
        baseline=baseline,
        dropped=dropped if dropped and any(dropped) else None,
        overrides=list(attrs.get("command_overrides") or []),
        params_per_rank=attrs.get("target_costs"),
        history=[(number, result.outcome()) for number, result in results],
        data_digest=digest,
        method=str(method),
        lora_init=str(lora_init),
    )


def decisions_frame(trials: pd.DataFrame, info: StudyInfo) -> pd.DataFrame:
    """The stored decisions placed on the trial axis, one row per decision in order.

    Columns: ``after_trial`` (the number of the finished trial after which the procedure took the
    decision; −1 before any), ``action``, ``stage``, ``r``, ``targets``, ``reason``.

    The decisions are replayed (``sweep.decide.plan``, the driver's own function) over the finished
    trials in trial-number order, one more trial at a time: a decision sits after the trial whose result
    first made the replay take it (the same data, ``Decision.matches``; never the same words, so rewording a
    sentence moves no decision). So a decision to continue past r=2 sits after r=2's first seeds, even
    when r=2 gets more seeds later in a race against r=8. Trial-number order is the order one process
    finishes trials; with several workers a decision may sit a trial or two late. A decision the replay
    never takes (a study whose ``target_costs`` are missing, or one resumed with other settings) sits
    after the last finished trial.
    """
    numbered = info.history
    finished = trials.loc[trials["state"].isin(FINISHED_STATES), "number"]
    last_trial = int(finished.max()) if len(finished) else -1
    stored = info.decisions
    at: List[int] = []
    if info.params_per_rank is not None:
        for k in range(len(numbered) + 1):
            taken = plan(info.settings, [o for _, o in numbered[:k]], info.params_per_rank).decisions
            while len(at) < min(len(stored), len(taken)) and taken[len(at)].matches(stored[len(at)]):
                at.append(numbered[k - 1][0] if k else -1)
            if len(at) == len(stored):
                break
    at += [last_trial] * (len(stored) - len(at))
    rows = [
        {
            "after_trial": a,
            "action": d.action,
            "stage": d.stage,
            "r": d.r,
            "targets": d.targets,
            "reason": d.reason,
        }
        for a, d in zip(at, info.decisions)
    ]
    frame = pd.DataFrame(rows, columns=["after_trial", "action", "stage", "r", "targets", "reason"])
    return frame.astype({"after_trial": "int64", "r": "Int64"})

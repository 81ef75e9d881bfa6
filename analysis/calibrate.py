"""Calibrate the sweep's decision procedure: how often does its recommendation land within
``sweep.tolerance`` points of the best configuration, and at what cost in trials? Monte-Carlo over the
real decision functions of ``sweep/decide.py`` on the scenario families of ``analysis/simulate.py``
(no training, fixed RNG seed, under a minute on one CPU core).

    python -m analysis.calibrate                        # make calibrate: the defaults on every family
    python -m analysis.calibrate sweep.max_seeds=4      # the defaults and these settings side by side
    python -m analysis.calibrate task=mrpc sweep.name=default   # also that study's σ and observed curve
    python -m analysis.calibrate --reps=1000            # more simulated sweeps per cell (default 200)
    python -m analysis.calibrate sweep.screen_margin=0.5   # the screen's frontier at other settings too

Prints, per settings × scenario × σ: P(regret ≤ tolerance), mean regret (points), mean trials and mean
trials as % of the full grid (every rank × target set × seed), the values rounded to MRPC's 408 validation
examples (a study's own n_eval), then the same for the degenerate-noise cells (``degenerate_scenarios``:
seeds that often score the same); then, for a minimised objective in its own unit (``MINIMISED``: the
validation loss in nats, decreasing with rank), the same families with every step, offset and σ in units
of its default tolerance (0.01 nats) and its values not rounded (continuous: no noise floor); and writes
every table to ``results/calibration/calibration.csv`` (the defaults' rows have ``settings`` =
``default``; then the frontier with and without the nested-rank screen (``screen_frontier``: each settings
label as given and with ``sweep.screen=true``, per scenario at σ = 0.5, 1 and 2, trials in ordinary-trial
equivalents, a nested trial counting ``ScreenModel.cost``), its rows labelled ``<label> sweep.screen=true``; other rows are labelled with their sweep overrides; ``unit`` says what σ and regret are in). Simulated trials take no time, so only the
``sweep.max_trials`` cap applies. Given a study (``task=…``, ``sweep.name=…`` or ``sweep.storage=…``),
its pooled seed s.d. becomes one more σ and its observed curve one more scenario (``study``), and the
settings are the study's own (rows ``as run``; ``sweep.*`` overrides apply on top of them) with its LoRA
parameters per rank, so a sweep of any model or target sets (GPT-2's ``qkv``) is calibrated as it ran.
Last, ``make calibrate`` (without a study) tables the same families at σ of the targets under seed noise that
is not Gaussian (``noise_table``, ``analysis.simulate.NOISE_MODELS``, half the sweeps per cell: heavy tails,
5% collapsed trials flagged and kept as values, a spread by rank), beside the Gaussian cells, and says per
model where the targets do not hold and by how much; its rows name their model in ``noise`` (``gaussian``
elsewhere).
"""

from __future__ import annotations

import dataclasses
from typing import List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from analysis.reliability import observed_scenario, reliability
from analysis.simulate import (
    BRACKET,
    GAUSSIAN,
    HEAD_COST,
    HEAD_GAPS,
    N_EVAL,
    NOISE_MODELS,
    SCREEN,
    SEED,
    NoiseModel,
    Scenario,
    calibrate_cell,
    degenerate_scenarios,
    grid_trials,
    head_scenarios,
    rate_scenarios,
    scenarios,
    simulate,
)
from sweep.cli import compose, make_command, run_cli
from sweep.config import SweepSettings, targets_key
from sweep.errors import UserError
from sweep.faults import atomic_write
from sweep.metrics import METRICS, POINTS, Metric, metric_of
from sweep.paths import results_root

#: seed-noise levels simulated, in points
SIGMAS = (0.5, 1.0, 1.5)
#: simulated sweeps per scenario × σ
REPS = 200
#: the targets at the defaults (issue #8): P(regret ≤ tolerance) at σ, and trials as % of the grid
TARGETS = {0.5: 0.9, 1.0: 0.8}
MAX_PCT_OF_GRID = 50.0
#: σ of the screen's frontier (issue #23), points; its cost target: mean trials with the screen at most this
#: share of those without it, per scenario
SCREEN_SIGMAS = (0.5, 1.0, 2.0)
MAX_SCREEN_SHARE = 0.5
#: the noise models beyond the Gaussian (``analysis.simulate.NOISE_MODELS``) run 1/this of ``--reps`` sweeps per
#: cell (100 by default: a P near 0.85 ± 0.036 Monte-Carlo s.e.), so that they add about a minute, not two
NOISE_REPS_SHARE = 2
COLUMNS = (
    "scenario",
    "sigma",
    "n_eval",
    "settings",
    "p_within_tolerance",
    "mean_regret",
    "mean_trials",
    "pct_of_grid",
    "unit",
    "noise",
    "p_head",  # the head arm's rows only (head_frontier): P(the recommendation is head only)
)
#: the minimised objective calibrated beside the defaults: its name and the level (metric units) its
#: curves plateau at; the level does not matter (its values are not rounded), the steps do: one doubling of
#: a rising curve, each offset and each σ of ``SIGMAS`` is that many of its default tolerances (0.01 nats)
MINIMISED = ("loss", 2.0)


#: one simulated cell: a scenario, σ (points) and the validation examples its values are rounded to
CellSpec = Tuple[Scenario, float, Optional[int]]


def grid_of(scens: Sequence[Scenario], sigmas: Sequence[float], n_eval: Optional[int]) -> List[CellSpec]:
    """Every scenario × σ at one validation size."""
    return [(scenario, sigma, n_eval) for scenario in scens for sigma in sigmas]


def calibration_table(
    runs: Sequence[Tuple[str, SweepSettings, Sequence[CellSpec]]],
    per_rank: Mapping[str, int],
    reps: int = REPS,
    seed: int = SEED,
    objective: Optional[str] = None,
    noise: NoiseModel = GAUSSIAN,
) -> pd.DataFrame:
    """One row per (settings label, scenario, σ, n_eval) of ``runs`` with the columns of ``COLUMNS``;
    the scenarios, σ and regret in the unit of ``objective`` (None: points); seed noise of ``noise``."""
    rows = []
    for label, settings, cells in runs:
        for scenario, sigma, n_eval in cells:
            cell = calibrate_cell(
                settings, scenario, sigma, per_rank, reps, seed, settings.tolerance, n_eval, objective, noise=noise
            )
            unit = metric_of(objective).unit
            rows.append({"settings": label, **dataclasses.asdict(cell), "unit": unit, "noise": noise.name})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def families(settings: SweepSettings, per_rank: Mapping[str, int], metric: Metric, top: float) -> List[Scenario]:
    """The scenario families in the unit of ``metric``: as ``scenarios`` (points, for a points metric),
    else plateauing at the score ``top`` with one default tolerance (``Metric.tolerance``) per step."""
    if metric.unit == "points":
        return scenarios(settings, per_rank)
    return scenarios(settings, per_rank, top=top, step=metric.tolerance)


def sigmas_of(metric: Metric) -> List[float]:
    """σ of ``SIGMAS`` in the unit of ``metric``: as many of its default tolerances (points: ``SIGMAS``)."""
    return list(SIGMAS) if metric.unit == "points" else [k * metric.tolerance for k in SIGMAS]


def missed_targets(table: pd.DataFrame, metric: Metric = POINTS) -> List[str]:
    """The targets a settings label's rows miss, as sentences (empty when every target is met); σ of
    ``TARGETS`` in the unit of ``metric`` (``sigmas_of``)."""
    out = []
    for k, p_min in TARGETS.items():
        sigma = k if metric.unit == "points" else k * metric.tolerance
        low = table[(table["sigma"] == sigma) & (table["p_within_tolerance"] < p_min)]
        out += [
            f"P(regret ≤ tolerance) {r.p_within_tolerance:.2f} < {p_min} on {r.scenario} at σ={sigma:g} "
            f"({p_min - r.p_within_tolerance:.2f} short)"
            for r in low.itertuples()
        ]
    dear = table[table["pct_of_grid"] > MAX_PCT_OF_GRID]
    out += [
        f"{r.mean_trials:.1f} trials = {r.pct_of_grid:.0f}% > {MAX_PCT_OF_GRID:g}% of the grid on {r.scenario} "
        f"at σ={r.sigma:g}"
        for r in dear.itertuples()
    ]
    return out


def frontier(
    settings: SweepSettings,
    per_rank: Mapping[str, int],
    reps: int = REPS,
    objective: Optional[str] = None,
    top: float = 80.0,
) -> pd.DataFrame:
    """Reliability against cost as ``sweep.max_seeds`` grows: per max_seeds and σ of ``TARGETS``, the
    worst P(regret ≤ tolerance) and the largest mean trials over the scenario families (of ``objective``,
    plateauing at the score ``top``: ``families``)."""
    rows = []
    n0 = len(settings.seeds)
    metric = metric_of(objective)
    sigmas = [k if metric.unit == "points" else k * metric.tolerance for k in TARGETS]
    n_eval = N_EVAL if metric.per_example else None
    for max_seeds in sorted({n0, max(n0, settings.max_seeds // 2), settings.max_seeds, 2 * settings.max_seeds}):
        s = dataclasses.replace(settings, max_seeds=max_seeds)
        cells = grid_of(families(s, per_rank, metric, top), sigmas, n_eval)
        t = calibration_table([("", s, cells)], per_rank, reps, objective=objective)
        for sigma, g in t.groupby("sigma"):
            rows.append(
                {
                    "max_seeds": max_seeds,
                    "sigma": sigma,
                    "worst_p_within_tolerance": g["p_within_tolerance"].min(),
                    "max_mean_trials": g["mean_trials"].max(),
                    "max_pct_of_grid": g["pct_of_grid"].max(),
                }
            )
    return pd.DataFrame(rows)


def _off_on(table: pd.DataFrame) -> pd.DataFrame:
    """A calibration table of two settings over the same cells (off first, then on) as one row per cell:
    ``scenario, sigma, p_off, trials_off, p_on, trials_on``; the table is kept in ``attrs["rows"]``."""
    half = len(table) // 2
    a, b = table.iloc[:half].reset_index(drop=True), table.iloc[half:].reset_index(drop=True)
    front = pd.DataFrame(
        {
            "scenario": a["scenario"],
            "sigma": a["sigma"],
            "p_off": a["p_within_tolerance"],
            "trials_off": a["mean_trials"],
            "p_on": b["p_within_tolerance"],
            "trials_on": b["mean_trials"],
        }
    )
    front.attrs["rows"] = table
    return front


def _print_off_on(front: pd.DataFrame, width: int) -> None:
    """The rows of an off/on frontier (``_off_on``) with its ``met`` column, scenario names ``width`` wide."""
    print(
        f"{'scenario':<{width}} {'σ':>4} {'P off':>6} {'trials off':>10} {'P on':>6} {'trials on':>9} {'on/off':>6}  met"
    )
    for r in front.itertuples():
        print(
            f"{r.scenario:<{width}} {r.sigma:>4.1f} {r.p_off:>6.2f} {r.trials_off:>10.1f} {r.p_on:>6.2f} "
            f"{r.trials_on:>9.1f} {r.trials_on / r.trials_off:>6.2f}  "
            f"{'yes' if r.met else 'no' if r.sigma in TARGETS else '-'}"
        )


def screen_frontier(
    settings: SweepSettings, per_rank: Mapping[str, int], reps: int = REPS, label: str = "default"
) -> pd.DataFrame:
    """The frontier with and without the screen (issue #23): per scenario family of ``scenarios`` (the late
    risers included) and σ of ``SCREEN_SIGMAS``, P(regret ≤ tolerance) and mean trials (ordinary-trial
    equivalents) of ``settings`` with ``sweep.screen`` off and on, values rounded to MRPC's 408 examples,
    nested trials answered by ``analysis.simulate.SCREEN``; ``met``: the screened cell reaches ``TARGETS``
    (σ of it only) at no more than ``MAX_SCREEN_SHARE`` of the unscreened mean trials. Rows of the two
    settings in ``COLUMNS`` are labelled ``label`` and ``label sweep.screen=true``; the frontier's own columns
    are ``scenario, family, sigma, p_off, trials_off, p_on, trials_on, met``."""
    off, on = dataclasses.replace(settings, screen=False), dataclasses.replace(settings, screen=True)
    scens = scenarios(settings, per_rank)
    cells = grid_of(scens, SCREEN_SIGMAS, N_EVAL)
    table = calibration_table([(label, off, cells), (f"{label} sweep.screen=true".strip(), on, cells)], per_rank, reps)
    front = _off_on(table)
    front.insert(1, "family", front["scenario"].map({sc.name: sc.family for sc in scens}))
    p_min = front["sigma"].map(TARGETS).fillna(0.0)
    front["met"] = (front["p_on"] >= p_min) & (front["trials_on"] <= MAX_SCREEN_SHARE * front["trials_off"])
    return front


#: σ of the learning-rate stage's frontier (issue #22), points
RATE_SIGMAS = (0.5, 1.0, 2.0)


def rate_frontier(
    settings: SweepSettings, per_rank: Mapping[str, int], reps: int = REPS, label: str = "default"
) -> pd.DataFrame:
    """The frontier with and without the learning-rate stage (issue #22): per family of ``rate_scenarios``
    and σ of ``RATE_SIGMAS``, P(regret ≤ tolerance) and mean trials of ``settings`` without a bracket
    (every trial at the recipe's rate) and with ``sweep.lrs`` = ``BRACKET``, the regret taken against the
    best configuration at any rate of the bracket, values rounded to MRPC's 408 examples; ``met``: the
    cell with the stage reaches ``TARGETS`` (σ of it only). Rows in ``COLUMNS`` are labelled ``label`` and
    ``label sweep.lrs=[…]``; the frontier's own columns are ``scenario, sigma, p_off, trials_off, p_on,
    trials_on, met``."""
    off = dataclasses.replace(settings, lrs=None, screen=False)
    on = dataclasses.replace(settings, lrs=list(BRACKET), screen=False)
    cells = grid_of(rate_scenarios(settings, per_rank), RATE_SIGMAS, N_EVAL)
    rates = f"sweep.lrs=[{','.join(f'{x:g}' for x in BRACKET)}]"
    table = calibration_table(
        [(f"{label} rates off".strip(), off, cells), (f"{label} {rates}".strip(), on, cells)], per_rank, reps
    )
    front = _off_on(table)
    front["met"] = front["p_on"] >= front["sigma"].map(TARGETS).fillna(0.0)
    return front


#: σ and scenario families of the head arm's frontier (issue #21)
HEAD_SIGMAS = (0.5, 1.0)
HEAD_FAMILIES = ("flat", "plateau-r8", "rising", "wider+1+2")
#: the head arm's frontier runs 1/this of ``--reps`` sweeps per cell (100 by default), so that it adds about a minute
HEAD_REPS_SHARE = 2


def head_frontier(
    settings: SweepSettings, per_rank: Mapping[str, int], reps: int = REPS, label: str = "default"
) -> pd.DataFrame:
    """Head only as rank 0 of the progressive sweep ("is any adapter needed?", issue #21): per family of
    ``HEAD_FAMILIES`` with head only ``HEAD_GAPS`` points below r=1 (``analysis.simulate.head_scenarios``) and
    σ of ``HEAD_SIGMAS``, ``reps`` simulated sweeps of ``settings`` without the arm (off) and with 0 put
    first in ``sweep.ranks`` (on), values rounded to MRPC's 408 examples, the adapters' seed noise the same draws
    off and on (head only draws apart: common random numbers): P(regret ≤ tolerance), the mean
    cost in LoRA-trial equivalents (a head-only trial counts ``HEAD_COST``) and, on, P(the recommendation
    is head only). Head only has no trainable parameters of its own here (the head is every
    configuration's), so the rule picks it whenever it is shown within the tolerance of the best. The
    frontier's columns: ``scenario, gap, sigma, p_off, trials_off, p_on, trials_on, p_head``; its rows in
    ``COLUMNS`` (plus ``p_head``), labelled ``label`` and ``label sweep.ranks=[0,…]``, in ``attrs["rows"]``."""
    import numpy as np

    off = dataclasses.replace(settings, screen=False, lrs=None)
    on = dataclasses.replace(off, ranks=[0, *[r for r in settings.ranks if r > 0]])
    base = [sc for sc in scenarios(off, per_rank) if sc.name in HEAD_FAMILIES]
    tolerance = settings.tolerance if settings.tolerance is not None else POINTS.tolerance

    def cost(r: int, targets: str) -> Tuple[float, float]:
        return 1.0, HEAD_COST if r == 0 else 1.0  # (FLOPs: unused; "seconds": LoRA-trial equivalents)

    rows, front = [], []
    for sc in head_scenarios(base):
        for sigma in HEAD_SIGMAS:
            cells = {}
            for name, s in (("off", off), ("on", on)):
                rng, head_rng = np.random.default_rng(SEED), np.random.default_rng(SEED + 1)
                runs = [
                    simulate(s, sc, sigma, per_rank, rng, n_eval=N_EVAL, cost=cost, head_rng=head_rng)
                    for _ in range(reps)
                ]
                p = float(np.mean([r.regret <= tolerance + 1e-9 for r in runs]))
                trials = float(np.mean([r.seconds for r in runs]))
                p_head = float(np.mean([r.pick is not None and r.pick[0] == 0 for r in runs]))
                cells[name] = (p, trials, p_head)
                rows.append(
                    {
                        "scenario": sc.name,
                        "sigma": sigma,
                        "n_eval": N_EVAL,
                        "settings": label if name == "off" else f"{label} sweep.ranks=[0,…]",
                        "p_within_tolerance": p,
                        "mean_regret": float(np.mean([r.regret for r in runs])),
                        "mean_trials": trials,
                        "pct_of_grid": float(100 * trials / grid_trials(s)),
                        "unit": "points",
                        "noise": GAUSSIAN.name,
                        "p_head": p_head,
                    }
                )
            family, _, gap = sc.name.partition("/head-")
            front.append(
                {
                    "scenario": family,
                    "gap": float(gap),
                    "sigma": sigma,
                    "p_off": cells["off"][0],
                    "trials_off": cells["off"][1],
                    "p_on": cells["on"][0],
                    "trials_on": cells["on"][1],
                    "p_head": cells["on"][2],
                }
            )
    out = pd.DataFrame(front)
    out.attrs["rows"] = pd.DataFrame(rows)
    return out


def _print_head(front: pd.DataFrame) -> None:
    """The head arm's frontier (``head_frontier``), then its cost and what it buys, per gap."""
    print(
        "\nhead only as rank 0 (sweep.ranks=[0,1,2,…], issue #21: is any adapter needed?)\n"
        "  off: the sweep as it is; on: head only trained first with sweep.seeds, beside the climb (which it leaves\n"
        "  as it is), a candidate of the recommendation (the fewest trainable parameters)\n"
        f"  gap: head only's true mean below r=1 on the start targets, points ({', '.join(f'{g:g}' for g in HEAD_GAPS)};"
        " 9 is MRPC's)\n"
        "  P: P(regret ≤ tolerance) against the best configuration; trials: mean LoRA-trial equivalents (a head-only\n"
        f"  trial counts {HEAD_COST:g}); P head: share of sweeps that recommend head only"
    )
    print(
        f"{'scenario':<11} {'gap':>4} {'σ':>4} {'P off':>6} {'trials off':>10} {'P on':>6} {'trials on':>9} {'P head':>7}"
    )
    for r in front.itertuples():
        print(
            f"{r.scenario:<11} {r.gap:>4g} {r.sigma:>4.1f} {r.p_off:>6.2f} {r.trials_off:>10.1f} {r.p_on:>6.2f} "
            f"{r.trials_on:>9.1f} {r.p_head:>7.2f}"
        )
    for gap, g in front.groupby("gap"):
        share = 100 * (g["trials_on"] / g["trials_off"] - 1)
        print(
            f"head only {gap:g} points below r=1: P on − off {(g['p_on'] - g['p_off']).min():+.2f} to "
            f"{(g['p_on'] - g['p_off']).max():+.2f}; trials +{share.min():.0f}% to +{share.max():.0f}%; head only "
            f"recommended in up to {g['p_head'].max():.0%} of sweeps (cell by cell above)"
        )


def _print_rates(front: pd.DataFrame) -> None:
    """The learning-rate stage's frontier (``rate_frontier``) and where its targets are missed."""
    print(
        f"\nthe learning-rate stage (sweep.lrs, issue #22): every trial at 2e-3 (off) and the bracket "
        f"[{', '.join(f'{x:g}' for x in BRACKET)}] raced at the start configuration, re-checked at the pick (on); "
        "regret against the best configuration at any rate of the bracket"
    )
    _print_off_on(front, 16)
    for sigma, g in front.groupby("sigma"):
        print(
            f"σ={sigma:g}: worst P off {g['p_off'].min():.2f}, on {g['p_on'].min():.2f}; mean trials off "
            f"{g['trials_off'].mean():.1f}, on {g['trials_on'].mean():.1f} (+{g['trials_on'].mean() - g['trials_off'].mean():.1f})"
        )
    missed = front[(front["sigma"].isin(list(TARGETS))) & ~front["met"]]
    print(
        "learning-rate stage: targets met on every family"
        if missed.empty
        else "learning-rate stage: targets missed: "
        + "; ".join(f"{r.scenario} at σ={r.sigma:g} (P {r.p_on:.2f})" for r in missed.itertuples())
    )


def _print_screen(front: pd.DataFrame, settings: SweepSettings) -> None:
    """The screen's frontier (``screen_frontier``) and whether its targets are met."""
    print(
        f"\nthe nested-rank screen (sweep.screen, issue #23): without it and with it (screen_seeds "
        f"{settings.screen_seeds}, screen_margin {settings.screen_margin:g}, screen_rule {settings.screen_rule}); "
        f"trials are ordinary-trial equivalents (a nested trial counts {SCREEN.cost:g}); the screen's error model: "
        f"bias {SCREEN.bias_r1:+.2f} points at r=1, {SCREEN.bias_per_doubling:+.2f} per doubling, noise "
        f"{SCREEN.noise:g}σ, {SCREEN.shared:.0%} of its variance shared by a trial's ranks"
    )
    _print_off_on(front, 12)
    for sigma, g in front.groupby("sigma"):
        print(
            f"σ={sigma:g}: worst P off {g['p_off'].min():.2f}, on {g['p_on'].min():.2f}; mean trials over the "
            f"scenarios off {g['trials_off'].mean():.1f}, on {g['trials_on'].mean():.1f} "
            f"({g['trials_on'].mean() / g['trials_off'].mean():.0%})"
        )
    missed = front[(front["sigma"].isin(list(TARGETS))) & ~front["met"]]
    if missed.empty:
        print(
            f"screen targets met: P ≥ {TARGETS} at ≤ {MAX_SCREEN_SHARE:.0%} of the trials without it on every scenario"
        )
    else:
        print(
            f"screen targets missed on {len(missed)} of {front['sigma'].isin(list(TARGETS)).sum()} cells: "
            + "; ".join(
                f"{r.scenario} at σ={r.sigma:g} (P {r.p_on:.2f}, {r.trials_on / r.trials_off:.0%} of the trials)"
                for r in missed.itertuples()
            )
        )


def noise_table(
    settings: SweepSettings, per_rank: Mapping[str, int], reps: int, label: str = "default"
) -> pd.DataFrame:
    """The scenario families (``scenarios``) at σ of ``TARGETS``, values rounded to MRPC's 408 examples, under
    each noise model of ``NOISE_MODELS`` (issue #22): heavy tails, 5% collapsed trials (flagged, and kept as
    values), a spread by rank; rows labelled ``label``, their model in ``noise``."""
    cells = grid_of(scenarios(settings, per_rank), list(TARGETS), N_EVAL)
    runs = [(label, settings, cells)]
    return pd.concat(
        [calibration_table(runs, per_rank, reps, noise=noise) for noise in NOISE_MODELS], ignore_index=True
    )


def _print_noise(table: pd.DataFrame, gaussian: pd.DataFrame, reps: int) -> None:
    """``noise_table``'s cells beside the Gaussian ones of the same settings (``gaussian``: ``_section``'s
    family table), P(regret ≤ tolerance) / mean trials, and per model where the targets do not hold: the
    misses the Gaussian noise has too apart from the new ones."""
    names = list(dict.fromkeys(table["noise"]))
    print(
        f"\nseed noise beyond the Gaussian (issue #22, docs/validation.md §7), settings {table['settings'].iloc[0]}: "
        f"{reps} simulated sweeps per cell (the Gaussian column: the scenario families' table, with "
        f"{NOISE_REPS_SHARE}× as many), values rounded to 100/{N_EVAL} points; each cell P(regret ≤ tolerance) / "
        "mean trials"
    )
    for noise in NOISE_MODELS:
        print(f"  {noise.name}: {noise.text()}")
    key = ["scenario", "sigma"]
    wide = gaussian[gaussian["n_eval"] == N_EVAL].set_index(key)
    cell = "{:.2f} / {:4.1f}"
    w = max(len(n) for n in ["gaussian", *names])
    print(f"{'scenario':<12} {'σ':>4} " + " ".join(f"{n:>{w}}" for n in ["gaussian", *names]))
    by_noise = {n: g.set_index(key) for n, g in table.groupby("noise", sort=False)}
    for scenario, sigma in table.loc[table["noise"] == names[0], key].itertuples(index=False):
        at = (scenario, sigma)
        shown = [wide.loc[at] if at in wide.index else None] + [by_noise[n].loc[at] for n in names]
        text = [cell.format(r.p_within_tolerance, r.mean_trials) if r is not None else "-" for r in shown]
        print(f"{scenario:<12} {sigma:>4.1f} " + " ".join(f"{t:>{w}}" for t in text))
    gauss_missed = {
        (r.scenario, r.sigma)
        for r in wide.reset_index().itertuples()
        if r.sigma in TARGETS and r.p_within_tolerance < TARGETS[r.sigma]
    }
    for name in names:
        rows = table[table["noise"] == name]
        also = rows[
            [
                (r.scenario, r.sigma) in gauss_missed and r.p_within_tolerance < TARGETS[r.sigma]
                for r in rows.itertuples()
            ]
        ]
        new = missed_targets(rows.drop(also.index))
        old = sorted(set(also["scenario"]))
        both = ", ".join(old)
        if new:
            print(
                f"{name}: targets missed: {'; '.join(new)}"
                + (f"; {both} miss under the Gaussian noise too" if old else "")
            )
        else:
            print(
                f"{name}: targets met wherever the Gaussian noise meets them"
                + (f" ({both} miss under both)" if old else "")
            )


def _print_table(table: pd.DataFrame, settings: SweepSettings, title: str, decimals: int = 2) -> None:
    """The rows of ``table`` under ``title``, σ and mean regret with ``decimals`` decimals."""
    print(
        f"\n{title}; settings: {table['settings'].iloc[0]} (seeds {list(settings.seeds)}, max_seeds "
        f"{settings.max_seeds}, tolerance {settings.tolerance:g}, confidence {settings.confidence:g}, patience "
        f"{settings.patience}, noise_floor {settings.noise_floor:g}; full grid {grid_trials(settings)} trials)"
    )
    w = max(4, decimals + 2)
    print(
        f"{'scenario':<12} {'σ':>{w}} {'n_eval':>6} {'P(regret≤tol)':>13} {'mean regret':>11} {'mean trials':>11} "
        f"{'% of grid':>9}"
    )
    for r in table.itertuples():
        n_eval = "-" if pd.isna(r.n_eval) else f"{int(r.n_eval)}"
        print(
            f"{r.scenario:<12} {r.sigma:>{w}.{decimals}f} {n_eval:>6} {r.p_within_tolerance:>13.2f} "
            f"{r.mean_regret:>11.{decimals}f} {r.mean_trials:>11.1f} {r.pct_of_grid:>9.1f}"
        )
    if (table["pct_of_grid"] > 100).any():  # racing seeds beyond sweep.seeds: the grid is no upper bound
        print(
            f"% of grid: mean trials / the {grid_trials(settings)} trials of the grid at sweep.seeds="
            f"{list(settings.seeds)}; racing adds seeds up to sweep.max_seeds={settings.max_seeds}, so above 100% "
            "the procedure ran more trials than that grid (a small grid, or much racing)"
        )


def _on_top(base: SweepSettings, tuned: Sequence[str], overrides: Sequence[str]) -> SweepSettings:
    """``base`` with the values the ``tuned`` overrides (``sweep.<key>=…``, or a ``sweep=`` group) give
    when ``overrides`` are composed."""
    composed = compose(overrides)[0].sweep
    if any(a.partition("=")[0].lstrip("+") == "sweep" for a in tuned):
        return composed
    keys = [a.partition("=")[0].lstrip("+").split(".", 1)[1] for a in tuned]
    return dataclasses.replace(base, **{k: getattr(composed, k) for k in keys})


def _section(
    label: str,
    settings: SweepSettings,
    per_rank: Mapping[str, int],
    reps: int,
    objective: Optional[str],
    top: float,
    observed: Optional[Scenario],
    extra_sigmas: Sequence[float],
    n_eval: Optional[int],
) -> List[pd.DataFrame]:
    """Print the tables of one settings label for ``objective`` (None: points) and return them: the
    scenario families (``families``, plateauing at the score ``top``) at ``sigmas_of`` and ``extra_sigmas``,
    with the ``observed`` curve of a study; for a metric that moves by validation examples, its values
    rounded to ``n_eval`` examples and the degenerate-noise table; whether the targets are met."""
    metric = metric_of(objective)
    points = metric.unit == "points"
    n_eval = n_eval if metric.per_example else None
    cells = grid_of(families(settings, per_rank, metric, top), [*sigmas_of(metric), *extra_sigmas], n_eval)
    if observed is not None:
        cells += grid_of([observed], extra_sigmas, n_eval)
    table = calibration_table([(label, settings, cells)], per_rank, reps, objective=objective)
    if points:
        _print_table(table, settings, f"scenario families, Gaussian seed noise rounded to 100/{n_eval} points")
    else:
        _print_table(
            table,
            settings,
            f"minimised objective: validation {metric.label} in {metric.unit} ({metric.better}); scenario "
            f"families stepping by the tolerance, Gaussian seed noise σ in {metric.unit} (0.5, 1 and 1.5 × "
            f"the tolerance), not rounded ({metric.unit} are continuous: no noise floor)",
            metric.decimals,
        )
    tables = [table]
    if points:
        degenerate = calibration_table([(label, settings, degenerate_scenarios(settings, per_rank))], per_rank, reps)
        _print_table(degenerate, settings, "degenerate noise (seeds that often score the same)")
        tables.append(degenerate)
    missed = missed_targets(table[table["scenario"] != "study"], metric)
    if not missed:
        low, high = ("0.5", "1.0") if points else (f"{0.5 * metric.tolerance:g}", f"{metric.tolerance:g} {metric.unit}")
        at = f"σ={low} and ≥ {TARGETS[1.0]} at σ={high}"
        print(
            f"targets met: P ≥ {TARGETS[0.5]} at {at} on every family, mean trials ≤ {MAX_PCT_OF_GRID:g}% of the grid"
        )
    else:
        print("targets missed: " + "; ".join(missed))
        print("frontier (worst family per σ as sweep.max_seeds grows):")
        front = frontier(settings, per_rank, reps, objective, top)
        print(front.to_string(index=False, float_format=lambda x: f"{x:.{max(2, metric.decimals)}f}"))
    return tables


#: why ``make calibrate`` refuses a budget sweep
BUDGET_REFUSED = (
    "make calibrate simulates the rank procedure on rank curves; a budget sweep (sweep=budget) compares target "
    "sets at equal budgets, which is no rank curve: calibrate a progressive sweep (or none: make calibrate)"
)


def main(args: List[str]) -> int:
    reps = REPS
    for a in [a for a in args if a.startswith("--reps")]:
        value = a.partition("=")[2]
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"{a} is invalid: give --reps=N with N a positive integer, e.g. --reps={REPS}")
        reps = int(value)
    overrides = [a for a in args if not a.startswith("--reps")]
    tuned = [a for a in overrides if a.startswith("sweep") and not a.startswith(("sweep.name=", "sweep.storage="))]
    cfg, _ = compose([a for a in overrides if a not in tuned])
    if "budget" in (cfg.sweep.mode, compose(overrides)[0].sweep.mode):
        raise UserError(BUDGET_REFUSED)
    from sweep.driver import params_per_rank
    from sweep.study import load_study, outcomes, settings_of, storage_url, study_name

    observed, extra_sigmas, n_eval = {}, [], N_EVAL
    if any(a.startswith(("task=", "sweep.name=", "sweep.storage=")) for a in overrides):
        # a study is calibrated with what it ran: its stored settings and LoRA parameters per rank (a
        # GPT-2 sweep starts on qkv), the command's sweep.* overrides on top of them
        made_by = make_command("sweep", [a for a in overrides if a not in tuned])  # the user's folder and name
        study = load_study(storage_url(cfg), study_name(cfg), f"run `{made_by}` first")
        base = settings_of(study)
        if base.mode == "budget":
            raise UserError(f"study '{study.study_name}': {BUDGET_REFUSED}")
        per_rank = study.user_attrs.get("target_costs") or params_per_rank(cfg)
        labelled = [("as run", base)] + ([(" ".join(tuned), _on_top(base, tuned, overrides))] if tuned else [])
        for _, settings in labelled[1:]:
            new = [k for k in dict.fromkeys(targets_key(t) for t in settings.target_sets) if k not in per_rank]
            if new:  # the simulation orders target sets by LoRA parameters, known only for what the sweep ran
                raise UserError(
                    f"sweep.target_sets holds [{new[0]}], which sweep '{study.study_name}' never sized: against a "
                    f"sweep, calibrate its own target sets ({', '.join(f'[{k}]' for k in per_rank)}) or "
                    "run `make calibrate` without task/sweep.name"
                )
        history = outcomes(study)
        rel = reliability(history, base, None)
        # the observed curve on each settings' rank axis (new ranks take the nearest observed rank's mean)
        observed = {label: observed_scenario(history, settings, per_rank) for label, settings in labelled}
        if rel is None or observed["as run"] is None:
            raise UserError(
                f"study '{study.study_name}' has no configuration with two ok seeds on "
                f"{targets_key(base.start_targets)}: no seed noise to calibrate against"
            )
        print(f"study {study.study_name}: {rel.text()}")
        objective = study.user_attrs.get("objective")
        top = max(observed["as run"].curve.values())  # a minimised study's families plateau where it did
        extra_sigmas, n_eval = [round(rel.sigma, metric_of(objective).decimals)], rel.n_eval
    else:
        objective, top = None, 80.0
        per_rank = params_per_rank(cfg)
        labelled = [("default", cfg.sweep)] + ([(" ".join(tuned), compose(overrides)[0].sweep)] if tuned else [])
    out = results_root(cfg) / "calibration" / "calibration.csv"
    tables, gaussian = [], {}
    for label, settings in labelled:
        section = _section(label, settings, per_rank, reps, objective, top, observed.get(label), extra_sigmas, n_eval)
        gaussian[label] = section[0]
        tables += section
    if not observed:  # make calibrate: the defaults, the screen's frontier, then a minimised objective
        for label, settings in labelled:
            front = screen_frontier(settings, per_rank, reps, label)
            _print_screen(front, settings)
            tables.append(front.attrs["rows"])
            rates = rate_frontier(settings, per_rank, reps, label)
            _print_rates(rates)
            tables.append(rates.attrs["rows"])
            if settings.mode == "progressive" and settings.ranks[0] != 0:
                head = head_frontier(settings, per_rank, max(1, reps // HEAD_REPS_SHARE), label)
                _print_head(head)
                tables.append(head.attrs["rows"])
        name, level = MINIMISED
        for label, settings in labelled:
            tuned_min = dataclasses.replace(settings, tolerance=METRICS[name].tolerance)
            tables += _section(label, tuned_min, per_rank, reps, name, METRICS[name].score(level), None, [], None)
        noise_reps = max(1, reps // NOISE_REPS_SHARE)
        for label, settings in labelled:  # noise beyond the Gaussian, fewer sweeps per cell (issue #22)
            noisy = noise_table(settings, per_rank, noise_reps, label)
            _print_noise(noisy, gaussian[label], noise_reps)
            tables.append(noisy)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.concat(tables, ignore_index=True)
    atomic_write(out, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))
    print(f"\ncalibration table: {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)

"""What a sweep will cost, said before its first trial: trials, training FLOPs and wall time.

    python -m analysis.estimate task=mrpc                # make plan TASK=mrpc: print the estimate, run nothing
    python -m analysis.estimate task=mrpc sweep=grid     # make plan TASK=mrpc SWEEP=grid
    python -m analysis.estimate task=mrpc sweep=budget   # make plan TASK=mrpc SWEEP=budget
    python -m analysis.estimate debug=tiny               # a tiny sweep's estimate, in seconds on the CPU

``python -m sweep`` (``make sweep``) prints the same lines before its first trial, and each trial's line then
ends with the expected time left (``sweep.driver.Forecast``). ``make plan`` only reads: no trial, no study,
nothing written under ``results/``. Three parts, each from the project's own machinery:

1. **Trials** (``trial_counts``): the calibration's Monte-Carlo (``analysis/simulate.py``: the real
   ``sweep.decide.plan`` replayed on synthetic rank curves) with this sweep's settings (ranks, target sets,
   seeds, racing, caps), pooled over the scenario families of ``make calibrate``
   (``analysis.calibrate.families``), ``REPS_PER_FAMILY`` sweeps each from ``SEED``, at an assumed seed
   s.d. (``assumed_sigma``: 1 point for a points metric, else the objective's default tolerance, the middle
   σ of ``analysis.calibrate.sigmas_of``) and, once the study has a pooled measured σ
   (``analysis.reliability``), at that σ too. Values are rounded to the validation set's examples, as a real
   accuracy is (a budget sweep's families are drawn on the ranks its budgets give, ``sweep.budget``). A
   grid's count does not depend on the values: it is exact. The compute caps
   (``sweep.max_trials``, ``max_train_flops``, ``max_hours``) apply inside ``plan``, each simulated trial
   costing the FLOPs and seconds of parts 2 and 3.
2. **FLOPs per trial** (``measure_cost``): executed FLOPs (``sweep/flops.py``: ``FlopModel`` on the real
   model) over the real padded batch shapes of every epoch (``Batches.shapes``, the first seed's order), as
   a trial records them in ``metrics.json`` (``train_flops``, ``eval_flops``), for the smallest
   configuration (lowest rank, the target set with the fewest LoRA parameters) and the largest (highest
   rank, the most). LoRA adds 2·r·(d+k) FLOPs per token per adapted matrix in the forward pass, so the
   configurations in between are interpolated linearly in LoRA parameters (exact at both ends).
3. **Seconds** (``measure_cost``): ``PROBE_STEPS`` real training steps (forward, backward, gradient
   clipping, AdamW step; the trial's device, precision and threads) on the smallest configuration's first
   batches, timed after one untimed step (fewer once ``PROBE_SECONDS`` have passed), give seconds per FLOP.
   A trial's seconds are its training and evaluation FLOPs × that rate (evaluation is about 6% of an MRPC
   trial's FLOPs, and its seconds were 4–6% of a trial's in the README's measurements); a sweep's are summed
   over each simulated sweep's trials (mean and 90th percentile). A probe of a few steps: on a machine whose
   cores are shared it is as slow as they make it, and so are the trials.

The model is loaded once (its copies are adapted); the whole estimate takes about a second for a tiny
sweep and a few seconds for MRPC with MiniLM on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from analysis.calibrate import families
from analysis.simulate import SEED, Scenario, simulate
from sweep.budget import budget_ranks
from sweep.cli import compose, run_cli
from sweep.config import Config, SweepSettings
from sweep.decide import Outcome
from sweep.driver import Forecast, check_sweep, duration_text, target_sets
from sweep.errors import UserError
from sweep.metrics import Metric, metric_of
from sweep.nested import trial_equivalents

#: simulated sweeps per scenario family (12 families at the defaults: 240 sweeps, about 0.6 s on one core)
REPS_PER_FAMILY = 20
#: quantile of the trials (and FLOPs, seconds) reported beside the mean
QUANTILE = 0.9
#: timed training steps of the probe (after one untimed step that warms the kernels up), and the seconds
#: after which it stops early (at least one timed step), so that busy cores do not make it long
PROBE_STEPS = 2
PROBE_SECONDS = 1.0


def assumed_sigma(metric: Metric) -> float:
    """The seed s.d. assumed before a study has measured one, in the objective's unit: 1 point for a
    points metric (MRPC with MiniLM measures about 1.0), else one default tolerance (``Metric.tolerance``)."""
    return 1.0 if metric.unit == "points" else metric.tolerance


@dataclass(frozen=True)
class TrialCost:
    """One trial's cost, measured on the real model and data (``measure_cost``).

    Attributes:
        smallest, largest: (r, targets key) of the cheapest and the dearest configuration of the search space.
        lora_params: LoRA parameters of ``smallest`` and ``largest`` (r × ``params_per_rank``).
        train_flops: training FLOPs of a trial of ``smallest`` and of ``largest`` (all epochs).
        eval_flops: evaluation FLOPs of a trial of ``smallest`` and of ``largest`` (one pass per epoch).
        seconds_per_flop: seconds per training FLOP measured by the probe; evaluation FLOPs are charged at
            the same rate (they are about 6% of an MRPC trial's and forward passes run at least as fast).
        probe_steps: training steps timed; probe_seconds: seconds they took.
        device, precision, threads: what the probe (and the trials) run with.
    """

    smallest: Tuple[int, str]
    largest: Tuple[int, str]
    lora_params: Tuple[int, int]
    train_flops: Tuple[int, int]
    eval_flops: Tuple[int, int]
    seconds_per_flop: float
    probe_steps: int
    probe_seconds: float
    device: str
    precision: str
    threads: int

    def _between(self, pair: Tuple[int, int], lora_params: int) -> float:
        (p0, p1), (f0, f1) = self.lora_params, pair
        return float(f0 if p1 == p0 else f0 + (f1 - f0) * (lora_params - p0) / (p1 - p0))

    def flops(self, lora_params: int) -> Tuple[float, float]:
        """(training, evaluation) FLOPs of a trial whose configuration has ``lora_params`` LoRA parameters."""
        return self._between(self.train_flops, lora_params), self._between(self.eval_flops, lora_params)

    def seconds(self, lora_params: int) -> float:
        """Estimated train + evaluation seconds of such a trial."""
        return sum(self.flops(lora_params)) * self.seconds_per_flop


@dataclass(frozen=True)
class TrialCounts:
    """Trials, training FLOPs and seconds of the whole sweep over ``reps`` simulated sweeps at seed s.d.
    ``sigma`` (the objective's unit), mean and ``QUANTILE`` quantile of each.

    Attributes:
        measured: whether ``sigma`` is the study's measured pooled σ (else ``assumed_sigma``).
        exact: a grid: every simulated sweep runs the same trials.
        capped: the share of the simulated sweeps that a compute cap stopped (``sweep.max_trials``,
            ``max_train_flops``, ``max_hours``).
    """

    sigma: float
    measured: bool
    reps: int
    exact: bool
    trials_mean: float
    trials_p90: float
    flops_mean: float
    flops_p90: float
    seconds_mean: float
    seconds_p90: float
    capped: float = 0.0


def trial_counts(
    settings: SweepSettings,
    per_rank: Mapping[str, int],
    sigma: float,
    *,
    objective: Optional[str] = None,
    n_eval: Optional[int] = None,
    cost: Optional[TrialCost] = None,
    measured: bool = False,
    reps_per_family: int = REPS_PER_FAMILY,
    seed: int = SEED,
) -> TrialCounts:
    """Simulate the sweep of ``settings`` (``analysis.simulate.simulate``) ``reps_per_family`` times on each
    scenario family in order, from one ``np.random.default_rng(seed)``, at seed s.d. ``sigma`` (the unit of
    ``objective``; values rounded to ``n_eval`` examples for a per-example metric); each trial costs
    ``cost``'s FLOPs and seconds (None: 1 FLOP and 0 s). A grid is simulated once (its trials are fixed).

    Raises:
        RuntimeError: a simulated sweep asked for more than ``analysis.simulate.MAX_SIMULATED_TRIALS``.
    """
    metric = metric_of(objective)
    grid = settings.mode == "grid"
    if settings.mode == "budget":  # simulated on the ranks its budgets give, where the families' curves are drawn
        ranks = sorted({r for b in budget_ranks(settings, per_rank) for r in b.ranks.values()})
        settings = dataclasses.replace(settings, ranks=ranks)
    if grid:  # the values do not change which trials a grid runs
        scens = [Scenario("grid", "grid", {r: 80.0 for r in settings.ranks}, {})]
    else:
        scens = families(settings, per_rank, metric, 80.0 if metric.unit == "points" else metric.score(0.0))

    def trial_cost(r: int, targets: str) -> Tuple[float, float]:
        if cost is None:
            return 1.0, 0.0
        return cost.flops(r * per_rank[targets])[0], cost.seconds(r * per_rank[targets])

    rng = np.random.default_rng(seed)
    n = 1 if grid else reps_per_family
    eval_n = n_eval if metric.per_example else None
    runs = [
        simulate(settings, s, sigma, per_rank, rng, n_eval=eval_n, objective=objective, cost=trial_cost)
        for s in scens
        for _ in range(n)
    ]
    trials, flops, seconds = (
        np.array([getattr(run, k) for run in runs], float) for k in ("trials", "train_flops", "seconds")
    )
    return TrialCounts(
        sigma,
        measured,
        len(runs),
        grid,
        float(trials.mean()),
        float(np.quantile(trials, QUANTILE)),
        float(flops.mean()),
        float(np.quantile(flops, QUANTILE)),
        float(seconds.mean()),
        float(np.quantile(seconds, QUANTILE)),
        float(np.mean([run.capped for run in runs])),
    )


def extremes(per_rank: Mapping[str, int], ranks: Sequence[int]) -> Tuple[Tuple[int, str], Tuple[int, str]]:
    """The (r, targets key) with the fewest and with the most LoRA parameters: the lowest rank on the
    cheapest target set, the highest on the dearest (the first of equals, in ``per_rank``'s order)."""
    return (min(ranks), min(per_rank, key=per_rank.__getitem__)), (max(ranks), max(per_rank, key=per_rank.__getitem__))


def _at(cfg: Config, r: int, targets: List[str]) -> Config:
    """``cfg`` with one trial's LoRA configuration, at the sweep's first seed."""
    return dataclasses.replace(
        cfg,
        lora=dataclasses.replace(cfg.lora, r=r, targets=list(targets)),
        train=dataclasses.replace(cfg.train, seed=cfg.sweep.seeds[0]),
    )


def measure_cost(cfg: Config, per_rank: Mapping[str, int], probe_steps: int = PROBE_STEPS) -> TrialCost:
    """Count one trial's FLOPs on the smallest and the largest configuration and time ``probe_steps``
    training steps of the smallest (module docstring, parts 2 and 3). Loads the model once; the global RNG is
    restored afterwards.

    Raises:
        UserError: as a trial's set-up (model, targets, device).
    """
    import torch

    from sweep.data import class_names, task_data
    from sweep.modeling import family_applied, load_base_model, load_tokenizer
    from sweep.runtime import resolve_device, resolve_precision
    from sweep.trial import adapted_model, flop_models, trial_batches, warmup_steps

    device = resolve_device(cfg)
    precision = resolve_precision(cfg, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    sets = target_sets(cfg)
    small, large = extremes(per_rank, [r for r in cfg.sweep.ranks if r > 0])  # head only (r=0): as 0 LoRA params
    data = task_data(cfg)
    pad_id = load_tokenizer(cfg.model.name_or_path).pad_token_id or 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.sweep.seeds[0])
        base = load_base_model(cfg.model, class_names(cfg))
        model_cfg = family_applied(base, cfg.model)
        train_flops, eval_flops = [], []
        for r, key in (large, small):  # the smallest last: its model is the one timed
            tcfg = _at(cfg, r, sets[key])
            train_split, _, train_batches, val_batches = trial_batches(tcfg, data, pad_id)
            steps = warmup_steps(tcfg, len(train_split))[0]
            model = adapted_model(copy.deepcopy(base), tcfg, model_cfg, steps).to(device)
            with _one_thread():
                f_train, f_eval = flop_models(model, train_batches, device)
            epochs = range(cfg.train.epochs)
            train_flops.insert(0, sum(f_train(n, w) for e in epochs for n, w in train_batches.shapes(e)))
            eval_flops.insert(0, cfg.train.epochs * sum(f_eval(n, w) for n, w in val_batches.shapes()))
        train_rate, probe_seconds, steps = _time_training(
            model, train_batches, f_train, tcfg, device, precision, probe_steps
        )
    return TrialCost(
        small,
        large,
        (small[0] * per_rank[small[1]], large[0] * per_rank[large[1]]),
        (train_flops[0], train_flops[1]),
        (eval_flops[0], eval_flops[1]),
        train_rate,
        steps,
        probe_seconds,
        str(device),
        precision,
        torch.get_num_threads(),
    )


@contextlib.contextmanager
def _one_thread():
    """Torch on one CPU thread inside: a count of FLOPs does not depend on threads, and on cores shared with
    other jobs two threads made the counter's batch-1 passes 100× slower (2.3 s against 0.02 s, measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock stops when the device's work is done, not queued


def _time_training(model, batches, flops, cfg: Config, device, precision: str, steps: int) -> Tuple[float, float, int]:
    """(seconds per training FLOP, seconds, steps timed) of up to ``steps`` training steps on ``batches``' first
    batches (cycled when there are fewer), as ``sweep.trial.train_one_epoch`` runs each batch. The first step,
    which sets up kernels and buffers, is not timed, unless it alone took over ``PROBE_SECONDS`` (busy cores):
    then it is the measurement (pessimistic by that set-up). Timing stops once ``PROBE_SECONDS`` have passed."""
    import itertools

    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model.train()
    first = list(itertools.islice(batches.epoch(0), steps + 1))
    timed: List[Tuple[int, float]] = []  # (FLOPs, seconds) of each step
    for i in range(steps + 1):
        batch = {k: v.to(device) for k, v in first[i % len(first)].items() if k != "index"}
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        if cfg.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        timed.append((flops(*batch["input_ids"].shape), time.perf_counter() - start))
        if sum(t for _, t in timed[1:] or timed) > PROBE_SECONDS:  # the first step alone, or the timed ones
            break
    used = timed[1:] or timed
    seconds = sum(t for _, t in used)
    return seconds / sum(f for f, _ in used), seconds, len(used)


@dataclass(frozen=True)
class Estimate:
    """What a sweep expects to spend: its trials at the assumed σ (``assumed``) and, once its study has
    measured one, at the measured σ (``measured``); one trial's ``cost``; the objective (its unit names σ); the
    trials the study has finished (``done``, ordinary-trial equivalents: ``sweep.nested.trial_equivalents``); the
    seconds the estimate took (``took``)."""

    objective: str
    assumed: TrialCounts
    measured: Optional[TrialCounts]
    cost: TrialCost
    done: float = 0.0
    took: float = 0.0

    @property
    def counts(self) -> TrialCounts:
        """The counts to go by: at the measured σ when there is one."""
        return self.measured or self.assumed

    def forecast(self) -> Forecast:
        """The driver's view: expected trials and seconds of a trial (mean over the simulated sweeps)."""
        c = self.counts
        return Forecast(c.trials_mean, c.seconds_mean / c.trials_mean if c.trials_mean else 0.0)

    def lines(self) -> List[str]:
        """The estimate as console lines."""
        m = metric_of(self.objective)
        c = self.cost
        out = []
        for counts in (self.assumed, self.measured):
            if counts is None:
                continue
            if counts.exact:
                trials = f"trials: {counts.trials_mean:.0f} (a grid: exact)"
            else:
                sigma = "measured pooled" if counts.measured else "assumed"
                trials = (
                    f"trials: mean {counts.trials_mean:.1f}, p90 {counts.trials_p90:.0f} at {sigma} seed σ = "
                    f"{m.fmt(counts.sigma)} {m.unit} ({counts.reps} simulated sweeps of sweep.decide.plan over "
                    "the calibration's scenario families)"
                )
            capped = f"; a compute cap ends {100 * counts.capped:.0f}% of the simulated sweeps" if counts.capped else ""
            out.append(
                f"{trials}; training FLOPs {counts.flops_mean:.3g} (p90 {counts.flops_p90:.3g}); "
                f"time {duration_text(counts.seconds_mean)} (p90 {duration_text(counts.seconds_p90)}){capped}"
            )
        (r0, t0), (r1, t1) = c.smallest, c.largest
        seconds = [duration_text(c.seconds(p)) for p in c.lora_params]
        probe = f"{c.probe_seconds:.1f} s on {c.device}, {c.precision}, {c.threads} thread(s)"
        out.append(
            f"per trial: training FLOPs {c.train_flops[0]:.3g} (r={r0} {t0}) to {c.train_flops[1]:.3g} (r={r1} {t1}), "
            f"evaluation {c.eval_flops[0]:.3g} to {c.eval_flops[1]:.3g}; about {seconds[0]} to {seconds[1]}, an "
            f"estimate from {c.probe_steps} timed training steps ({probe}); this estimate took {self.took:.1f} s"
        )
        if self.done:
            f = self.forecast()
            left = max(f.trials - self.done, 0.0)
            out.append(
                f"the study has {self.done:g} finished trials: about {left:.1f} more, "
                f"{duration_text(left * f.seconds_per_trial)}"
            )
        return ["expected cost: " + line for line in out]


def estimate(cfg: Config, per_rank: Mapping[str, int], history: Sequence[Outcome] = ()) -> Estimate:
    """The ``Estimate`` of the sweep of ``cfg`` (``per_rank``: ``sweep.driver.params_per_rank``) given the
    study's finished trials ``history`` (their pooled seed s.d., when they measure one, gives the second count).

    Raises:
        UserError: as ``measure_cost``.
    """
    from analysis.reliability import reliability
    from sweep.data import take, task_data

    start = time.perf_counter()
    cost = measure_cost(cfg, per_rank)
    objective = cfg.task.objective
    n_eval = len(take(task_data(cfg)["validation"], cfg.data.max_eval_samples))
    common = dict(objective=objective, n_eval=n_eval, cost=cost)
    assumed = trial_counts(cfg.sweep, per_rank, assumed_sigma(metric_of(objective)), **common)
    rel = reliability(list(history), cfg.sweep, None) if history and cfg.sweep.mode != "grid" else None
    measured = trial_counts(cfg.sweep, per_rank, rel.sigma, measured=True, **common) if rel else None
    return Estimate(objective, assumed, measured, cost, trial_equivalents(history), time.perf_counter() - start)


def forecaster(cfg: Config, log=print):
    """A ``sweep.driver.ForecastFn`` for ``run_sweep``: prints the estimate's lines, returns its ``Forecast``.
    An estimate that fails other than on bad input (a ``UserError``, raised) says so in one line and the sweep
    goes on without it: what it would cost is no reason not to run it."""

    def forecast(per_rank: Mapping[str, int], history: List[Outcome]) -> Optional[Forecast]:
        try:
            est = estimate(cfg, per_rank, history)
        except UserError:
            raise
        except Exception as e:
            log(f"expected cost: not estimated ({type(e).__name__}: {str(e).strip().partition(chr(10))[0]})")
            return None
        for line in est.lines():
            log(line)
        return est.forecast()

    return forecast


def _history(cfg: Config) -> List[Outcome]:
    """The finished trials of the sweep's study, read without writing; none when there is no study yet."""
    from sweep.study import load_study, outcomes, storage_url, study_name

    try:
        return outcomes(load_study(storage_url(cfg), study_name(cfg)))
    except UserError:  # no study yet (or none of this name): the sweep starts from nothing
        return []


def main(args: List[str]) -> int:
    """Print the estimate of the sweep of the overrides ``args`` (``make plan``) and exit; nothing is run
    or written.

    Raises:
        UserError: bad input, as ``python -m sweep`` refuses it (``sweep.driver.check_sweep``).
    """
    cfg, _ = compose(args)
    per_rank = check_sweep(cfg, args)
    for line in estimate(cfg, per_rank, _history(cfg)).lines():
        print(line)
    return 0


if __name__ == "__main__":
    run_cli(main)

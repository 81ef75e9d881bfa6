"""The sweep driver: an ask-and-tell loop over an Optuna study, with the decisions of ``sweep/decide.py``.

    python -m sweep task=mrpc                 # the progressive procedure (make sweep TASK=mrpc)
    python -m sweep task=mrpc sweep=grid      # every rank × target set × seed (make sweep SWEEP=grid)
    python -m sweep task=mrpc sweep=budget    # target sets at equal budgets (make sweep SWEEP=budget)
    python -m sweep debug=tiny                # a tiny sweep in a minute, on the CPU

Re-running the same command resumes: finished trials are read from the study, a trial that was
running when its process died continues from its last completed epoch, and the decisions are
replayed from the history, so the sweep goes on exactly where it stopped (``sweep/resume.py``). The
entry point (``sweep/__main__.py``) then writes the reports of ``analysis/`` and prints the
recommendation: this package never imports ``analysis``, which builds on it. With ``sweep.storage`` on a database
server the same loop is one worker among many (``python -m sweep.worker``, see ``sweep/claims.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from sweep import claims
from sweep.budget import budget_ranks, budget_targets
from sweep.collapse import NOTE as COLLAPSED
from sweep.config import (
    HEAD_ONLY,
    NESTED_INITS,
    NESTED_REFUSAL,
    Config,
    Init,
    Method,
    MethodSettings,
    resolved_config,
    targets_key,
)
from sweep.data import dropped_line, take, task_data, task_digest
from sweep.decide import Outcome, Plan, Status, plan
from sweep.decision import HEAD_ONLY_LABEL, Action, StopReason, TrialSpec, config_label, stop_text
from sweep.errors import UserError
from sweep.faults import at, atomic_write
from sweep.nested import trial_equivalents
from sweep.paths import check_writable, results_root, sweep_dir
from sweep.record import TrialResult
from sweep.redact import config_yaml, mask_overrides, mask_url
from sweep.resume import CHECKPOINT, crashed_attempts, finished_result, orphans, reuse_finished, sweep_lock
from sweep.study import open_study, outcomes, sqlite_path, storage_url, study_name, tell_result
from sweep.trial import check_training_steps, run_trial, trial_name

#: keys of one trial that the sweep sets itself, and the sweep keys that set them
TRIAL_KEYS = {
    "lora.r": lambda v: f"sweep.ranks=[{v}]",
    "lora.targets": lambda v: f"sweep.start_targets={v} (the set whose rank is raised) or sweep.target_sets=[{v}]",
    "train.seed": lambda v: f"sweep.seeds=[{v}]",
    "lora.nested": lambda v: "sweep.screen=true (nested trials at the largest of sweep.ranks, then independent ones)",
    "lora.nested_ranks": lambda v: f"sweep.ranks={v} with sweep.screen=true",
}


def refuse_trial_keys(overrides: Sequence[str]) -> None:
    """Refuse a key of one trial on a sweep's command line: the sweep sets ``lora.r``, ``lora.targets``,
    ``train.seed``, ``lora.nested`` and ``lora.nested_ranks`` for each trial, so the value would be silently
    ignored (``lora.nested_draw`` is not refused: the screen's nested trials draw by it).

    Raises:
        UserError: names the key, its value and the sweep key to give instead.
    """
    for text in overrides:
        key, _, value = text.partition("=")
        key = key.lstrip("+~")
        if key in TRIAL_KEYS:
            raise UserError(
                f"{text} is ignored by a sweep, which sets {key} for each trial: give {TRIAL_KEYS[key](value)} "
                f"instead ({key} is for make trial)"
            )


def target_sets(cfg: Config) -> Dict[str, List[str]]:
    """Every target set the sweep may use, by ``targets_key``: a grid's ``sweep.target_sets``; the
    progressive procedure's and a budget sweep's ``sweep.start_targets`` too (a grid leaves them unused)."""
    start = [cfg.sweep.start_targets] if cfg.sweep.mode != "grid" else []
    sets = start + list(cfg.sweep.target_sets)
    return {targets_key(t): list(t) for t in sets}


def params_per_rank(cfg: Config) -> Dict[str, int]:
    """LoRA parameters per unit of rank of each target set, Σ(d+k) over its matrices (stored in the study
    as ``target_costs``), from the base model's module shapes; a budget sweep's also of the sets its budgets
    are given on (``sweep.budget.budget_targets``). Also checks, before any training, that every target set
    resolves, that a budget sweep's budgets give every set a rank (``sweep.budget.budget_ranks``), and that
    the ranks and ``data.max_length`` are within the model's limits (``check_limits``).

    Raises:
        UserError: a target set matches no module (lists the model's linear modules), a budget no set can
            spend, a setting beyond the model's limits.
    """
    from sweep.data import class_names
    from sweep.modeling import check_limits, family_applied, load_base_model, load_tokenizer, lora_param_count

    base = load_base_model(cfg.model, class_names(cfg))
    model_cfg = family_applied(base, cfg.model)
    sets = target_sets(cfg)
    per_rank = {}
    for key, targets in sets.items():
        try:
            per_rank[key] = lora_param_count(base, targets, model_cfg, 1)
        except UserError as e:  # name the sweep key that holds the set: the user may never have typed it
            where = "sweep.start_targets" if targets == list(cfg.sweep.start_targets) else "sweep.target_sets"
            raise UserError(f"{where} holds [{key}]: {e}") from None
    limits = [(list(sets.values()), max(cfg.sweep.ranks), "sweep.ranks")]
    if cfg.sweep.mode == "budget":
        for targets in budget_targets(cfg.sweep):
            if targets_key(targets) not in per_rank:
                try:
                    per_rank[targets_key(targets)] = lora_param_count(base, targets, model_cfg, 1)
                except UserError as e:
                    raise UserError(f"sweep.budgets holds targets [{targets_key(targets)}]: {e}") from None
        budgets = budget_ranks(cfg.sweep, per_rank)
        limits = [
            ([sets[t]], max(b.ranks[t] for b in budgets), f"sweep.budgets (the rank of {t})") for t in budgets[0].ranks
        ]
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    for checked, r, key in limits:
        check_limits(
            base,
            tokenizer,
            model_cfg,
            target_sets=checked,
            r=r,
            r_key=key,
            max_length=cfg.data.max_length,
            n_texts=len(cfg.task.text_fields or [None]),  # a causal-LM record: one sequence
            init=cfg.lora.init,
        )
    return per_rank


@functools.lru_cache(maxsize=None)
def head_rate() -> float:
    """Head only's own learning rate: ``train.lr`` of ``conf/method/head.yaml`` (``sweep.compare.own_rate``),
    which its rank-0 trials train at, not the sweep's LoRA rate."""
    from sweep.compare import own_rate

    return own_rate((), Method.head)


def trial_config(cfg: Config, spec: TrialSpec, targets: List[str]):
    """The typed and resolved config of one trial of the sweep (``targets``: the list behind ``spec.targets``).
    Rank 0 (``HEAD_ONLY``) is a trial of ``method=head`` at its own rate (``head_rate``); it reads no ``lora.*``
    key, which keep the sweep's values, but ``lora.init`` (kaiming: another one needs LoRA's A and B)."""
    if spec.r == HEAD_ONLY:
        tcfg = dataclasses.replace(
            cfg,
            method=MethodSettings(name=Method.head),
            lora=dataclasses.replace(cfg.lora, init=Init.kaiming),
            train=dataclasses.replace(cfg.train, seed=spec.seed, lr=head_rate()),
        )
        return tcfg, resolved_config(tcfg)
    nested = {"nested": True, "nested_ranks": list(cfg.sweep.ranks)} if spec.nested else {"nested": False}
    lr = {"lr": spec.lr} if spec.lr is not None else {}
    tcfg = dataclasses.replace(
        cfg,
        lora=dataclasses.replace(cfg.lora, r=spec.r, targets=list(targets), **nested),
        train=dataclasses.replace(cfg.train, seed=spec.seed, **lr),
    )
    return tcfg, resolved_config(tcfg)


def _run_dir(cfg: Config, tcfg: Config) -> Path:
    """``results/<task>/<sweep.name>/trials/r8-q-v-seed0``: a sweep trial's folder, keyed by its configuration
    (``…-lr0.001`` for a trial of the learning-rate stage at a rate other than the sweep's ``train.lr``; head
    only's ``head-seed0``, at its method's own rate)."""
    rate = f"-lr{tcfg.train.lr:g}" if tcfg.train.lr != cfg.train.lr and tcfg.method == cfg.method else ""
    return sweep_dir(cfg) / "trials" / (trial_name(tcfg) + rate)


def run_dir_of(cfg: Config, spec: TrialSpec) -> Path:
    """The folder of the sweep trial ``spec`` (its checkpoint, metrics and error logs)."""
    return _run_dir(cfg, trial_config(cfg, spec, target_sets(cfg)[spec.targets])[0])


def _execute(
    study,
    trial,
    spec: TrialSpec,
    targets: List[str],
    cfg: Config,
    progress: bool,
    log,
    reported: Set[int] = frozenset(),
) -> Optional[TrialResult]:
    """Run (or resume, or read back) one trial, report each epoch's validation objective as an
    intermediate value (``reported``: epochs the trial already has), and tell the study its result. A
    finished trial of another sweep with the same resolved configuration is read back
    (``sweep.resume.reuse_finished``).
    A crash (an exception other than a ``UserError``) is stored as status ``failed`` with its traceback
    in ``error-attempt<n>.log``; ``attempt`` counts the tries of this configuration and seed.

    Returns:
        The trial's record; None when another worker took the trial over (its heartbeats stopped for
        ``sweep.grace_period``), so this result was not stored.
    """
    from optuna.exceptions import UpdateFinishedTrialError

    tcfg, tresolved = trial_config(cfg, spec, targets)
    run_dir = _run_dir(cfg, tcfg)
    attempt = len(crashed_attempts(study, spec)) + 1
    trial.set_user_attr("attempt", attempt)
    done = set(reported)

    def report(record: dict) -> None:
        if record["epoch"] not in done:
            done.add(record["epoch"])
            try:
                trial.report(record[cfg.task.objective], record["epoch"])
            except UpdateFinishedTrialError:  # taken over by another worker: said below, at the tell
                pass

    digest = task_digest(tcfg)
    m = finished_result(run_dir, tresolved, digest)  # finished before the process died, not yet told
    if m is None:
        m = reuse_finished(results_root(cfg) / cfg.task.name, tresolved, run_dir, digest)  # the line names the source
        if m is None and (run_dir / CHECKPOINT).is_file():
            log(
                f"trial {trial.number} r={spec.r} {spec.targets} seed={spec.seed}: continuing from the epoch "
                f"checkpoint in {run_dir}"
            )
    if m is None:
        try:
            m = run_trial(tcfg, tresolved, run_dir, progress=progress, on_epoch=report)
        except UserError:
            raise
        except Exception as e:  # a crash is recorded (no result); the caller stops, a re-run retries it
            run_dir.mkdir(parents=True, exist_ok=True)
            log_file = run_dir / f"error-attempt{attempt}.log"
            with at(log_file, "write"):  # a full disk here too: one line naming the log (sweep.cli.run_cli)
                log_file.write_text(traceback.format_exc())
            m = TrialResult(
                r=spec.r,
                nested=spec.nested or None,
                targets=list(targets),
                seed=spec.seed,
                status=Status.FAILED,
                reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            )
    for record in m.epochs:  # epochs trained before an interruption
        report(record)
    try:
        tell_result(study, trial, m)
    except UpdateFinishedTrialError:  # our heartbeats stopped long enough for another worker to take over
        return None
    return m


def _attrs(cfg: Config, spec: TrialSpec, targets: List[str]) -> dict:
    """The user attributes that store a trial's configuration, ``spec`` first."""
    tcfg, _ = trial_config(cfg, spec, targets)
    return {
        "spec": dataclasses.asdict(spec),
        "targets": list(targets),
        "targets_key": spec.targets,
        "stage": spec.stage,
        "lr": tcfg.train.lr,
        "run_dir": str(_run_dir(cfg, tcfg)),
    }


def _start(trial, spec: TrialSpec, targets: List[str], cfg: Config) -> None:
    """Store the configuration on a new trial: the ``spec`` attribute first (one write), so a trial
    whose process dies at any point can be completed or adopted on resume, never left ambiguous."""
    for key, value in _attrs(cfg, spec, targets).items():
        trial.set_user_attr(key, value)
    if spec.r != HEAD_ONLY:  # head only has no param r: sweep.study.trial_rank
        trial.suggest_int("r", spec.r, spec.r, log=True)
    trial.suggest_int("seed", spec.seed, spec.seed)


@dataclass(frozen=True)
class Forecast:
    """What a sweep expects to spend, for the time left on its progress lines (``analysis/estimate.py``
    makes it; the driver only reads it).

    Attributes:
        trials: trials the whole sweep is expected to run (a simulation's mean; a grid's exact count).
        seconds_per_trial: one trial's estimated train + evaluation seconds (a measured probe), used until
            a trial of the study has measured seconds.
    """

    trials: float
    seconds_per_trial: float


#: ``forecast(per_rank, outcomes)`` of ``run_sweep``: prints what the sweep expects to spend before its
#: first trial, and returns it for the progress lines
ForecastFn = Callable[[Mapping[str, int], List[Outcome]], Optional[Forecast]]


def time_left(forecast: Forecast, history: Sequence[Outcome]) -> Tuple[float, float]:
    """(trials still expected, seconds they are expected to take): ``forecast.trials`` less the trials of
    ``history`` (ordinary-trial equivalents, ``sweep.nested.trial_equivalents``; none below 0), × the mean measured seconds of ``history``'s trials that have any (a
    crashed trial has none), else ``forecast.seconds_per_trial``."""
    measured = [o.seconds for o in history if o.seconds > 0]
    per_trial = sum(measured) / len(measured) if measured else forecast.seconds_per_trial
    left = max(forecast.trials - trial_equivalents(history), 0.0)
    return left, left * per_trial


def duration_text(seconds: float) -> str:
    """``4.2 s``, ``42 s``, ``12.5 min`` or ``2.1 h``."""
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _left_text(forecast: Forecast, history: Sequence[Outcome]) -> str:
    """`` | ~12.5 min left (~5.5 more trials of ~21.0 expected)``: the end of a trial's progress line."""
    left, seconds = time_left(forecast, history)
    if len(history) > forecast.trials:
        return f" | {len(history)} trials, more than the ~{forecast.trials:.1f} expected"
    return f" | ~{duration_text(seconds)} left (~{left:.1f} more trials of ~{forecast.trials:.1f} expected)"


def _trial_line(number: int, spec: TrialSpec, m: Optional[TrialResult], cfg: Config, attempt: int = 1) -> str:
    """The console line of a finished trial (``m`` None: taken over by another worker)."""
    nested = " nested (screen)" if spec.nested else ""
    rate = f" lr={spec.lr:g}" if spec.lr is not None else ""
    method = "" if cfg.method.name == "lora" else f"{cfg.method.name} "
    init = "" if cfg.lora.init == "kaiming" else f" init={cfg.lora.init}"
    what = HEAD_ONLY_LABEL if spec.r == HEAD_ONLY else f"{method}r={spec.r} {spec.targets}{init}{nested}"
    head = f"trial {number} {what}{rate} seed={spec.seed}" + (f" (attempt {attempt})" if attempt > 1 else "")
    if m is None:
        return (
            f"{head}: abandoned (no heartbeat for sweep.grace_period={cfg.sweep.grace_period} s, "
            "so another worker took the trial over)"
        )
    reused = f" (reused from {m.reused_from})" if m.reused_from else ""
    if m.status != Status.OK:
        return f"{head}: {m.status} ({m.reason}){reused}"
    screened = f" ({COLLAPSED}; left out of the statistics)" if m.collapsed else ""
    if m.rank_curve:
        screened = " (by rank: " + ", ".join(f"r={c['r']} {c['objective_value']:.4f}" for c in m.rank_curve) + ")"
    return (
        f"{head}: {cfg.task.objective} {m.objective_value:.4f}{screened} | "
        f"trainable {m.trainable_params:,} | {m.train_flops:.3e} train FLOPs | "
        f"{m.train_seconds + m.eval_seconds:.0f} s{reused}"
    )


def check_sweep(cfg: Config, overrides: Sequence[str] = (), log=print) -> Dict[str, int]:
    """Everything about a sweep's input that can be wrong, checked before its study is touched; tokenises
    the task's data (cached for every trial). Returns ``params_per_rank(cfg)``.

    Raises:
        UserError: a method without a rank, a trial's own key among ``overrides`` (``refuse_trial_keys``), a
            screen with an init that nested trials cannot take, an unwritable SQLite folder, a target set that
            matches no module, a setting beyond the model's limits (``lora.init`` among them), missing data, a
            trial without a step to learn in.
    """
    refuse_trial_keys(overrides)
    if not cfg.method.ranked:
        raise UserError(
            f"method={cfg.method.name} has no rank to sweep (ranked: method=lora, dora, adalora); compare it with the "
            f"LoRA recommendation by `make compare TASK={cfg.task.name}`"
        )
    if cfg.sweep.screen and cfg.sweep.mode != "progressive":
        trains = {"grid": "a grid trains every configuration", "budget": "a budget sweep trains each set at its budget"}
        raise UserError(
            f"sweep.screen=true with sweep={cfg.sweep.mode}: {trains[cfg.sweep.mode]}, so there is nothing to "
            "screen; use the progressive sweep (SWEEP=progressive) or sweep.screen=false"
        )
    if cfg.sweep.screen and cfg.lora.init not in NESTED_INITS:
        raise UserError(
            f"sweep.screen=true with lora.init={cfg.lora.init}: the screen's trials are nested, and "
            f"{NESTED_REFUSAL[cfg.lora.init]}; give sweep.screen=false, or lora.init={' or '.join(NESTED_INITS)}"
        )
    if sqlite_path(storage_url(cfg)):
        check_writable(sqlite_path(storage_url(cfg)).parent, "sweep.storage")
    per_rank = params_per_rank(cfg)
    data = task_data(cfg)  # also tokenises once for every trial
    if dropped_line(cfg):
        log(dropped_line(cfg))
    check_training_steps(cfg, len(take(data["train"], cfg.data.max_train_samples)))
    return per_rank


def run_sweep(
    cfg: Config,
    resolved,
    *,
    overrides: List[str] = (),
    progress: bool = True,
    log=print,
    forecast: Optional[ForecastFn] = None,
) -> Plan:
    """Run the sweep of ``cfg`` to its end (or its compute cap), resuming whatever is in its study.
    ``overrides`` (the command line) are stored so that the report can show commands that continue it.
    ``forecast`` (``ForecastFn``), called once before the first trial with the LoRA parameters per rank and
    the study's finished trials, prints what the sweep expects to spend; its ``Forecast`` adds the expected
    time left to every trial's line.

    On SQLite this is the only process on the study (``sweep.resume.sweep_lock``: ``study.db.lock``). On
    a database server it is one worker among any number: it claims runnable trials (``sweep/claims.py``),
    waits while every runnable trial is held by another worker, and returns once the sweep is over.

    Returns the final ``Plan`` (decisions, recommendation, stop reason); its ``next`` is not None only
    when a trial crashed in this run: the sweep stops there, and re-running it retries the trial.

    Raises:
        UserError: a trial's own key among ``overrides`` (``refuse_trial_keys``), incompatible resume,
            another process on a SQLite sweep, a target set that matches
            no module, missing data; all before the study is changed.
    """
    from optuna.trial import TrialState

    sdir = sweep_dir(cfg)
    sets = target_sets(cfg)
    per_rank = check_sweep(cfg, overrides, log)  # everything that can be wrong, before the study is touched
    shared = claims.is_shared(storage_url(cfg))
    with nullcontext() if shared else sweep_lock(sqlite_path(storage_url(cfg))):
        study = open_study(cfg, resolved)
        study.set_user_attr("command_overrides", mask_overrides(overrides))
        sdir.mkdir(parents=True, exist_ok=True)
        study.set_user_attr("target_costs", per_rank)
        atomic_write(sdir / "config.yaml", lambda tmp: tmp.write_text(config_yaml(resolved)))
        log(
            f"sweep {study_name(cfg)} ({cfg.sweep.mode}) on {cfg.model.name}: study {mask_url(storage_url(cfg))}"
            + (f", worker {claims.worker_id()}" if shared else "")
        )
        expected = forecast(per_rank, outcomes(study)) if forecast is not None else None
        blank, crashed = ([], []) if shared else _finish_orphans(study, cfg, progress, log)
        printed = 0
        while True:
            claims.fail_stale_trials(study)  # trials of dead workers become runnable again
            p = plan(cfg.sweep, outcomes(study), per_rank)
            for d in p.decisions[printed:]:
                log("decision " + d.line())
            printed = len(p.decisions)
            study.set_user_attr("decisions", [d.to_dict() for d in p.decisions])
            if p.next is None or p.next in crashed:  # a crash is no result: nothing can be decided past it
                break
            runnable = [spec for spec in p.runnable if spec not in crashed]
            if shared:
                if not runnable:  # what is left crashed in this worker: stop, as a single process does
                    break
                got = claims.claim_runnable(study, runnable, lambda s: _attrs(cfg, s, sets[s.targets]))
                if got is None:  # every runnable trial is held by another worker
                    time.sleep(cfg.sweep.heartbeat_interval)
                    continue
                trial, spec = got
            else:
                spec = p.next
                trial = blank.pop(0) if blank else study.ask()
                _start(trial, spec, sets[spec.targets], cfg)
            earlier = crashed_attempts(study, spec)
            if earlier:
                log(
                    f"retrying r={spec.r} {spec.targets} seed={spec.seed}: attempt {len(earlier) + 1} "
                    f"(attempt {len(earlier)} crashed: {earlier[-1]})"
                )
            with claims.heartbeat(trial):
                m = _execute(study, trial, spec, sets[spec.targets], cfg, progress, log)
            left = _left_text(expected, outcomes(study)) if expected is not None else ""
            log(_trial_line(trial.number, spec, m, cfg, len(earlier) + 1) + left)
            if m is not None and m.status == Status.FAILED:
                crashed.append(spec)
        for trial in blank:  # only when the plan ended with blank trials left over
            study.tell(trial, state=TrialState.FAIL)
        if p.next is None:  # after a crash the sweep is not over: no answer is stored
            study.set_user_attr("recommendation", list(p.recommendation) if p.recommendation else None)
            study.set_user_attr("stop_reason", p.stop_reason)
    return p


def _finish_orphans(study, cfg: Config, progress: bool, log) -> Tuple[list, List[TrialSpec]]:
    """SQLite, under ``sweep_lock``: finish the trials a dead process left RUNNING (``sweep.resume.orphans``)
    from their last epoch checkpoints. Returns (the blank orphans, to be adopted by the next trials the
    plan asks for; the configurations that crashed again here)."""
    blank, known = orphans(study)
    crashed = []
    for o in known:
        _start(o.trial, o.spec, o.targets, cfg)
        log(f"resuming trial {o.trial.number} r={o.spec.r} {o.spec.targets} seed={o.spec.seed} (interrupted)")
        m = _execute(study, o.trial, o.spec, o.targets, cfg, progress, log, o.reported)
        log(_trial_line(o.trial.number, o.spec, m, cfg, o.attempt))
        if m is not None and m.status == Status.FAILED:
            crashed.append(o.spec)
    return blank, crashed


def crash_line(cfg: Config, p: Plan) -> str:
    """The last line of a sweep stopped by a crashed trial (``p.next`` is that trial): where its traceback
    is and that re-running the same command retries it."""
    return (
        f"ranksweep: stopped: trial r={p.next.r} {p.next.targets} seed={p.next.seed} crashed, see "
        f"error-attempt*.log in {run_dir_of(cfg, p.next)}; fix the cause and re-run the same command to retry it"
    )


def recommendation_line(p: Plan, sdir: Path, lr: Optional[float] = None) -> str:
    """The last line of a finished sweep: the recommendation (or why there is none; provisional when the
    compute cap cut the procedure short; every trial collapsed, at the learning rate ``lr``) and where the
    results are."""
    if p.recommendation:
        r, t = p.recommendation
        provisional = (
            "; provisional: the compute cap cut the procedure short, see report.md"
            if p.stop_reason == StopReason.BUDGET
            else ""
        )
        rate = f" at lr={p.lr:g}" if p.lr is not None else ""
        what = f"{HEAD_ONLY_LABEL}: no adapter" if r == HEAD_ONLY else config_label(r, t)
        why = stop_text(p.stop_reason, p.decisions)
        why = "every adapter trial collapsed" if r == HEAD_ONLY and p.stop_reason == StopReason.COLLAPSED else why
        return f"recommendation: {what}{rate} ({why}{provisional}); results in {sdir}"
    collapsed = next((d for d in p.decisions if d.action == Action.COLLAPSED), None)
    if p.stop_reason == StopReason.COLLAPSED and collapsed is not None:
        at = f" (this sweep: train.lr={lr:g})" if lr is not None else ""
        return f"no recommendation: {collapsed.reason}{at}; results in {sdir}"
    if p.stop_reason == StopReason.BUDGET and any(d.action == Action.SCREEN for d in p.decisions):
        return (
            f"no recommendation: the compute cap stopped the sweep before an independent trial (the screen's "
            f"nested trials inform it, never the recommendation); raise it and re-run; results in {sdir}"
        )
    return f"no recommendation: no trial succeeded ({p.stop_reason}); results in {sdir}"

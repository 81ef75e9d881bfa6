"""The Optuna study that is a sweep's single source of truth: where it lives, what a compatible resume
is, how a trial's configuration and results are stored and read back.

This module is the one store of trial records: ``tell_result`` writes a ``sweep.record.TrialResult`` onto
an Optuna trial and ``stored_result`` / ``result_of`` read it back; nothing else maps a record's fields to
or from a trial (``sweep/claims.py`` only adds a ``reason`` to a claim it steps back from).

Layout of one trial: params ``r`` and ``seed`` (Optuna params, fixed values; head only, rank 0, has no ``r``:
``trial_rank``); user attributes ``spec``, ``targets`` (list), ``targets_key``, ``stage``, ``run_dir`` and, once finished, the record's fields
marked ``study`` (``sweep.record.record_fields("study")``: costs, metrics, ``status``, ``reason``,
``reused_from``…). State COMPLETE (value = objective) for ``ok`` trials, FAIL for ``diverged`` and
``failed`` ones; FAIL without a ``status`` is an abandoned trial (its worker died, or stepped back from
a claim, see ``sweep/claims.py``), not a result. The validation objective of each epoch is an
intermediate value (step = epoch, for ``optuna-dashboard``). Study user attributes: ``fingerprint``
(the settings that give finished trials their meaning), ``settings`` (the sweep settings), ``task``,
``model``, ``objective``, ``decisions`` (every decision so far, with reasons and numbers) and
``target_costs`` (Σ(d+k) per target set: r·cost is a set's LoRA parameter count).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import List, Optional, Tuple

from sweep.claims import storage_for
from sweep.config import HEAD_ONLY, Config, SweepSettings
from sweep.decide import Outcome, Status
from sweep.errors import UserError
from sweep.faults import fault_line
from sweep.metrics import metric_of
from sweep.paths import sweep_dir
from sweep.record import TrialResult, record_fields
from sweep.redact import mask_text, mask_url, masked_hint
from sweep.resume import check_fingerprint, run_fingerprint


def storage_url(cfg: Config) -> str:
    """``sweep.storage`` or SQLite at ``results/<task>/<sweep.name>/study.db`` (absolute path; the
    path is URL-escaped, so a ``?``, ``#`` or ``%`` in ``results_dir`` never moves the file); a plain
    ``postgresql://`` URL gets the psycopg 3 driver (``postgresql+psycopg://``)."""
    from sqlalchemy.engine import URL

    url = cfg.sweep.storage or URL.create("sqlite", database=str(sweep_dir(cfg) / "study.db")).render_as_string()
    return "postgresql+psycopg://" + url[len("postgresql://") :] if url.startswith("postgresql://") else url


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite storage URL (as SQLAlchemy reads it, %-escapes decoded), else None."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return Path(u.database) if u.get_backend_name() == "sqlite" and u.database else None


def study_name(cfg: Config) -> str:
    """The Optuna study name, derived from task and sweep name: ``ranksweep-mrpc-default``."""
    return f"ranksweep-{cfg.task.name}-{cfg.sweep.name}"


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_study(cfg: Config, resolved):
    """Create or load the sweep's study and check that resuming it is meaningful
    (``sweep.resume.check_fingerprint``): a study made with other model, task, LoRA scaling/alpha/dropout,
    training or data settings is refused, its finished trials would not be comparable with new ones.

    Raises:
        UserError: the storage cannot be opened; incompatible settings (names the first differing key,
            old and new value).
    """
    import optuna

    new = run_fingerprint(cfg, resolved)  # before the study exists: a bad device leaves nothing behind
    _quiet_optuna()
    url, name = storage_url(cfg), study_name(cfg)
    try:
        if sqlite_path(url):
            sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
        # Optuna's direction only labels the trials' values for optuna-dashboard: the decisions read the
        # objective's direction from sweep.metrics; an existing study keeps the direction it was made with
        direction = "maximize" if metric_of(cfg.task.objective).sign > 0 else "minimize"
        study = optuna.create_study(
            storage=storage_for(url, cfg.sweep), study_name=name, direction=direction, load_if_exists=True
        )
    except UserError:
        raise
    except Exception as e:  # unreachable server, missing driver, unwritable file: the URL's problem, in one line
        if fault_line(e):  # a full disk or no permission: run_cli names the file and the cause
            raise
        why = mask_text(str(e).strip().splitlines()[0] if str(e).strip() else "", url)
        raise UserError(
            f"cannot open sweep.storage {mask_url(url)}: {type(e).__name__}: {why}{masked_hint(url)}"
        ) from None
    check_fingerprint(study, cfg, new)
    _check_rates(study, cfg)
    # this run's decisions replace the stored ones; until it ends there is no final answer
    study.set_user_attr("stop_reason", None)
    study.set_user_attr("recommendation", None)
    study.set_user_attr("settings", {**asdict(cfg.sweep), "storage": cfg.sweep.storage and mask_url(cfg.sweep.storage)})
    study.set_user_attr("task", cfg.task.name)
    study.set_user_attr("model", cfg.model.name)
    study.set_user_attr("objective", cfg.task.objective)
    study.set_user_attr("metrics", list(cfg.task.metrics))
    return study


def _check_rates(study, cfg: Config) -> None:
    """Refuse to resume a study holding trials at learning rates other than ``train.lr`` (it ran with a
    bracket, ``sweep.lrs``) without a bracket: its decisions would pool those rates into one configuration.

    Raises:
        UserError: names the rates and the bracket to give again, or a new ``sweep.name``.
    """
    if cfg.sweep.lrs is not None and len(cfg.sweep.lrs) > 1:
        return
    # head only (r=0) trains at its own rate, whatever the sweep's
    other = sorted({o.lr for o in outcomes(study) if o.lr is not None and o.lr != cfg.train.lr and o.r != HEAD_ONLY})
    if other:
        stored = (study.user_attrs.get("settings") or {}).get("lrs")
        bracket = f"sweep.lrs=[{','.join(f'{x:g}' for x in stored)}]" if stored else "its bracket (sweep.lrs)"
        raise UserError(
            f"sweep '{cfg.sweep.name}' holds trials at lr={', '.join(f'{x:g}' for x in other)} besides "
            f"train.lr={cfg.train.lr:g} (it ran with a bracket of rates): give {bracket} again, or a new sweep.name"
        )


def load_study(url: str, name: str | None = None, missing_hint: str = "run `make sweep TASK=<task>` first"):
    """Load an existing study (the only one in the storage when ``name`` is None).

    Raises:
        UserError: no study at ``url`` (or no study named ``name``), with the names that exist.
    """
    import optuna

    _quiet_optuna()
    if sqlite_path(url) and not sqlite_path(url).is_file():
        raise UserError(f"no sweep study at {sqlite_path(url)}; {missing_hint} (or point sweep.storage at one)")
    try:
        names = optuna.get_all_study_names(storage=url)
    except Exception as e:
        if fault_line(e):  # a full disk or no permission: run_cli names the file and the cause
            raise
        why = mask_text(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, url)
        raise UserError(f"cannot open storage {mask_url(url)}: {why}{masked_hint(url)}") from None
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise UserError(f"no study '{name}' in {mask_url(url)}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=url)


def settings_of(study) -> SweepSettings:
    """The sweep settings stored with the study (those of its latest run); keys this version no longer
    has (``min_delta`` and ``noise_z`` of studies made before the calibrated procedure) are ignored,
    keys it did not have yet take the default configuration's values (``sweep.cli.defaults``)."""
    from sweep.cli import defaults

    known = {f.name for f in fields(SweepSettings)}
    stored = {k: v for k, v in study.user_attrs["settings"].items() if k in known}
    return SweepSettings(**{**asdict(defaults().sweep), **stored})


def result_attrs(result: TrialResult) -> dict:
    """The user attributes that store ``result`` on its trial: its fields marked ``study`` that hold a
    value (not None, not empty); the others read back as their defaults (``result_of``)."""
    data = result.to_dict()
    return {k: data[k] for k in record_fields("study") if data[k] not in (None, {}, [])}


def tell_result(study, trial, result: TrialResult) -> None:
    """Store ``result`` on ``trial`` (``result_attrs``) and finish it: COMPLETE with the objective for an
    ``ok`` trial with a value, else FAIL.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: another worker took the trial over meanwhile.
    """
    from optuna.trial import TrialState

    for key, value in result_attrs(result).items():
        trial.set_user_attr(key, value)
    if result.status == Status.OK and result.objective_value is not None:
        study.tell(trial, result.objective_value)
    else:
        study.tell(trial, state=TrialState.FAIL)


def trial_rank(trial) -> Optional[int]:
    """A trial's rank: its param ``r``; head only's 0 (``sweep.ranks`` starting at 0) from its ``spec``, as it
    has no param ``r``: the others' log-scaled ``IntDistribution`` cannot hold 0, and Optuna refuses a log and
    a linear distribution under one name in a study. None: neither stored (yet)."""
    if "r" in trial.params:
        return int(trial.params["r"])
    spec = trial.user_attrs.get("spec")
    return HEAD_ONLY if spec and spec.get("r") == HEAD_ONLY else None


def stored_result(trial) -> TrialResult:
    """What a frozen trial in any state holds of its record: its params ``r`` and ``seed``, its target
    list and the record fields it stored (``result_attrs``); the value of a COMPLETE trial is its
    ``objective_value``. Fields it has not stored (yet) read as their defaults."""
    from optuna.trial import TrialState

    a = trial.user_attrs
    data = {k: a[k] for k in record_fields("study") if k in a}
    data.update({k: int(trial.params[k]) for k in ("seed",) if k in trial.params})
    data["r"] = trial_rank(trial)
    if "targets" in a or "targets_key" in a:
        data["targets"] = list(a.get("targets") or a["targets_key"].split(","))
    # an ok trial's value is the study's; a FAIL trial has none, whatever it stored
    data["objective_value"] = trial.value if trial.state == TrialState.COMPLETE else None
    return TrialResult.from_dict(data)


def result_of(trial) -> Optional[TrialResult]:
    """The record of a finished (COMPLETE or FAIL) frozen trial that carries a configuration
    (``stored_result``); None for a trial still running, one without a configuration and an abandoned
    one (FAIL without a ``status``: its worker died or stepped back)."""
    from optuna.trial import TrialState

    a = trial.user_attrs
    if trial.state not in (TrialState.COMPLETE, TrialState.FAIL) or "targets_key" not in a or trial_rank(trial) is None:
        return None
    if trial.state == TrialState.FAIL and "status" not in a:
        return None
    return stored_result(trial)


def numbered_results(trials) -> List[Tuple[int, TrialResult]]:
    """(trial number, record) of every finished trial with a configuration among the frozen ``trials``
    (``result_of``), in trial-number order."""
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        result = result_of(t)
        if result is not None:
            out.append((t.number, result))
    return out


def outcomes(study) -> List[Outcome]:
    """Every finished trial (COMPLETE or FAIL) that carries a configuration, as decision inputs, in
    trial-number order; abandoned trials (FAIL without a ``status``) are left out."""
    return [result.outcome() for _, result in numbered_results(study.get_trials(deepcopy=False))]

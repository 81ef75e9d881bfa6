"""Many workers on one sweep: claims, heartbeats and stale trials in a database server's Optuna study.

Optuna's RDB storage on a database server (PostgreSQL; MySQL works the same way) is its documented way
for many processes on many machines to share one study; SQLite is not ("database is locked", optuna#820),
so a SQLite study keeps its one-process lock (``sweep.resume.sweep_lock``). Every worker replays the
decisions from the finished trials (``sweep/decide.py``) and runs one of the trials the plan lists as
runnable now:

- **claim**: the worker adds the trial, configuration included, in one transaction (Optuna numbers a
  new trial under a row lock on its study, so numbers follow commit order), re-reads the study, and
  the lowest-numbered trial of a configuration (running or finished with a result) wins; a worker whose
  trial is not that one steps back (its trial ends FAIL without a ``status``: abandoned) and tries the
  next runnable trial. Because a lower number was committed first, every claimant sees it: two workers
  never both win.
- **heartbeat**: while a trial trains, a thread records its heartbeat every ``sweep.heartbeat_interval``
  seconds (``RDBStorage.record_heartbeat``).
- **stale trials**: before looking for work, ``optuna.storages.fail_stale_trials`` fails every running
  trial whose heartbeat is older than ``sweep.grace_period`` seconds (its worker died). FAIL without a
  ``status`` is abandoned, not a result (``sweep.study.outcomes``), so its configuration becomes runnable
  again, and the worker that claims it continues from the epoch checkpoint in the trial's folder: the
  results folder must be shared by all workers (the same path on every machine).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Tuple

from sweep.config import HEAD_ONLY, SweepSettings
from sweep.decision import TrialSpec

Key = Tuple[int, str, int, bool, Optional[float]]  # (r, targets key, seed, nested, lr: None = train.lr)
#: tries to open a database server's storage while other workers create Optuna's tables in it
SCHEMA_ATTEMPTS = 5


def is_shared(url: str) -> bool:
    """Whether ``url`` is a database server (many workers) rather than a SQLite file (one process)."""
    return not url.startswith("sqlite")


def storage_for(url: str, settings: SweepSettings):
    """What ``optuna.create_study(storage=…)`` gets: an ``RDBStorage`` of ``url``; on a database server
    with heartbeats every ``settings.heartbeat_interval`` s and a grace period of ``settings.grace_period`` s.

    Processes that open a new database together race to create Optuna's tables (``UNIQUE constraint
    failed: alembic_version.version_num``): workers on a server; on SQLite a report or a dashboard opening
    the file the sweep is creating (two sweeps cannot: the study lock comes first). The losers' integrity
    error is retried once the winner's tables exist."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            if not is_shared(url):
                return optuna.storages.RDBStorage(url)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=settings.heartbeat_interval,
                    grace_period=settings.grace_period,
                    engine_kwargs={"pool_pre_ping": True},
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(0.5 + random.random())


def fail_stale_trials(study) -> None:
    """Fail the running trials whose worker stopped beating (no-op without heartbeats, e.g. SQLite)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def key_of(spec: TrialSpec) -> Key:
    return spec.r, spec.targets, spec.seed, spec.nested, spec.lr


def _trial_key(t) -> Optional[Key]:
    spec = t.user_attrs.get("spec")
    return (spec["r"], spec["targets"], spec["seed"], bool(spec.get("nested", False)), spec.get("lr")) if spec else None


def _holds(t) -> bool:
    """A trial that holds its configuration: running, or finished with a result (not abandoned)."""
    from optuna.trial import TrialState

    return t.state == TrialState.RUNNING or (t.state.is_finished() and "status" in t.user_attrs)


def worker_id() -> str:
    """``host:pid``: who runs a trial, stored with its claim (user attribute ``claim``, for people and the dashboard)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(study, spec: TrialSpec, user_attrs: dict):
    """Claim ``spec``: add a RUNNING trial carrying it, re-read, keep it if it is the lowest-numbered
    trial that holds the configuration. Returns the ``optuna.trial.Trial`` (its first heartbeat
    recorded), or None after stepping back.

    ``user_attrs`` must hold ``spec`` (``dataclasses.asdict(spec)``); ``claim`` (``host:pid/token``) is added.
    """
    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState

    token = f"{worker_id()}/{uuid.uuid4().hex[:8]}"
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.RUNNING,
            # head only (r=0) has no param r: sweep.study.trial_rank
            params={**({"r": spec.r} if spec.r != HEAD_ONLY else {}), "seed": spec.seed},
            distributions={
                **({"r": IntDistribution(spec.r, spec.r, log=True)} if spec.r != HEAD_ONLY else {}),
                "seed": IntDistribution(spec.seed, spec.seed),
            },
            user_attrs={**user_attrs, "claim": token},
        )
    )
    holders = [t for t in study.get_trials(deepcopy=False) if _trial_key(t) == key_of(spec) and _holds(t)]
    mine = next(t for t in holders if t.user_attrs.get("claim") == token)
    trial = optuna.trial.Trial(study, mine._trial_id)
    first = min(holders, key=lambda t: t.number)
    if first is mine:
        _beat(trial)
        return trial
    trial.set_user_attr("reason", f"stepped back: trial {first.number} holds the same configuration")
    study.tell(trial, state=TrialState.FAIL)
    return None


def claim_runnable(
    study, runnable: List[TrialSpec], attrs_of: Callable[[TrialSpec], dict]
) -> Optional[Tuple[object, TrialSpec]]:
    """Claim the first of ``runnable`` (a plan's ``runnable``) that no running trial holds; returns
    (trial, spec), or None when every one is held (wait and ask again). Running trials count against
    the plan's list, which ``max_trials`` may have cut, so parallel workers never exceed the cap."""
    from optuna.trial import TrialState

    running = [_trial_key(t) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    free = [s for s in runnable if key_of(s) not in running][: max(0, len(runnable) - len(running))]
    for spec in free:
        trial = claim(study, spec, attrs_of(spec))
        if trial is not None:
            return trial, spec
    return None


def _interval(trial) -> Optional[int]:
    """The storage's heartbeat interval in seconds; None without heartbeats (SQLite)."""
    get = getattr(trial.storage, "get_heartbeat_interval", None)
    return get() if get else None


def _beat(trial) -> None:
    if _interval(trial):
        trial.storage.record_heartbeat(trial._trial_id)


@contextmanager
def heartbeat(trial) -> Iterator[None]:
    """Record ``trial``'s heartbeat every ``heartbeat_interval`` s while the block runs (no-op without
    heartbeats). A beat that fails (the database briefly unreachable) is retried at the next one; only
    ``grace_period`` s without any lets another worker take the trial over."""
    interval = _interval(trial)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                _beat(trial)
            except Exception:  # retried at the next beat; see the docstring
                pass

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

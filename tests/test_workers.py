"""Many workers on one sweep, against a real PostgreSQL server started in a temporary folder: racing
claims, a worker SIGKILLed mid-trial, the result of N workers against the result of one, SQLite refusals."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import optuna
import pytest
from conftest import PROJECT, hold_lock, run_main, run_module
from optuna.trial import TrialState

from sweep import claims
from sweep.__main__ import main as sweep_main
from sweep.cli import defaults
from sweep.decision import TrialSpec
from sweep.resume import sweep_lock
from sweep.study import outcomes

# two epochs (a worker can die between them, leaving a checkpoint), one thread per worker (per-epoch
# losses are then bit-identical whichever process trains), heartbeats every second, stale after 6 s (a
# margin for heartbeat threads that a busy machine schedules late)
WORKER = [
    "debug=tiny",
    "sweep=grid",
    "train.epochs=2",
    "train.lr=5e-3",
    "data.max_train_samples=64",
    "data.max_eval_samples=32",
    "sweep.seeds=[0]",
    "sweep.target_sets=[[q,v],[q,k,v,o]]",
    "train.threads=1",
    "sweep.heartbeat_interval=1",
    "sweep.grace_period=6",
]


def load(url: str, name: str, interval: int = 1, grace: int = 3):
    storage = claims.storage_for(url, replace(defaults().sweep, heartbeat_interval=interval, grace_period=grace))
    return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)


def attrs(spec: TrialSpec) -> dict:
    return {
        "spec": asdict(spec),
        "targets": spec.targets.split(","),
        "targets_key": spec.targets,
        "stage": spec.stage,
        "run_dir": "unused",
    }


def test_racing_claims_of_one_configuration_leave_exactly_one_holder(postgres):
    spec = TrialSpec(4, "q,v", 0, "grid")
    studies = [load(postgres, "race") for _ in range(6)]
    start = threading.Barrier(len(studies))
    won = [None] * len(studies)

    def worker(i):
        start.wait()
        won[i] = claims.claim(studies[i], spec, attrs(spec))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(studies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [t for t in won if t is not None]
    assert len(winners) == 1
    trials = studies[0].get_trials(deepcopy=False)
    assert len(trials) == 6 and [t.state for t in trials].count(TrialState.RUNNING) == 1
    running = next(t for t in trials if t.state == TrialState.RUNNING)
    assert running.number == min(t.number for t in trials) == winners[0].number  # the lowest number wins
    assert all(
        t.user_attrs["reason"] == f"stepped back: trial {running.number} holds the same configuration"
        for t in trials
        if t.state == TrialState.FAIL
    )
    assert outcomes(studies[0]) == []  # stepping back is no result
    # a finished result holds its configuration too: a later claim of it steps back
    winners[0].set_user_attr("status", "ok")
    studies[0].tell(winners[0], 0.8)
    assert claims.claim(studies[0], spec, attrs(spec)) is None
    # the holder of another configuration is not disturbed, and a free one is claimed
    got = claims.claim_runnable(studies[1], [spec, TrialSpec(4, "q,v", 1, "grid")], attrs)
    assert got is not None and got[1] == TrialSpec(4, "q,v", 1, "grid")


def state_after_stale_check(study) -> TrialState:
    """Fail the stale trials of ``study``, then the state of its first trial."""
    claims.fail_stale_trials(study)
    return study.get_trials(deepcopy=False)[0].state


@pytest.mark.slow  # a 5 s grace period waited out; claims are tested without waiting in the default suite
def test_a_trial_without_heartbeat_for_the_grace_period_is_abandoned(postgres):
    grace = 5
    study = load(postgres, "stale", interval=1, grace=grace)
    spec = TrialSpec(1, "q,v", 0, "grid")
    claimed = time.monotonic()  # no heartbeat of the trial is older than this
    trial = claims.claim(study, spec, attrs(spec))  # its first heartbeat is recorded
    with claims.heartbeat(trial):
        time.sleep(2)
    assert state_after_stale_check(study) == TrialState.RUNNING  # it was beating all along
    # then silent (the heartbeat thread has been joined): polled until failed, since a busy machine may beat
    # late and check late; a fixed sleep just past the grace period would race both
    deadline = time.monotonic() + grace + 60
    while state_after_stale_check(study) == TrialState.RUNNING:
        assert time.monotonic() < deadline, f"still running 60 s after the grace period ({grace} s)"
        time.sleep(0.25)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.FAIL
    assert time.monotonic() - claimed > grace  # failed only once its last heartbeat was a grace period old
    assert outcomes(study) == []
    assert claims.claim(study, spec, attrs(spec)) is not None  # the configuration is free again


def worker_args(tmp: Path, glue: Path, url: str, *extra: str):
    return [*WORKER, f"data.dir={glue}", f"results_dir={tmp}", f"sweep.storage={url}", *extra]


def start_worker(args, log: Path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sweep.worker", *args],
        cwd=PROJECT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def kill_a_worker_mid_trial(url: str, name: str, procs, timeout=600) -> int:
    """SIGKILL the worker of the first trial that has an epoch checkpoint; returns that trial's number."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p in procs):
        try:
            running = optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the workers are creating the tables or the study
            running = []
        for t in running:
            if (Path(t.user_attrs["run_dir"]) / "checkpoint.pt").exists():
                pid = int(t.user_attrs["claim"].split("/")[0].rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                return t.number
        time.sleep(0.05)
    raise AssertionError("no worker reached an epoch checkpoint")


def results(url: str, name: str):
    """(r, targets, seed, state, value, intermediate values, per-epoch records of metrics.json) of every trial
    that holds a result, the numbers of the abandoned ones (their worker died) and the study's attributes.
    Trials that stepped back from a claim (workers that started together) are left out."""
    study = optuna.load_study(study_name=name, storage=url)
    held, abandoned = [], []
    for t in study.get_trials():
        if "status" not in t.user_attrs:
            assert t.state == TrialState.FAIL
            if not t.user_attrs.get("reason", "").startswith("stepped back: trial "):
                abandoned.append(t.number)
            continue
        epochs = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())["epochs"]
        held.append(
            (
                t.params["r"],
                t.user_attrs["targets_key"],
                t.params["seed"],
                t.state.name,
                t.value,
                t.intermediate_values,
                epochs,
            )
        )
    return sorted(held, key=repr), abandoned, study.user_attrs


@pytest.mark.slow  # a SIGKILL and a 6 s grace period: the default suite's SIGKILL is test_sweep.py's
def test_two_workers_one_killed_mid_trial_the_other_continues_it(postgres, glue_dir, tmp_path):
    a = worker_args(tmp_path, glue_dir, postgres, "sweep.name=two", "sweep.ranks=[1]")
    procs = [start_worker(a, tmp_path / f"worker{i}.log") for i in range(2)]
    killed = kill_a_worker_mid_trial(postgres, "ranksweep-mrpc-two", procs)
    codes = sorted(p.wait(timeout=600) for p in procs)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [-signal.SIGKILL, 0], logs
    survivor = next(log for log, p in zip(logs, procs) if p.returncode == 0)
    held, abandoned, study_attrs = results(postgres, "ranksweep-mrpc-two")
    assert [(r, t, s, state) for r, t, s, state, *_ in held] == [
        (1, "q,k,v,o", 0, "COMPLETE"),
        (1, "q,v", 0, "COMPLETE"),
    ]
    assert abandoned == [killed]
    assert "continuing from the epoch checkpoint" in survivor and "Traceback" not in survivor
    for *_, value, intermediate, epochs in held:  # the dashboard's learning curve is the validation accuracy
        assert intermediate == {e["epoch"]: e["accuracy"] for e in epochs} and len(epochs) == 2
        assert value == max(e["accuracy"] for e in epochs)
    assert study_attrs["stop_reason"] == "grid complete"


@pytest.mark.slow
def test_three_workers_one_killed_equal_one_process(postgres, glue_dir, tmp_path):
    """The issue's "done when": 3 workers, one SIGKILLed mid-trial; every (r, targets, seed) has one COMPLETE
    trial and the trials, per-epoch losses and recommendation equal those of one process on SQLite."""
    one = tmp_path / "one"
    ref = run_module("sweep", *WORKER, f"data.dir={glue_dir}", f"results_dir={one}", "sweep.name=three")
    assert ref.returncode == 0, ref.stderr
    many = tmp_path / "many"
    many.mkdir()
    a = worker_args(many, glue_dir, postgres, "sweep.name=three")
    procs = [start_worker(a, many / f"worker{i}.log") for i in range(3)]
    killed = kill_a_worker_mid_trial(postgres, "ranksweep-mrpc-three", procs)
    codes = sorted(p.wait(timeout=600) for p in procs)
    logs = [(many / f"worker{i}.log").read_text() for i in range(3)]
    assert codes == [-signal.SIGKILL, 0, 0], logs
    assert not any("locked" in log or "Traceback" in log for log in logs)  # no "database is locked", no crash
    held, abandoned, attrs_many = results(postgres, "ranksweep-mrpc-three")
    want, _, attrs_one = results(f"sqlite:///{one / 'mrpc' / 'three' / 'study.db'}", "ranksweep-mrpc-three")
    assert abandoned == [killed]
    assert len(held) == 6 == len({(r, t, s) for r, t, s, *_ in held})  # ranks [1, 2, 4] × 2 target sets
    assert held == want  # same values, intermediate values and bit-identical per-epoch losses
    assert attrs_many["recommendation"] == attrs_one["recommendation"]
    assert attrs_many["decisions"] == attrs_one["decisions"]


@pytest.mark.slow  # two sweep processes; the default suite refuses one study from two folders in-process
def test_a_second_process_on_a_sqlite_sweep_is_refused_naming_postgresql(glue_dir, tmp_path):
    a = [*WORKER, f"data.dir={glue_dir}", f"results_dir={tmp_path}"]
    with sweep_lock(tmp_path / "mrpc" / "grid" / "study.db"):
        proc = run_module("sweep.worker", *a)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(
        f"ranksweep: error: another sweep (pid {os.getpid()}) is using the study"
    )
    assert "for several workers put it on PostgreSQL (sweep.storage=postgresql://…)" in line
    assert not (tmp_path / "mrpc" / "grid" / "study.db").exists()


def test_one_sqlite_study_used_from_two_results_folders_is_refused(glue_dir, tmp_path):
    """The lock belongs to the study file, not to a results folder: a sweep of results folder a/ holds
    the shared study (a real second process), a sweep of results folder b/ on the same sweep.storage is
    refused before it creates anything (so neither can race the other creating Optuna's tables)."""
    db = tmp_path / "shared" / "study.db"
    holder = hold_lock(db)
    try:
        args = [*WORKER, f"data.dir={glue_dir}", f"results_dir={tmp_path / 'b'}", f"sweep.storage=sqlite:///{db}"]
        proc = run_main(sweep_main, *args)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith(f"ranksweep: error: another sweep (pid {holder.pid}) is using the study {db}; ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not db.exists() and not (tmp_path / "b" / "mrpc" / "grid" / "config.yaml").exists()

"""Real sweeps, shrunk to seconds per trial: resume after SIGKILL, grid mode, refusals, the budget."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import PROJECT, run_module

# two epochs (so a trial can die between them), enough examples that metrics and losses differ
# between configurations, two ranks and one wider target set: three trials for the progressive
# procedure (r=1, r=2, then q,k,v,o at r=1: one seed and no racing, so no gain is significant and the
# ranks run out), four for the grid
SMALL = ["debug=tiny", "train.epochs=2", "train.lr=5e-3", "data.max_train_samples=96", "data.max_eval_samples=48",
         "sweep.ranks=[1,2]", "sweep.seeds=[0]", "sweep.patience=2", "sweep.target_sets=[[q,v],[q,k,v,o]]"]


def args(tmp: Path, glue: Path, *extra: str):
    return [*SMALL, f"data.dir={glue}", f"results_dir={tmp}", *extra]


def trials_of(tmp: Path, name: str = "default"):
    url = f"sqlite:///{tmp / 'mrpc' / name / 'study.db'}"
    study = optuna.load_study(study_name=f"ranksweep-mrpc-{name}", storage=url)
    return study.get_trials(deepcopy=False)


def finished(tmp: Path, name: str = "default"):
    """(r, targets, seed, state, value, per-epoch records of metrics.json) of every trial."""
    out = []
    for t in trials_of(tmp, name):
        run_dir = Path(t.user_attrs["run_dir"])
        epochs = json.loads((run_dir / "metrics.json").read_text())["epochs"] if (run_dir / "metrics.json").exists() else None
        out.append((t.params["r"], t.user_attrs["targets_key"], t.params["seed"], t.state.name, t.value, epochs))
    return sorted(out, key=repr)


def kill_when(cmd_args, condition, timeout=600):
    """Start the sweep, SIGKILL it as soon as ``condition()`` holds (or let it end)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", *cmd_args], cwd=PROJECT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    return proc.returncode


def n_complete(tmp):
    db = tmp / "mrpc" / "default" / "study.db"
    if not db.exists():
        return 0
    try:
        return sum(t.state.name == "COMPLETE" for t in trials_of(tmp))
    except Exception:  # the study is being created
        return 0


def checkpoints(tmp):
    return list((tmp / "mrpc" / "default" / "trials").glob("*/checkpoint.pt"))


@pytest.fixture(scope="module")
def reference(glue_dir, tmp_path_factory):
    """An uninterrupted run of the small sweep."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = run_module("sweep", *args(tmp, glue_dir))
    assert proc.returncode == 0, proc.stderr
    return tmp, proc.stdout


def test_sigkill_at_several_points_then_resume_equals_an_uninterrupted_run(reference, glue_dir, tmp_path):
    ref_dir, ref_out = reference
    a = args(tmp_path, glue_dir)
    # 1: in the middle of the first trial, after its first epoch; 2: after two finished trials;
    # 3: in the middle of a later trial
    assert kill_when(a, lambda: checkpoints(tmp_path)) == -signal.SIGKILL
    assert kill_when(a, lambda: n_complete(tmp_path) >= 2) == -signal.SIGKILL
    assert kill_when(a, lambda: n_complete(tmp_path) >= 2 and checkpoints(tmp_path)) == -signal.SIGKILL
    done = run_module("sweep", *a)
    assert done.returncode == 0, done.stderr
    got, want = finished(tmp_path), finished(ref_dir)
    assert got == want  # same configurations, same values, bit-identical per-epoch losses
    configs = [(r, t, s) for r, t, s, *_ in got]
    assert len(configs) == len(set(configs)) == 3  # r=1, r=2 on q,v, then q,k,v,o: nothing twice, nothing lost
    assert all(state == "COMPLETE" for *_, state, _, _ in got)
    assert not checkpoints(tmp_path)  # epoch checkpoints are removed once trials complete
    assert done.stdout.splitlines()[-1] == ref_out.splitlines()[-1].replace(str(ref_dir), str(tmp_path))


def test_rerun_of_a_finished_sweep_trains_nothing_and_says_the_same(reference, glue_dir):
    ref_dir, ref_out = reference
    before = finished(ref_dir)
    again = run_module("sweep", *args(ref_dir, glue_dir))
    assert again.returncode == 0, again.stderr
    assert finished(ref_dir) == before
    assert not [line for line in again.stdout.splitlines() if line.startswith("trial ")]
    decisions = [line for line in ref_out.splitlines() if line.startswith("decision ")]
    assert decisions == [line for line in again.stdout.splitlines() if line.startswith("decision ")]
    assert again.stdout.splitlines()[-1] == ref_out.splitlines()[-1]
    for name in ("trials.csv", "summary.csv", "report.md", "plots/progression.png"):
        assert (ref_dir / "mrpc" / "default" / name).is_file()


def test_another_sweep_reuses_finished_trials_and_names_their_source(reference, glue_dir):
    ref_dir, _ = reference
    proc = run_module("sweep", *args(ref_dir, glue_dir, "sweep.name=again"))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and all(" (reused from " in line for line in lines)
    for t in trials_of(ref_dir, "again"):
        source = Path(t.user_attrs["reused_from"])
        assert source.parent.parent.name == "default" and source.name == Path(t.user_attrs["run_dir"]).name
        assert t.value == json.loads((source / "metrics.json").read_text())["objective_value"]
    assert finished(ref_dir, "again") == finished(ref_dir)
    assert [line for line in proc.stdout.splitlines() if line.startswith("recommendation:")]


def test_grid_interrupted_mid_trial_trains_only_what_is_missing(glue_dir, tmp_path):
    a = args(tmp_path, glue_dir, "sweep=grid", "sweep.name=default", "sweep.ranks=[1]")
    assert kill_when(a, lambda: n_complete(tmp_path) >= 1 and checkpoints(tmp_path)) == -signal.SIGKILL
    assert n_complete(tmp_path) == 1
    done = run_module("sweep", *a)
    assert done.returncode == 0, done.stderr
    assert "resuming trial 1" in done.stdout
    configs = [(r, t, s) for r, t, s, *_ in finished(tmp_path)]
    assert sorted(configs) == [(1, "q,k,v,o", 0), (1, "q,v", 0)]  # the grid: 1 rank × 2 target sets
    again = run_module("sweep", *a)
    assert not [line for line in again.stdout.splitlines() if line.startswith("trial ")]
    assert len(trials_of(tmp_path)) == 2


@pytest.mark.parametrize("bad, message", [
    ("train.epochs=3", "ranksweep: error: sweep 'default' for mrpc was run with train.epochs=2, this run has "
                       "train.epochs=3: its finished trials would not be comparable; re-run with the original "
                       "settings to resume, or start another sweep with sweep.name=<new name>"),
    ("sweep.target_sets=[[q,zz]]", "ranksweep: error: lora target 'zz' matches no linear module of model 'minilm'"),
])
def test_refused_resume_changes_nothing(reference, glue_dir, bad, message):
    ref_dir, _ = reference
    folder = ref_dir / "mrpc" / "default"
    before = {name: (folder / name).read_bytes() for name in ("study.db", "config.yaml", "report.md")}
    proc = run_module("sweep", *args(ref_dir, glue_dir, bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_trial_budget_stops_cleanly(glue_dir, tmp_path):
    proc = run_module("sweep", *args(tmp_path, glue_dir, "sweep.max_trials=1"))
    assert proc.returncode == 0, proc.stderr
    assert len(trials_of(tmp_path)) == 1
    assert "decision [final] budget: compute cap reached (trials: 1 ≥ sweep.max_trials=1); stopping cleanly" \
        in proc.stdout
    assert "recommendation: r=" in proc.stdout.splitlines()[-1]
    assert "(budget; provisional: the compute cap cut the procedure short" in proc.stdout.splitlines()[-1]
    assert "reliability: no seed-noise estimate" in proc.stdout  # one seed: no σ

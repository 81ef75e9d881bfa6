"""Sweep throughput on one machine: one worker with every core against several workers with fewer
threads each, on the same trials (``make bench``'s last line; alone: ``python -m bench --only sweep``).

Each layout runs the same small grid sweep (``TRIALS``: 4 short MRPC trials) from an empty study on a
throwaway PostgreSQL server (``tests/pgserver.py`` of the checkout), with ``python -m sweep.worker``
processes started together; the wall-clock seconds from their start to the last one's exit include what
a real worker pays (imports, model loading, tokenisation). Trials/hour = trials × 3600 / those seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import optuna

from sweep.paths import PROJECT_ROOT

#: the trials every layout runs: r ∈ {1, 2} × {q,v ; q,k,v,o}, one seed, one epoch over 512 MRPC pairs
TRIALS = [
    "task=mrpc",
    "sweep=grid",
    "sweep.ranks=[1,2]",
    "sweep.target_sets=[[q,v],[q,k,v,o]]",
    "sweep.seeds=[0]",
    "train.epochs=1",
    "data.max_train_samples=512",
    "data.max_eval_samples=204",
    "train.device=cpu",
]
N_TRIALS = 4
#: (workers, torch threads per worker)
LAYOUTS = ((1, 2), (2, 1))


def run_layout(url: str, workers: int, threads: int, overrides: Sequence[str], folder: Path) -> Dict[str, float]:
    """Run the sweep with ``workers`` processes of ``threads`` threads; seconds, trials, trials/hour.

    Raises:
        RuntimeError: a worker failed (its log's last lines) or the study lacks a trial.
    """
    name = f"throughput-{workers}x{threads}"
    args = [
        *TRIALS,
        *overrides,
        f"sweep.name={name}",
        f"sweep.storage={url}",
        f"train.threads={threads}",
        f"results_dir={folder}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [folder / f"{name}-{i}.log" for i in range(workers)]
    load = os.getloadavg()[0]  # what else runs on the machine shows here
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sweep.worker", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - start
    for code, log in zip(codes, logs):
        if code != 0:
            raise RuntimeError(
                f"a worker of {name} exited with {code}: " + " | ".join(log.read_text().splitlines()[-3:])
            )
    study = optuna.load_study(study_name=f"ranksweep-mrpc-{name}", storage=url)
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    if done != N_TRIALS:
        raise RuntimeError(f"{name}: {done} complete trials, expected {N_TRIALS}")
    return {
        "workers": workers,
        "threads": threads,
        "trials": done,
        "seconds": seconds,
        "trials_per_hour": done * 3600 / seconds,
        "load_before": load,
    }


def sweep_throughput(overrides: Sequence[str]) -> Tuple[List[str], List[Dict[str, float]]]:
    """Every layout of ``LAYOUTS`` on the same trials (``overrides``: extra Hydra overrides, e.g.
    ``data.dir=…``); returns the table's lines and the records (``seconds``: wall clock; ``load_before``:
    the machine's 1-minute load average when the layout started)."""
    # the throwaway server is test support, kept with the tests; `make bench` runs from a checkout, which has them
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from pgserver import local_postgres

    runs = []
    with local_postgres() as url, tempfile.TemporaryDirectory(prefix="ranksweep-throughput-") as folder:
        for workers, threads in LAYOUTS:
            runs.append(run_layout(url, workers, threads, overrides, Path(folder)))
    lines = [
        f"sweep throughput, {N_TRIALS} MRPC trials (1 epoch over 512 pairs each), PostgreSQL study, "
        f"{os.cpu_count()} cores:"
    ]
    lines += [
        f"  {r['workers']} worker(s) × {r['threads']} thread(s): {r['seconds']:.0f} s, "
        f"{r['trials_per_hour']:.0f} trials/hour (1-min load average {r['load_before']:.1f} at its start)"
        for r in runs
    ]
    base, other = runs[0], runs[-1]
    lines.append(
        f"sweep throughput: {other['workers']}×{other['threads']} / {base['workers']}×{base['threads']} = "
        f"{other['trials_per_hour'] / base['trials_per_hour']:.2f}x"
    )
    return lines, runs

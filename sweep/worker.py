"""A worker: joins a sweep whose study is on a database server and runs its trials until the sweep is over.

    python -m sweep.worker task=mrpc sweep.storage=postgresql://user@dbhost:5432/ranksweep   # make worker
    python -m sweep.worker task=mrpc sweep=grid train.threads=1 sweep.storage=postgresql://…

It takes the arguments of ``python -m sweep``; start any number, at any time, on any machine that
reaches the database and sees the same results folder (``results_dir``: epoch checkpoints live there,
so a worker can continue the trial of one that died). Each claims a trial the decisions allow now,
trains it, and asks again (``sweep/claims.py``); when the sweep is over it prints the recommendation.
Reports are not written by workers, which may finish at the same moment: run ``make report`` (or
``python -m analysis``) with the same arguments. On SQLite a worker is the one process of the sweep.
"""

from __future__ import annotations

import sys
from typing import List

from sweep.cli import compose, run_cli
from sweep.driver import crash_line, recommendation_line, run_sweep
from sweep.paths import sweep_dir


def main(args: List[str]) -> int:
    """Join the sweep of the overrides ``args`` and run its trials until it is over. Returns the exit
    status: 0, or 1 when a trial crashed in this worker (re-running a worker retries it) or no trial of the
    sweep succeeded (every one diverged).

    Raises:
        UserError: bad input (see ``sweep.driver.run_sweep``).
    """
    cfg, resolved = compose(args)
    p = run_sweep(cfg, resolved, overrides=args)
    if p.next is not None:
        print(crash_line(cfg, p), file=sys.stderr)
        return 1
    print(recommendation_line(p, sweep_dir(cfg), cfg.train.lr))
    return 0 if p.recommendation else 1  # every trial diverged


if __name__ == "__main__":
    run_cli(main)

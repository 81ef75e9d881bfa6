"""``python -m sweep``: run or resume a rank sweep, then write its reports and print the recommendation.

    python -m sweep task=mrpc                 # the progressive procedure (make sweep TASK=mrpc)
    python -m sweep task=mrpc sweep=grid      # every rank × target set × seed (make sweep SWEEP=grid)
    python -m sweep debug=tiny                # a tiny sweep in a minute, on the CPU

Re-running the same command resumes where it stopped. Arguments are Hydra overrides of conf/config.yaml
(e.g. lora.alpha=32 sweep.max_seeds=4); the README lists them.

This is the entry point, the one place that joins the two packages: the sweep (``sweep/driver.py``)
never imports ``analysis/``, which reads sweeps; here the sweep runs, then the reports are written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

from analysis.estimate import forecaster
from analysis.report import baseline_line, load_report, write_reports
from sweep.cli import compose, make_command, run_cli
from sweep.driver import crash_line, recommendation_line, run_sweep
from sweep.faults import fault_line
from sweep.paths import sweep_dir
from sweep.study import storage_url, study_name


def main(args: List[str]) -> int:
    """Run the sweep of the overrides ``args``, write its reports, print the reliability line, the
    recommendation's gap to the constant baseline and the recommendation. Returns the exit status: 0,
    or 1 when a trial crashed (re-running retries it), no trial succeeded (every one diverged) or the reports
    could not be written.

    Raises:
        UserError: bad input (see ``sweep.driver.run_sweep``).
    """
    cfg, resolved = compose(args)
    # says its cost before the first trial (sweep.estimate)
    p = run_sweep(cfg, resolved, overrides=args, forecast=forecaster(cfg) if cfg.sweep.estimate else None)
    sdir = sweep_dir(cfg)
    report, written = None, False
    try:
        report = load_report(storage_url(cfg), study_name(cfg))  # the study, read once for everything below
        files = write_reports(storage_url(cfg), study_name(cfg), sdir, report=report)
        print(f"reports: {', '.join(str(Path(f).relative_to(sdir)) for f in files)} in {sdir}")
        written = True
    except Exception as e:  # the results are safe in the study; `make report` can retry
        why = fault_line(e) or f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        print(
            f"ranksweep: reports not written ({why}); the study is intact, retry with `{make_command('report', args)}`",
            file=sys.stderr,
        )
    if p.next is not None:
        print(crash_line(cfg, p), file=sys.stderr)
        return 1
    if report is not None:
        rel = report.reliability
        print(
            f"reliability: {rel.text()}"
            if rel
            else "reliability: no seed-noise estimate (no configuration has two "
            "ok seeds, collapsed ones left out), so no gain could be shown significant"
        )
        against = baseline_line(report)
        if against:
            print(against)
    print(recommendation_line(p, sdir, cfg.train.lr))
    # every trial diverged: a failure, as `make trial` says of one; so are reports that were not written
    return 0 if p.recommendation and written else 1


if __name__ == "__main__":
    run_cli(main)

"""Write a sweep's reports into its folder: trials.csv, summary.csv, plots/*.png and report.md.

    python -m analysis task=mrpc                    # results/mrpc/default/ (make report TASK=mrpc)
    python -m analysis task=mrpc sweep=grid         # the grid sweep, results/mrpc/grid/
    python -m analysis task=cola sweep.name=wide    # the sweep run with sweep.name=wide
    python -m analysis sweep.storage=sqlite:////abs/path/study.db   # a study kept elsewhere

Takes the same overrides as `python -m sweep` and reads the study that command writes (it only
reads it, so it can run while the sweep is still going; the recommendation is then provisional).
The sweep also writes these reports itself when it ends.
"""

from __future__ import annotations

from typing import List

from analysis.report import write_reports
from sweep.cli import compose, make_command, run_cli
from sweep.paths import sweep_dir
from sweep.study import storage_url, study_name


def main(args: List[str]) -> int:
    cfg, _ = compose(args)
    out = sweep_dir(cfg)
    files = write_reports(
        storage_url(cfg), study_name(cfg), out, missing_hint=f"run `{make_command('sweep', args)}` first"
    )
    print(f"reports in {out}: {', '.join(str(f.relative_to(out)) for f in files)}")
    return 0


if __name__ == "__main__":
    run_cli(main)

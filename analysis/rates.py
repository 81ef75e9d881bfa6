"""The learning rate × rank table (issue #22, docs/validation.md §9): every finished trial under a results
folder, read from its ``metrics.json``, grouped by scaling, target set, rate and rank.

    python -m analysis.rates results/lr-rank/mrpc        # markdown tables, one per scaling and target set

Each cell is the mean of the trials' objective over their seeds in the objective's unit (points, 100 ×
accuracy, for MRPC) with the seeds' values after it; a collapsed seed (one constant prediction, Mosbach et al.
2021: the record's ``collapsed``; a record made before it existed: a value equal to its majority-class
baseline) is marked ``†``. In each rank's column the best rate's mean is in bold. Trials of every sweep under the folder
count once each (a trial reused by another sweep is one folder); nested trials (the screen's) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd
from omegaconf import OmegaConf

from sweep.cli import run_cli
from sweep.errors import UserError
from sweep.metrics import metric_of
from sweep.record import read_result


def rate_frame(folder: Path) -> pd.DataFrame:
    """One row per finished ok trial under ``folder`` (any depth: ``*/trials/*/metrics.json``): ``scaling``,
    ``targets``, ``lr``, ``r``, ``seed``, ``value`` (the objective in its display unit, e.g. points),
    ``collapsed`` (the value equals the trial's majority-class baseline), ``run_dir``.

    Raises:
        UserError: no trial under ``folder``.
    """
    rows = []
    for path in sorted(Path(folder).glob("**/trials/*/metrics.json")):
        rec = read_result(path)
        if rec.status != "ok" or rec.objective_value is None or rec.nested:
            continue
        # the rate from the resolved config saved with the trial (records before the field existed lack it)
        lr = rec.lr if rec.lr is not None else OmegaConf.load(path.parent / "config.yaml").train.lr
        m = metric_of(rec.objective)
        baseline = (rec.majority_baseline or {}).get(rec.objective)
        rows.append(
            {
                "scaling": rec.scaling,
                "targets": ",".join(rec.targets),
                "lr": float(lr),
                "r": int(rec.r),
                "seed": int(rec.seed),
                "value": m.scale * rec.objective_value,
                "collapsed": bool(rec.collapsed)
                if rec.collapsed is not None
                else baseline is not None and abs(rec.objective_value - baseline) < 1e-9,
                "run_dir": str(path.parent),
            }
        )
    if not rows:
        raise UserError(f"{folder} holds no finished trial (*/trials/*/metrics.json)")
    frame = pd.DataFrame(rows)
    # one row per trial: a trial reused by a second sweep is the same configuration and seed
    return frame.drop_duplicates(["scaling", "targets", "lr", "r", "seed"]).reset_index(drop=True)


def rate_tables(frame: pd.DataFrame) -> Dict[Tuple[str, str], pd.DataFrame]:
    """Per (scaling, targets), the table rate × rank: each cell (mean, values in seed order, any collapsed)."""
    out = {}
    for (scaling, targets), g in frame.groupby(["scaling", "targets"], sort=True):
        cells = {}
        for (lr, r), h in g.sort_values("seed").groupby(["lr", "r"]):
            cells[(lr, r)] = (h["value"].mean(), list(h["value"]), list(h["collapsed"]))
        ranks, rates = sorted(g["r"].unique()), sorted(g["lr"].unique())
        out[(scaling, targets)] = pd.DataFrame(
            [[cells.get((lr, r)) for r in ranks] for lr in rates], index=rates, columns=ranks
        )
    return out


def markdown(tables: Dict[Tuple[str, str], pd.DataFrame]) -> List[str]:
    """The tables as markdown lines, the best mean of each rank's column in bold."""
    lines: List[str] = []
    for (scaling, targets), t in tables.items():
        lines += [
            "",
            f"{scaling} scaling, {targets}:",
            "",
            "| rate | " + " | ".join(f"r={r}" for r in t.columns) + " |",
        ]
        lines.append("|---|" + "---:|" * len(t.columns))
        best = {r: max(c[0] for c in t[r] if c is not None) for r in t.columns}
        for lr, row in t.iterrows():
            shown = []
            for r, cell in row.items():
                if cell is None:
                    shown.append("—")
                    continue
                mean, values, collapsed = cell
                each = ", ".join(f"{v:.2f}{'†' if c else ''}" for v, c in zip(values, collapsed))
                head = f"**{mean:.2f}**" if mean == best[r] else f"{mean:.2f}"
                shown.append(f"{head} ({each})")
            lines.append(f"| {lr:g} | " + " | ".join(shown) + " |")
    return lines


def main(args: List[str]) -> int:
    if len(args) != 1:
        raise UserError("give one results folder, e.g. python -m analysis.rates results/lr-rank/mrpc")
    print("\n".join(markdown(rate_tables(rate_frame(Path(args[0]))))))
    return 0


if __name__ == "__main__":
    run_cli(main)

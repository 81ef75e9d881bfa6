"""Is the extra rank signal or noise? The subspace analysis of the adapters a sweep saved (LoRA,
Hu et al. 2021, §7.2–7.3), written as CSVs, heatmaps and a section of report.md.

    python -m analysis.subspace_report task=mrpc sweep=grid     # make subspace TASK=mrpc SWEEP=grid
    python -m analysis.subspace_report task=mrpc sweep.name=wide

Takes the same overrides as ``python -m sweep`` and reads the study and ``trials/*/adapter/`` of that
sweep; ``python -m analysis`` (and the sweep itself, when it ends) writes the same files as part of
the report whenever two adapters can be compared.

Directions are the right-singular vectors of each adapter's A (r×k), as in the paper; ranks are
compared within a seed, seeds within a configuration. Files, in ``results/<task>/<sweep.name>/``:
``subspace/pairs.csv`` (one row per compared pair of adapters and adapted matrix),
``subspace/amplification.csv`` (one row per adapter and adapted matrix), ``subspace/summary.csv``
(effective rank and amplification per configuration and matrix) and ``plots/subspace-*.png``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd
import torch

from analysis.adapters import TrainedAdapter, frozen_weights, module_label, sweep_adapters
from analysis.load import StudyInfo
from analysis.markdown import escape
from analysis.plots import save_figure, task_name
from analysis.subspace import (
    amplification,
    direction_overlaps,
    random_similarity,
    right_singular_basis,
    shared_directions,
    similarity_grid,
)
from analysis.subspace_plots import similarity_heatmaps
from sweep.decision import ConfigKey
from sweep.faults import atomic_write

#: family-wise error rate of the test that counts a direction as shared (Bonferroni over a subspace's r)
ALPHA = 0.05
PAIR_COLUMNS = (
    "comparison",
    "targets",
    "r1",
    "seed1",
    "r2",
    "seed2",
    "module",
    "layer",
    "matrix",
    "n",
    "phi_top",
    "phi_all",
    "random_all",
    "overlap_top",
    "shared_1in2",
    "shared_2in1",
)
AMPLIFICATION_COLUMNS = (
    "targets",
    "r",
    "seed",
    "module",
    "layer",
    "matrix",
    "delta_norm",
    "projection",
    "amplification",
    "w_norm",
    "random",
)
SUMMARY_COLUMNS = (
    "targets",
    "r",
    "matrix",
    "n_seeds",
    "seed_pairs",
    "modules",
    "effective_rank",
    "effective_rank_min",
    "effective_rank_max",
    "amplification",
    "projection_vs_random",
    "delta_norm",
)


@dataclass
class SubspaceAnalysis:
    """Everything the subspace analysis found in one sweep.

    Attributes:
        pairs: one row per compared pair of adapters and adapted matrix (``PAIR_COLUMNS``):
            ``comparison`` is ``ranks`` (same seed and targets, r1 < r2) or ``seeds`` (same
            configuration, seed1 < seed2); ``n`` the dimension k of the input space; ``phi_top`` φ(1, 1)
            of the top directions; ``phi_all`` φ(r1, r2) of the whole subspaces and ``random_all`` its
            random baseline max(r1, r2)/n; ``overlap_top`` ‖U₂ᵀu₁‖² of the first adapter's top direction
            with the second's whole subspace (baseline r2/n); ``shared_1in2`` how many of the first
            adapter's r1 directions lie in the second's subspace beyond chance, ``shared_2in1`` the reverse
            (``analysis.subspace.shared_directions``, level ``ALPHA``).
        amplification: one row per adapter and adapted matrix (``AMPLIFICATION_COLUMNS``), the keys of
            ``analysis.subspace.amplification``.
        summary: one row per configuration and matrix, plus ``matrix = all`` (``SUMMARY_COLUMNS``):
            ``effective_rank`` the mean over modules and seed pairs of the directions shared across
            seeds (mean of both directions of the test; NaN with one seed), its per-module min and max,
            and, as means over modules and seeds, the ``amplification``, ``projection_vs_random``
            (‖UᵀWV‖_F over its value for random directions: above 1 when ΔW's directions are ones W
            emphasises) and ‖ΔW‖_F (``delta_norm``).
        grids: φ grids for heatmaps: (comparison, targets, r1, seed1, r2, seed2) -> (layer, matrix) -> r1×r2.
        files: what ``write_subspace`` wrote.
    """

    pairs: pd.DataFrame
    amplification: pd.DataFrame
    summary: pd.DataFrame
    grids: Dict[tuple, Dict[Tuple[int, str], torch.Tensor]]
    files: List[Path] = field(default_factory=list)


def _pairs(adapters: List[TrainedAdapter]) -> List[Tuple[str, TrainedAdapter, TrainedAdapter]]:
    """Every pair the paper compares: two ranks of one target set and seed (Figure 3), two seeds of
    one configuration (Figure 4)."""
    out = []
    for first, second in itertools.combinations(adapters, 2):  # sorted by targets, r, seed
        if first.targets != second.targets:
            continue
        if first.seed == second.seed and first.r < second.r:
            out.append(("ranks", first, second))
        elif first.r == second.r and first.seed < second.seed:
            out.append(("seeds", first, second))
    return out


def analyse(
    adapters: List[TrainedAdapter], weights: Dict[str, torch.Tensor], roles: Dict[str, str]
) -> SubspaceAnalysis:
    """Compare every pair of ``adapters`` (see ``_pairs``) module by module, and measure each adapter's
    amplification of the frozen ``weights`` (module name -> W, d×k); ``roles`` name the matrices
    (``model.roles``)."""
    bases = {t.trial: {m: right_singular_basis(a) for m, a in t.a.items()} for t in adapters}
    pair_rows, grids = [], {}
    for kind, one, two in _pairs(adapters):
        key = (kind, one.targets, one.r, one.seed, two.r, two.seed)
        grids[key] = {}
        for module in sorted(one.a.keys() & two.a.keys()):
            u1, u2 = bases[one.trial][module], bases[two.trial][module]
            n = u1.shape[0]
            phi = similarity_grid(u1, u2)
            layer, matrix = module_label(module, roles)
            grids[key][(layer, matrix)] = phi
            pair_rows.append(
                {
                    "comparison": kind,
                    "targets": one.targets,
                    "r1": one.r,
                    "seed1": one.seed,
                    "r2": two.r,
                    "seed2": two.seed,
                    "module": module,
                    "layer": layer,
                    "matrix": matrix,
                    "n": n,
                    "phi_top": float(phi[0, 0]),
                    "phi_all": float(phi[-1, -1]),
                    "random_all": random_similarity(one.r, two.r, n),
                    "overlap_top": float(direction_overlaps(u1[:, :1], u2)[0]),
                    "shared_1in2": shared_directions(u1, u2, ALPHA),
                    "shared_2in1": shared_directions(u2, u1, ALPHA),
                }
            )
    amp_rows = []
    for t in adapters:
        for module, a in t.a.items():
            layer, matrix = module_label(module, roles)
            amp_rows.append(
                {
                    "targets": t.targets,
                    "r": t.r,
                    "seed": t.seed,
                    "module": module,
                    "layer": layer,
                    "matrix": matrix,
                    **amplification(a, t.b[module], t.scaling, weights[module]),
                }
            )
    pairs = pd.DataFrame(pair_rows, columns=PAIR_COLUMNS).sort_values(
        ["comparison", "targets", "r1", "r2", "seed1", "seed2", "matrix", "layer"], ignore_index=True
    )
    amp = pd.DataFrame(amp_rows, columns=AMPLIFICATION_COLUMNS)
    return SubspaceAnalysis(pairs=pairs, amplification=amp, summary=_summary(pairs, amp), grids=grids)


def _summary(pairs: pd.DataFrame, amp: pd.DataFrame) -> pd.DataFrame:
    seeds = pairs[pairs["comparison"] == "seeds"].assign(shared=lambda f: (f["shared_1in2"] + f["shared_2in1"]) / 2)
    rows = []
    for (targets, r), group in amp.groupby(["targets", "r"], sort=True):
        for matrix in [*sorted(group["matrix"].unique()), "all"]:
            g = group if matrix == "all" else group[group["matrix"] == matrix]
            s = seeds[(seeds["targets"] == targets) & (seeds["r1"] == r)]
            s = s if matrix == "all" else s[s["matrix"] == matrix]
            per_module = s.groupby("module")["shared"].mean()
            rows.append(
                {
                    "targets": targets,
                    "r": int(r),
                    "matrix": matrix,
                    "n_seeds": g["seed"].nunique(),
                    "seed_pairs": len(s.drop_duplicates(["seed1", "seed2"])),
                    "modules": g["module"].nunique(),
                    "effective_rank": per_module.mean() if len(s) else math.nan,
                    "effective_rank_min": per_module.min() if len(s) else math.nan,
                    "effective_rank_max": per_module.max() if len(s) else math.nan,
                    "amplification": g["amplification"].mean(),
                    "projection_vs_random": (g["projection"] / g["random"]).mean(),
                    "delta_norm": g["delta_norm"].mean(),
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _slug(targets: str) -> str:
    from sweep.trial import targets_slug

    return targets_slug(targets.split(","))


def heatmap_name(key: tuple) -> str:
    """The plot's file stem: ``subspace-ranks-r8-r64-q-v-seed0``, ``subspace-seeds-r64-q-v-seed0-seed1``."""
    kind, targets, r1, seed1, r2, seed2 = key
    if kind == "ranks":
        return f"subspace-ranks-r{r1}-r{r2}-{_slug(targets)}-seed{seed1}"
    return f"subspace-seeds-r{r1}-{_slug(targets)}-seed{seed1}-seed{seed2}"


def _dimension(pairs: pd.DataFrame) -> str:
    """n of the random baseline max(i, j)/n as text: ``384``, or ``k`` when the matrices' input sizes differ."""
    sizes = pairs["n"].unique()
    return str(int(sizes[0])) if len(sizes) == 1 else "k"


def _heatmap(key: tuple, grid, prefix: str, n: str):
    kind, targets, r1, seed1, r2, seed2 = key
    baseline = f"\nφ of the top-i, top-j right-singular vectors of A; random subspaces: max(i, j)/{n}"
    if kind == "ranks":
        title = f"{prefix}: r={r1} vs r={r2} on {targets}, seed {seed1}{baseline}"
        return similarity_heatmaps(grid, title, f"i (r={r1})", f"j (r={r2})")
    title = f"{prefix}: r={r1} on {targets}, seed {seed1} vs seed {seed2}{baseline}"
    return similarity_heatmaps(grid, title, f"i (seed {seed1})", f"j (seed {seed2})")


def write_subspace(sweep_dir: Path, info: StudyInfo) -> Optional[SubspaceAnalysis]:
    """Analyse the adapters saved under ``sweep_dir/trials/`` and write ``subspace/pairs.csv``,
    ``subspace/amplification.csv``, ``subspace/summary.csv`` and one heatmap per compared pair,
    ``plots/<heatmap_name>.png``, into ``sweep_dir``. Returns None (and writes nothing) unless two
    adapters of one target set differ only in rank or only in seed. What an earlier analysis wrote and
    this one does not (the heatmap of a pair whose adapter was deleted, every file when no pair is left)
    is removed: it no longer describes the sweep.

    Raises:
        FileNotFoundError, ValueError: a trial's adapter files are incomplete (``load_adapter``).
    """
    earlier = {*Path(sweep_dir).glob("subspace/*.csv"), *Path(sweep_dir).glob("plots/subspace-*.png")}
    adapters = sweep_adapters(sweep_dir)
    if not _pairs(adapters):
        for stale in earlier:
            stale.unlink()
        return None
    modules = sorted({m for t in adapters for m in t.a})
    weights, roles = frozen_weights(adapters[0].config_file, modules)
    result = analyse(adapters, weights, roles)
    folder = Path(sweep_dir) / "subspace"
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("pairs", result.pairs), ("amplification", result.amplification), ("summary", result.summary)):
        result.files.append(
            atomic_write(folder / f"{name}.csv", lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
        )
    prefix = f"{task_name(info)} · {info.model}"
    for key, grid in result.grids.items():
        figure = _heatmap(key, grid, prefix, _dimension(result.pairs))
        result.files.append(save_figure(figure, Path(sweep_dir) / "plots" / f"{heatmap_name(key)}.png"))
    for stale in earlier - set(result.files):
        stale.unlink()
    return result


def _number(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.1f}"


def recommendation_note(result: SubspaceAnalysis, pick: Optional[ConfigKey]) -> str:
    """One sentence for the recommendation: how many directions the recommended target set's ranks
    share across seeds, and which ranks learn noise beyond that (their r exceeds every effective rank
    found on that target set, rounded up). '' when no configuration of it has two seeds."""
    if pick is None:
        return ""
    rows = result.summary[(result.summary["targets"] == pick[1]) & (result.summary["matrix"] == "all")]
    rows = rows[rows["effective_rank"].notna()]
    if rows.empty:
        return ""
    shared = ", ".join(f"r={r}: {e:.1f} of {r}" for r, e in zip(rows["r"], rows["effective_rank"]))
    enough = max(1, math.ceil(rows["effective_rank"].max()))
    noisy = [int(r) for r in rows["r"] if r > enough]
    text = f"Subspace check (LoRA §7.2): directions the adapters on {escape(pick[1])} share across seeds, by rank: {shared}."
    if noisy:
        names = " and ".join(", ".join(f"r={r}" for r in noisy).rsplit(", ", 1))
        among = f" (the recommended r={pick[0]} among them: a lower rank may do as well)" if pick[0] in noisy else ""
        text += (
            f" Beyond about {enough} direction{'s' if enough != 1 else ''} the seeds do not agree, so the extra directions of {names} "
            f"are noise{among}."
        )
    return text


def effective_rank_table(result: SubspaceAnalysis) -> List[str]:
    """The markdown table of effective rank next to r: per configuration the seeds, the directions
    shared across seeds (mean over matrices, min–max), per matrix, and the mean amplification."""
    s = result.summary
    matrices = [m for m in dict.fromkeys(s["matrix"]) if m != "all"]
    lines = [
        f"| r | targets | seeds | effective rank (min–max) | {' | '.join(matrices)} | amplification "
        "| ‖UᵀWV‖ / random |",
        "|---:|---|---:|---:|" + "---:|" * len(matrices) + "---:|---:|",
    ]
    for (targets, r), g in s.groupby(["targets", "r"], sort=False):
        whole = g[g["matrix"] == "all"].iloc[0]
        low, high = whole["effective_rank_min"], whole["effective_rank_max"]
        effective = (
            "—" if pd.isna(whole["effective_rank"]) else f"{whole['effective_rank']:.1f} of {r} ({low:.0f}–{high:.0f})"
        )
        per = [
            _number(g[g["matrix"] == m]["effective_rank"].iloc[0]) if (g["matrix"] == m).any() else "—"
            for m in matrices
        ]
        lines.append(
            f"| {r} | {escape(targets)} | {whole['n_seeds']} | {effective} | {' | '.join(per)} "
            f"| {whole['amplification']:.1f} | {whole['projection_vs_random']:.1f} |"
        )
    return lines


def report_lines(result: SubspaceAnalysis) -> List[str]:
    """The report.md section: the method in a few sentences, ``effective_rank_table``, the rank
    comparisons, the heatmaps (the widest rank pair and the largest rank compared across seeds)."""
    lines = [
        "## Adapter subspaces: signal or noise? (LoRA §7)",
        "",
        "Each adapter's directions are the right-singular vectors of its A (r×k), as in LoRA (Hu et al. 2021) "
        "§7.2; two adapters are compared by φ(i, j) = ‖U_iᵀU_j‖_F² / min(i, j) of their top-i and top-j "
        "directions: 1 when one subspace holds the other, max(i, j)/n on average for random subspaces "
        f"(n = {_dimension(result.pairs)}, the input size k). "
        "A direction counts as shared when its squared cosine with the other adapter's subspace is above what "
        f"a random direction reaches with probability {ALPHA:g}/r (Bonferroni over the r directions, so unrelated "
        f"subspaces share 0 directions with probability ≥ {1 - ALPHA:g}). "
        "**Effective rank**: the directions shared across two seeds of a configuration, mean over the adapted "
        "matrices (min–max). Amplification (§7.3): ‖ΔW‖_F / ‖UᵀWV‖_F with U, V the top-r singular "
        "vectors of ΔW and W the frozen weight; ‖UᵀWV‖ / random: the same projection over its value for random "
        "directions, ‖W‖_F·r/√(d·k) (above 1: ΔW's directions are ones W already emphasises).",
        "",
        *effective_rank_table(result),
    ]
    ranks = result.pairs[result.pairs["comparison"] == "ranks"]
    if not ranks.empty:
        lines += [
            "",
            "Across ranks (same seed): how many of the lower rank's directions lie in the higher rank's "
            "subspace, mean over the adapted matrices; φ of the top directions against random.",
        ]
        for (targets, r1, r2), g in ranks.groupby(["targets", "r1", "r2"], sort=True):
            lines.append(
                f"- {escape(targets)}, r={r1} in r={r2}: {g['shared_1in2'].mean():.1f} of {r1} directions shared; "
                f"top direction φ(1, 1) = {g['phi_top'].mean():.2f}, its overlap with all of r={r2} "
                f"{g['overlap_top'].mean():.2f} (random {g['random_all'].mean():.2f})"
            )
    keys = list(result.grids)
    shown = [
        k
        for k in (
            max((k for k in keys if k[0] == "ranks"), key=lambda k: (k[4] - k[2], -k[3]), default=None),
            max((k for k in keys if k[0] == "seeds"), key=lambda k: (k[2], -k[3]), default=None),
        )
        if k
    ]
    lines += [""] + [f"![φ heatmaps {heatmap_name(k)}](plots/{heatmap_name(k)}.png)\n" for k in shown]
    others = [k for k in keys if k not in shown]
    if others:
        lines.append("More heatmaps: " + ", ".join(f"[{heatmap_name(k)}](plots/{heatmap_name(k)}.png)" for k in others))
    lines += [
        "",
        "Per pair and matrix: [subspace/pairs.csv](subspace/pairs.csv); amplification: "
        "[subspace/amplification.csv](subspace/amplification.csv); per configuration: "
        "[subspace/summary.csv](subspace/summary.csv).",
    ]
    return lines


def main(args: List[str]) -> int:
    from analysis.load import study_info
    from sweep.cli import compose, make_command
    from sweep.errors import UserError
    from sweep.paths import sweep_dir
    from sweep.study import load_study, storage_url, study_name

    cfg, _ = compose(args)
    out = sweep_dir(cfg)
    study = load_study(storage_url(cfg), study_name(cfg), f"run `{make_command('sweep', args)}` first")
    result = write_subspace(out, study_info(study))
    if result is None:
        raise UserError(
            f"no two adapters to compare in {out / 'trials'}: the analysis needs two ranks or two seeds "
            "of one target set that finished ok; widen the sweep, e.g. ARGS='sweep.seeds=[0,1]'"
        )
    print("\n".join(effective_rank_table(result)))
    print(f"files in {out}: {', '.join(str(f.relative_to(out)) for f in result.files)}")
    return 0


if __name__ == "__main__":
    from sweep.cli import run_cli

    run_cli(main)

"""Methods side by side (``make compare``; LoRA, Hu et al. 2021, Table 2): a comparison's trial folders
(``results/<task>/compare/<compare.name>/trials/*/metrics.json``, written by ``sweep/compare.py``) read into one
row per method, configuration and learning rate, with the rank sweep of the same task beside them when there is one.

    python -m analysis.methods task=mrpc                      # results/mrpc/compare/default/
    python -m analysis.methods task=mrpc compare.name=rates   # the comparison run with compare.name=rates

Writes into the comparison's folder ``methods.csv`` (``methods_frame``), ``plots/methods_vs_params.png`` and
``plots/methods_vs_flops.png`` (``analysis/method_plots.py``) and ``report.md`` (``analysis/methods_report.py``),
from the trial folders alone: every finished trial there is tabulated, and a trial's rate factor is its rate over
its method's own (``sweep.compare.own_rate``). ``make compare`` writes them at its end.

The statistics are the sweep's (``sweep/stats.py``), as summary.csv holds them: over the seeds that did not
collapse (``sweep/collapse.py``: collapsed seeds are counted, and left out), in metric units (accuracy 0.8235,
not 82.35 points), the 95% Student-t interval of the mean with the s.d. floored at ``sweep.noise_floor``
validation examples' worth (``sweep.decide.floor_at``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import pandas as pd
from omegaconf import OmegaConf

from analysis.adapters import ROLE_NAMES
from analysis.summary import metric_units, recommendation
from sweep.cli import run_cli
from sweep.compare import check_overrides, compare_dir, comparison_config, own_rate
from sweep.config import HEAD_ONLY, Config, Method, targets_key
from sweep.decide import floor_at
from sweep.errors import UserError
from sweep.faults import atomic_write
from sweep.metrics import Metric, metric_of
from sweep.record import read_result
from sweep.stats import Stats, stats_of

#: each method as the tables and plots name it (LoRA's Table 2 names FT, BitFit, …)
METHOD_NAMES = {
    Method.full: "full fine-tuning",
    Method.head: "head only",
    Method.bitfit: "BitFit",
    Method.lora: "LoRA",
    Method.dora: "DoRA",
    Method.adalora: "AdaLoRA",
    Method.vera: "VeRA",
    Method.fourierft: "FourierFT",
    Method.ia3: "(IA)³",
    Method.prefix: "prefix tuning",
}

#: the references a sweep's report measures its pick against (``references``)
REFERENCE_METHODS = (Method.full, Method.head)

#: columns of methods.csv, in order
COLUMNS = (
    "method",
    "label",
    "r",
    "targets",
    "lr",
    "lr_scale",
    "chosen",
    "n_seeds",
    "n_collapsed",
    "n_failed",
    "objective_mean",
    "objective_sd",
    "objective_ci95_low",
    "objective_ci95_high",
    "trainable_params",
    "trainable_pct",
    "lora_params",
    "mean_train_flops",
    "mean_train_seconds",
    "peak_mem_mb",
)

#: columns of ``trial_frame``, in order
TRIAL_COLUMNS = (
    "trial",
    "method",
    "label",
    "r",
    "targets",
    "seed",
    "lr",
    "status",
    "collapsed",
    "objective",
    "value",
    "resolution",
    "trainable_params",
    "trainable_pct",
    "lora_params",
    "train_flops",
    "train_seconds",
    "peak_mem_mb",
    "model",
    "task",
    "data_digest",
    "recipe",
    "baseline",
)


@dataclass(frozen=True)
class ComparisonInfo:
    """A comparison as its report and plots name it: ``task`` (``task.name``), ``model`` (its short name),
    ``objective`` (``metric``: direction, unit, scale), ``baseline`` (the constant answer's objective, metric
    units; None when no trial recorded it), ``data_digest`` (the rows its trials read) and ``recipe`` (their
    training recipe, ``recipe_of``). The sweep's plot
    and report helpers read it as they read a ``StudyInfo`` (the same attribute names)."""

    task: str
    model: str
    objective: str
    baseline: Optional[float]
    data_digest: Optional[str]
    recipe: Optional[str] = None

    @property
    def metric(self) -> Metric:
        return metric_of(self.objective)


#: the training recipe two results must share to be compared (beside model, objective and rows): what every
#: method trains with; the rate, the seed and the method's own settings are what a comparison varies
RECIPE_KEYS = (
    "train.epochs",
    "train.batch_size",
    "train.warmup_ratio",
    "train.weight_decay",
    "train.max_grad_norm",
    "train.backbone_dropout",
    "train.group_by_length",
    "train.precision",
    "data.max_length",
    "data.max_train_samples",
    "data.max_eval_samples",
)


def recipe_of(config_file: Path) -> Optional[str]:
    """The training recipe (``RECIPE_KEYS``, ``key=value; …``) of the resolved ``config_file`` (a trial's or a
    sweep's ``config.yaml``, read as this version reads it: newer keys at their defaults); None without one."""
    from sweep.resume import read_config

    if not Path(config_file).is_file():
        return None
    flat = OmegaConf.to_container(read_config(config_file))
    values = []
    for key in RECIPE_KEYS:
        group, name = key.split(".")
        values.append(f"{key}={(flat.get(group) or {}).get(name)!r}")
    return "; ".join(values)


def matrices(targets: Sequence[str]) -> str:
    """Target roles as the tables name the matrices: ``Wq,Wv`` for ``[q, v]`` (``analysis.adapters.ROLE_NAMES``);
    other roles and module names as they are (``up,down``, ``all-linear``)."""
    return ",".join(ROLE_NAMES.get(t, t) for t in targets)


def method_label(method: str, r: Optional[int], targets: Sequence[str], settings: Mapping) -> str:
    """A trial's configuration as the tables name it: ``full fine-tuning``, ``head only``, ``BitFit``,
    ``LoRA r=8 Wq,Wv`` (DoRA, AdaLoRA likewise), ``VeRA r=256 Wq,Wv`` (its shared rank), ``FourierFT n=1000 Wq,Wv``
    (coefficients per matrix), ``(IA)³ Wk,Wv,down``, ``prefix tuning (20 tokens)``. ``settings``: the trial's
    ``method`` section of its config.yaml (``sweep.config.MethodSettings``)."""
    name = METHOD_NAMES.get(method, str(method))
    what = {
        Method.vera: f"r={settings.get('vera_r')} ",
        Method.fourierft: f"n={settings.get('n_frequency')} ",
    }.get(method, f"r={r} " if r is not None else "")
    if method == Method.prefix:
        return f"{name} ({settings.get('prefix_length')} tokens)"
    return f"{name} {what}{matrices(targets)}".strip()


def trial_frame(folder: Path) -> pd.DataFrame:
    """One row per trial of a comparison: every ``folder/trials/*/`` holding a ``metrics.json``, in folder-name
    order (an interrupted trial, without one, is not there yet).

    Columns (``TRIAL_COLUMNS``): ``trial`` (the folder's name); from the record (``sweep.record.TrialResult``):
    ``method`` (a record without one: ``lora``), ``r``, ``targets`` (``targets_key``), ``seed``, ``lr``,
    ``status``, ``collapsed`` (True only for an ok trial that collapsed), ``objective``, ``value`` (its objective,
    metric units; ok trials only), ``resolution`` (one validation example's worth, the objective's unit),
    ``trainable_params``, ``trainable_pct``, ``lora_params``, ``train_flops``, ``train_seconds``, ``peak_mem_mb``,
    ``model``, ``task``, ``data_digest``, ``recipe`` (``recipe_of`` its ``config.yaml``), ``baseline`` (the constant answer's objective, metric units); ``label``
    (``method_label``, with the method's settings from the trial's ``config.yaml``).
    """
    rows = []
    for path in sorted(Path(folder).glob("trials/*/metrics.json")):
        rec = read_result(path)
        saved = path.parent / "config.yaml"
        settings = (OmegaConf.to_container(OmegaConf.load(saved)).get("method") or {}) if saved.is_file() else {}
        method = rec.method or Method.lora
        ok = rec.status == "ok"
        rows.append(
            {
                "trial": path.parent.name,
                "method": str(method),
                "label": method_label(method, rec.r, rec.targets, settings),
                "r": rec.r,
                "targets": targets_key(rec.targets),
                "seed": rec.seed,
                "lr": rec.lr,
                "status": str(rec.status),
                "collapsed": bool(rec.collapsed) and ok,
                "objective": rec.objective,
                "value": rec.objective_value if ok else None,
                "resolution": rec.resolution,
                "trainable_params": rec.trainable_params,
                "trainable_pct": rec.trainable_pct,
                "lora_params": rec.lora_params,
                "train_flops": rec.train_flops,
                "train_seconds": rec.train_seconds,
                "peak_mem_mb": rec.peak_mem_mb,
                "model": rec.model,
                "task": rec.task,
                "data_digest": rec.data_digest,
                "recipe": recipe_of(saved),
                "baseline": (rec.majority_baseline or {}).get(rec.objective),
            }
        )
    frame = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    return frame.astype({"r": "Int64", "seed": "Int64", **{c: "float64" for c in ("lr", "value", "resolution")}})


def _kept(group: pd.DataFrame) -> pd.DataFrame:
    """The trials of ``group`` whose objective counts: ok and not collapsed."""
    return group[(group["status"] == "ok") & ~group["collapsed"].astype(bool) & group["value"].notna()]


def seed_stats(group: pd.DataFrame) -> Optional[Stats]:
    """The statistics (``sweep.stats.stats_of``: scores, the objective's unit, higher is better) of the trials of
    ``group`` (``trial_frame`` rows of one configuration and rate) whose objective counts: ok and not collapsed;
    None when none does."""
    kept = _kept(group)
    return stats_of(list(kept["value"]), kept["objective"].iloc[0]) if len(kept) else None


def comparison_floor(trials: pd.DataFrame, settings) -> Optional[float]:
    """The s.d. floor of a comparison's intervals, points: ``settings.noise_floor`` (``SweepSettings``) validation
    examples' worth at the coarsest resolution of its counted trials (``sweep.decide.floor_at``); None without one."""
    return floor_at(list(_kept(trials)["resolution"].dropna()), settings)


def methods_frame(
    trials: pd.DataFrame,
    own_rates: Mapping[str, float],
    floor: Optional[float] = None,
    order: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per method, configuration (``label``) and learning rate of ``trials`` (``trial_frame``): methods in
    ``order`` (``compare.methods``), then any other in order of appearance; rates ascending.

    Columns (``COLUMNS``): ``method``, ``label``, ``r``, ``targets``, ``lr``; ``lr_scale`` (lr over the method's own
    rate ``own_rates[method]``, ``sweep.compare.own_rate``, to 3 significant digits: 0.333 for a rate bracketed
    under an earlier default; NaN when not given); ``chosen`` (each configuration's
    rate with the best mean, in the objective's direction; the lower rate on a tie, and without any mean the rate
    whose factor is nearest 1); ``n_seeds`` (ok trials that did not collapse), ``n_collapsed``, ``n_failed``
    (diverged); over the ``n_seeds`` seeds, in metric units as summary.csv: ``objective_mean``, ``objective_sd``
    (ddof=1; NaN for one seed), ``objective_ci95_low``/``_high`` (``sweep.stats.Stats.interval``: mean ±
    t₀.₉₇₅,ₙ₋₁·s/√n, s raised to ``floor`` points; NaN below two seeds); ``trainable_params``, ``trainable_pct``
    (percent of the model), ``lora_params`` (trained outside the head), the largest recorded; ``mean_train_flops``,
    ``mean_train_seconds`` over the ok trials, collapsed ones included (a cost does not depend on the metric);
    ``peak_mem_mb``, the largest of them (MiB).
    """
    if trials.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    methods = list(dict.fromkeys([m for m in order if m in set(trials["method"])] + list(trials["method"])))
    rows = []
    for method in methods:
        for (label, lr), group in trials[trials["method"] == method].groupby(["label", "lr"], sort=True, dropna=False):
            st = seed_stats(group)
            m = metric_of(group["objective"].dropna().iloc[0] if group["objective"].notna().any() else None)
            mean, sd, low, high = metric_units(st, floor, m)
            ok = group[group["status"] == "ok"]
            rows.append(
                {
                    "method": method,
                    "label": label,
                    "r": group["r"].iloc[0],
                    "targets": group["targets"].iloc[0],
                    "lr": lr,
                    "lr_scale": float(f"{lr / own_rates[method]:.3g}") if method in own_rates else math.nan,
                    "n_seeds": st.n if st is not None else 0,
                    "n_collapsed": int(group["collapsed"].sum()),
                    "n_failed": int((group["status"] != "ok").sum()),
                    "objective_mean": mean,
                    "objective_sd": sd,
                    "objective_ci95_low": low,
                    "objective_ci95_high": high,
                    "trainable_params": group["trainable_params"].max(),
                    "trainable_pct": group["trainable_pct"].max(),
                    "lora_params": group["lora_params"].max(),
                    "mean_train_flops": ok["train_flops"].mean(),
                    "mean_train_seconds": ok["train_seconds"].mean(),
                    "peak_mem_mb": ok["peak_mem_mb"].max(),
                    "score": m.sign * mean,
                }
            )
    frame = pd.DataFrame(rows)
    frame["chosen"] = False
    for _, group in frame.groupby(["method", "label"], sort=False):
        scored = group["score"].dropna()
        best = scored.idxmax() if len(scored) else (group["lr_scale"] - 1).abs().fillna(0).idxmin()
        frame.loc[best, "chosen"] = True
    frame = frame[list(COLUMNS)]
    return frame.astype({"r": "Int64", "trainable_params": "Int64", "lora_params": "Int64", "chosen": "bool"})


@dataclass(frozen=True)
class Reference:
    """A reference method (``REFERENCE_METHODS``) of a comparison at its chosen rate (``methods_frame``), as a
    sweep's report measures its recommendation against it: the comparison's ``folder``, ``method``, ``label``,
    ``lr``, the statistics of its counted seeds (``seed_stats``: scores; None when every seed collapsed),
    ``n_collapsed`` and ``trainable_params``."""

    folder: Path
    method: str
    label: str
    lr: float
    stats: Optional[Stats]
    n_collapsed: int
    trainable_params: int


def references(
    task_dir: Path, model: str, objective: str, digest: Optional[str], recipe: Optional[str]
) -> List[Reference]:
    """Full fine-tuning and head only in the comparisons under ``task_dir`` (``results/<task>/compare/*/``)
    trained on the same model (``model``, short name), for the same ``objective``, on the same rows (their
    records' ``data_digest`` equals ``digest``) with the same training recipe (``recipe_of``: epochs, batch,
    lengths, …; None, a folder without ``config.yaml``, matches only None), each at the rate of its best mean; of
    several comparisons holding one, the one with the most counted seeds (then the first by folder name). Full
    fine-tuning first. Empty when ``digest`` is None (what a sweep read is unknown)."""
    if digest is None:
        return []
    best: Dict[str, Reference] = {}
    for folder in sorted(p for p in Path(task_dir).glob("compare/*") if p.is_dir()):
        trials = trial_frame(folder)
        same = trials[
            trials["method"].isin([str(m) for m in REFERENCE_METHODS])
            & (trials["model"] == model)
            & (trials["objective"] == objective)
            & (trials["data_digest"] == digest)
            & (trials["recipe"].fillna("") == (recipe or ""))
        ]
        table = methods_frame(same, {}, order=[str(m) for m in REFERENCE_METHODS])
        for row in table[table["chosen"]].itertuples():
            group = same[(same["label"] == row.label) & (same["lr"] == row.lr)]
            ref = Reference(
                folder, row.method, row.label, row.lr, seed_stats(group), row.n_collapsed, row.trainable_params
            )
            n = ref.stats.n if ref.stats is not None else 0
            held = best.get(row.method)
            if held is None or n > (held.stats.n if held.stats is not None else 0):
                best[row.method] = ref
    return [best[str(m)] for m in REFERENCE_METHODS if str(m) in best]


@dataclass(frozen=True)
class SweepBeside:
    """The rank sweep of a comparison's task (``results/<task>/<sweep.name>/``), for its report and plots:
    ``folder``; ``summary`` (``analysis.summary.summary_frame``) and ``row``, its recommendation as a methods.csv
    row (``COLUMNS``, ``label`` ending in "(the sweep's recommendation)"; None when it recommends nothing), both
    None when the sweep is not comparable, with ``note`` saying why (another model, other data)."""

    folder: Path
    summary: Optional[pd.DataFrame]
    row: Optional[dict]
    note: Optional[str] = None


def sweep_beside(cfg: Config, info: ComparisonInfo) -> Optional[SweepBeside]:
    """The rank sweep ``cfg``'s sweep commands read (``sweep.name``, ``sweep.storage``; ``analysis.report.load_report``)
    beside the comparison ``info``: its summary and recommended configuration when it trained the same model on the
    same rows (``data_digest``), else only a note; None when there is no sweep with a finished trial."""
    from analysis.report import load_report
    from sweep.paths import sweep_dir
    from sweep.study import storage_url, study_name

    folder = sweep_dir(cfg)
    try:
        rep = load_report(storage_url(cfg), study_name(cfg))
    except UserError:
        return None
    if rep.info.model != info.model or rep.info.objective != info.objective:
        note = f"trained {rep.info.model} for {rep.info.objective}, not {info.model} for {info.objective}"
        return SweepBeside(folder, None, None, note)
    if rep.info.data_digest is None or rep.info.data_digest != info.data_digest:
        return SweepBeside(folder, None, None, "its trials read other rows (data digest) than the comparison's")
    if recipe_of(folder / "config.yaml") != info.recipe:
        return SweepBeside(folder, None, None, "it trained with another recipe (epochs, batch, lengths: RECIPE_KEYS)")
    pick, _ = recommendation(rep.trials, rep.info)
    if pick is None:
        return SweepBeside(folder, rep.summary, None, "it recommends no configuration yet")
    row = rep.summary[(rep.summary["r"] == pick[0]) & (rep.summary["targets"] == pick[1])].iloc[0]
    trials = rep.trials[
        (rep.trials["r"] == pick[0])
        & (rep.trials["targets"] == pick[1])
        & (rep.trials["state"] == "complete")
        & ((rep.trials["lr"] == rep.info.lr) if rep.info.lr is not None else True)
    ]
    method = next(iter(trials["method"].dropna()), None) or Method.lora
    targets = pick[1].split(",")
    what = (
        "head only"
        if pick[0] == HEAD_ONLY
        else f"{METHOD_NAMES.get(method, method)} r={pick[0]} on {matrices(targets)}"
    )
    summary_keys = ("n_seeds", "n_collapsed", "n_failed", "objective_mean", "objective_sd", "objective_ci95_low")
    summary_keys += ("objective_ci95_high", "trainable_params", "trainable_pct", "lora_params")
    return SweepBeside(
        folder,
        rep.summary,
        {
            "method": str(method),
            "label": f"{what} (the sweep's recommendation)",
            "r": pick[0],
            "targets": pick[1],
            "lr": rep.info.lr if rep.info.lr is not None else trials["lr"].max(),
            "lr_scale": math.nan,
            "chosen": True,
            **{k: row[k] for k in summary_keys},
            "mean_train_flops": row["mean_train_flops"],
            "mean_train_seconds": row["mean_train_seconds"],
            "peak_mem_mb": trials["peak_mem_mb"].max(),
        },
    )


def comparison_info(trials: pd.DataFrame, folder: Path) -> ComparisonInfo:
    """The task, model, objective, baseline and data digest its trials (``trial_frame``) share.

    Raises:
        UserError: no trial, or trials of more than one task, model, objective or data set in ``folder``.
    """
    if trials.empty:
        raise UserError(f"{folder} holds no finished trial (trials/*/metrics.json): run make compare first")
    checked = (("task", "task"), ("model", "model"), ("objective", "objective"), ("data_digest", "data set"))
    for key, what in (*checked, ("recipe", "training recipe")):
        seen = sorted(map(str, trials[key].dropna().unique()))
        if len(seen) > 1:
            raise UserError(
                f"{folder} holds trials of more than one {what} ({', '.join(seen)}): a comparison tabulates one; "
                "move the others to a comparison folder of their own (compare.name=…)"
            )
    first = trials.iloc[0]
    baseline = trials["baseline"].dropna()
    return ComparisonInfo(
        str(first["task"]),
        str(first["model"]),
        str(first["objective"]),
        float(baseline.iloc[0]) if len(baseline) else None,
        first["data_digest"],
        first["recipe"],
    )


def write_methods(cfg: Config, overrides: Sequence[str]) -> List[Path]:
    """Write the comparison ``cfg.compare`` from its trial folders (``compare_dir``): ``methods.csv``
    (``methods_frame``; the s.d. floor from ``cfg.sweep.noise_floor``, methods in ``cfg.compare.methods``'
    order), ``plots/methods_vs_params.png``, ``plots/methods_vs_flops.png`` and ``report.md``, each whole or not at
    all (``sweep.faults.atomic_write``), with the rank sweep of ``cfg`` beside them when there is one
    (``sweep_beside``). ``overrides``: the command's, which the methods' own rates are composed with.

    Returns:
        The paths written, in that order.

    Raises:
        UserError: ``overrides`` set a key a comparison sets per trial, or as ``comparison_info``.
    """
    from analysis.method_plots import method_figures
    from analysis.methods_report import report_markdown
    from analysis.plots import save_figure

    check_overrides(overrides)
    folder = compare_dir(cfg)
    trials = trial_frame(folder)
    info = comparison_info(trials, folder)
    rates: Dict[str, float] = {m: own_rate(overrides, m) for m in trials["method"].unique()}
    methods = methods_frame(trials, rates, comparison_floor(trials, cfg.sweep), cfg.compare.methods)
    beside = sweep_beside(cfg, info)
    paths = [atomic_write(folder / "methods.csv", lambda tmp: methods.to_csv(tmp, index=False))]
    for name, fig in method_figures(methods, info, beside).items():
        paths.append(save_figure(fig, folder / "plots" / f"{name}.png"))
    text = report_markdown(methods, trials, info, folder, beside)
    paths.append(atomic_write(folder / "report.md", lambda tmp: tmp.write_text(text)))
    return paths


def main(args: List[str]) -> int:
    cfg = comparison_config(args)
    out = compare_dir(cfg)
    files = write_methods(cfg, args)
    print(f"reports in {out}: {', '.join(str(f.relative_to(out)) for f in files)}")
    return 0


if __name__ == "__main__":
    run_cli(main)

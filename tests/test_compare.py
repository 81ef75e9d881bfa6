"""``make compare`` (sweep/compare.py) and its tables (analysis/methods.py), and the sweep report's gaps to full
fine-tuning and head only (analysis/report.py).

The comparison trains MiniLM (embedded) on ``debug=tiny``: head only and VeRA at their own rates (1e-2, 3e-2), two seeds,
then again with the factors 0.5 and 1. At those rates both learn something in 4 steps and one seed of the ×0.5
rate collapses, so the rows hold an interval, a lone seed and a collapsed one (the random tiny BERT collapses in
every method at every own rate: its rows would hold no statistics). Every expected number is computed below
from the trials' ``metrics.json`` by hand (the mean, the ddof=1 s.d., mean ± t₀.₉₇₅·max(s.d., floor)/√n with
scipy's t quantile) and Welch's interval from scipy's ``ttest_ind(equal_var=False)``.
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_main
from fakes import FINISHED, HEAD, NAME, make_study, trial
from fakes import small_settings as settings
from omegaconf import OmegaConf
from scipy.stats import t as student_t
from scipy.stats import ttest_ind

from analysis.methods import main as methods_main
from analysis.report import write_reports
from sweep.cli import compose
from sweep.compare import main as compare_main
from sweep.record import TrialResult, write_result
from sweep.stats import stats_of, welch

#: MiniLM, debug=tiny: 32 validation examples, one worth 100/32 points; sweep.noise_floor 0.29 of one (metric units)
FLOOR = 0.29 / 32
METHODS = "compare.methods=[head,vera]"


def _compare(root: Path, glue: Path, *more: str):
    return run_main(
        compare_main,
        "debug=tiny",
        f"data.dir={glue}",
        f"results_dir={root}",
        "train.threads=1",
        METHODS,
        "compare.seeds=[0,1]",
        *more,
    )


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, glue_dir):
    """The comparison at the factor 1, widened to [0.5, 1], run again; and what each run printed and wrote."""
    root = tmp_path_factory.mktemp("compare")
    folder = root / "mrpc" / "compare" / "default"
    first = _compare(root, glue_dir, "compare.lr_scale=[1]")
    csv_first = (folder / "methods.csv").read_text()
    widened = _compare(root, glue_dir, "compare.lr_scale=[0.5,1]")
    csv_widened = (folder / "methods.csv").read_text()
    again = _compare(root, glue_dir, "compare.lr_scale=[0.5,1]")
    return {
        "root": root,
        "folder": folder,
        "glue": glue_dir,
        "runs": (first, widened, again),
        "csv": (csv_first, csv_widened, (folder / "methods.csv").read_text()),
    }


def _hand(folder: Path, prefix: str, lr: float) -> dict:
    """A row of methods.csv from the trials' metrics.json (``<prefix>-seed<s>-lr<lr>``), by hand."""
    records = [
        json.loads((folder / "trials" / f"{prefix}-seed{s}-lr{lr:g}" / "metrics.json").read_text()) for s in (0, 1)
    ]
    kept = [r["objective_value"] for r in records if r["status"] == "ok" and not r["collapsed"]]
    n = len(kept)
    mean = sum(kept) / n if n else math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in kept) / (n - 1)) if n > 1 else math.nan
    half = student_t.ppf(0.975, n - 1) * max(sd, FLOOR) / math.sqrt(n) if n > 1 else math.nan
    return {
        "n_seeds": n,
        "n_collapsed": sum(bool(r["collapsed"]) for r in records),
        "objective_mean": mean,
        "objective_sd": sd,
        "objective_ci95_low": mean - half,
        "objective_ci95_high": mean + half,
        "trainable_params": records[0]["trainable_params"],
        "trainable_pct": records[0]["trainable_pct"],
        "mean_train_flops": sum(r["train_flops"] for r in records) / 2,
        "mean_train_seconds": sum(r["train_seconds"] for r in records) / 2,
        "peak_mem_mb": max(r["peak_mem_mb"] for r in records),
    }


#: (method, label, trial folder prefix, own rate)
METHOD_ROWS = [("head", "head only", "head", 1e-2), ("vera", "VeRA r=256 Wq,Wv", "vera-q-v", 3e-2)]


def test_a_rerun_trains_only_what_is_new(comparison):
    first, widened, again = comparison["runs"]
    assert [run.returncode for run in comparison["runs"]] == [0, 0, 0], comparison["runs"]
    assert "2 methods × 1 rate(s) × 2 seeds = 4 trials; 0 finished (reused), 4 to train" in first.stdout
    assert "2 methods × 2 rate(s) × 2 seeds = 8 trials; 4 finished (reused), 4 to train" in widened.stdout
    assert "8 trials; 8 finished (reused), 0 to train" in again.stdout
    assert f"report: {comparison['folder'] / 'report.md'}" in again.stdout
    assert comparison["csv"][2] == comparison["csv"][1]


@pytest.mark.parametrize("run", [0, 1], ids=["lr_scale=[1]", "lr_scale=[0.5,1]"])
def test_methods_csv_is_the_trials_by_hand(comparison, run, tmp_path):
    path = tmp_path / "methods.csv"
    path.write_text(comparison["csv"][run])
    table = pd.read_csv(path)
    scales = [1.0] if run == 0 else [0.5, 1.0]
    assert list(zip(table["method"], table["lr_scale"])) == [(m, f) for m, *_ in METHOD_ROWS for f in scales]
    for method, label, prefix, own in METHOD_ROWS:
        rows = table[table["method"] == method]
        assert list(rows["label"]) == [label] * len(scales)
        hands = [_hand(comparison["folder"], prefix, own * f) for f in scales]
        for (_, got), hand, f in zip(rows.iterrows(), hands, scales):
            assert got["lr"] == pytest.approx(own * f)
            for key, value in hand.items():
                assert got[key] == pytest.approx(value, nan_ok=True), (method, f, key)
        # the chosen rate: the best mean, the lower rate on a tie; without any mean (every seed collapsed), the rate
        # whose factor is nearest 1
        means = [h["objective_mean"] for h in hands]
        best = max(range(len(means)), key=lambda i: (-math.inf if math.isnan(means[i]) else means[i], -i))
        if all(math.isnan(x) for x in means):
            best = min(range(len(scales)), key=lambda i: abs(scales[i] - 1))
        assert list(rows["chosen"]) == [i == best for i in range(len(scales))]


def test_the_report_table_holds_each_method_at_its_best_rate(comparison):
    text = (comparison["folder"] / "report.md").read_text()
    section = text[text.index("## Methods (LoRA Table 2)") : text.index("## Learning rates")]
    table = pd.read_csv(comparison["folder"] / "methods.csv")
    for method, label, prefix, _ in METHOD_ROWS:
        chosen = table[(table["method"] == method) & table["chosen"]].iloc[0]
        hand = _hand(comparison["folder"], prefix, chosen["lr"])
        mean = f"{100 * hand['objective_mean']:.2f} ± {100 * hand['objective_sd']:.2f} (n={hand['n_seeds']})"
        ci = f"{100 * hand['objective_ci95_low']:.2f}–{100 * hand['objective_ci95_high']:.2f}"
        (line,) = [x for x in section.splitlines() if x.startswith(f"| {label} |")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:7] == [
            f"{hand['trainable_params']:,}",
            f"{hand['trainable_pct']:.3g}%",
            mean,
            ci,
            f"{hand['n_seeds']} / {hand['n_collapsed']} / 0",
            f"{chosen['lr']:g}",
        ]
    assert "the table shows each method at its best rate by mean" in text
    assert "## Learning rates" in text and "Best rate per method, by mean: head only " in text


def test_analysis_methods_rewrites_the_tables_from_the_trials_alone(comparison):
    folder = comparison["folder"]
    (folder / "methods.csv").unlink()
    (folder / "report.md").unlink()
    ran = run_main(methods_main, "debug=tiny", f"results_dir={comparison['root']}")
    assert ran.returncode == 0, ran
    assert (folder / "methods.csv").read_text() == comparison["csv"][1]
    assert (folder / "report.md").is_file() and (folder / "plots" / "methods_vs_params.png").is_file()


def test_a_trial_of_other_settings_is_refused_in_one_line(comparison):
    ran = _compare(comparison["root"], comparison["glue"], "compare.lr_scale=[1]", "train.epochs=2")
    assert ran.returncode == 2, ran
    assert ran.stderr.strip().splitlines() == [
        f"ranksweep: error: {comparison['folder'] / 'trials' / 'head-seed0-lr0.01'} holds a finished trial made with "
        "other settings than this comparison's (train.epochs: 1 there, 2 here); re-run with the settings it was made "
        "with, or give compare.name=<new name>"
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "compare.methods=[foo]",
            "compare.methods='foo' is invalid: valid values are lora, dora, adalora, vera, fourierft, ia3, prefix, "
            "bitfit, head, full",
        ),
        ("method=full", "method=full is set by make compare for each trial: give compare.methods=[…] instead"),
        ("train.seed=3", "train.seed=3 is set by make compare for each trial: give compare.seeds=[…] instead"),
    ],
)
def test_bad_compare_command_lines_are_refused_in_one_line(tmp_path, override, message):
    ran = run_main(compare_main, f"results_dir={tmp_path}", override)
    assert ran.returncode == 2
    assert ran.stderr.strip().splitlines() == [f"ranksweep: error: {message}"]
    assert not (tmp_path / "mrpc").exists()


# Welch's interval of mean_B − mean_A against scipy (a second method), and by hand where a floor applies:
# (A's values, B's values, floor, (low, high) by hand or None: scipy's)
A3 = [80.0, 82.0, 85.0]
WELCH = [
    (A3, [70.0, 74.0], None, None),
    ([70.0, 71.0, 75.0, 76.0], [84.0, 85.5, 86.0], None, None),
    # every seed equal on both sides: the floor 0.5 is each side's s.d.; v = 0.25/3 + 0.25/2, dof = v² /
    # ((0.25/3)²/2 + (0.25/2)²/1) = 0.0434/0.0191 = 2.273
    ([1.0] * 3, [2.0] * 2, 0.5, "floor"),
]


@pytest.mark.parametrize("a, b, floor, expected", WELCH)
def test_welch_interval(a, b, floor, expected):
    d = welch(stats_of([x / 100 for x in a]), stats_of([x / 100 for x in b]), 0.95, floor)
    mean_gap = sum(b) / len(b) - sum(a) / len(a)
    if expected is None:
        ci = ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
        low, high = ci.low, ci.high
    else:
        va, vb = floor**2 / len(a), floor**2 / len(b)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        half = student_t.ppf(0.975, dof) * math.sqrt(va + vb)
        low, high = mean_gap - half, mean_gap + half
    assert (d.gain, d.low, d.high) == pytest.approx((mean_gap, low, high))
    assert welch(stats_of([0.8]), stats_of([0.7, 0.75])).low is None  # one seed: no interval


def _reference(
    folder: Path, method: str, seed: int, value, *, lr, params, digest="abc", model="minilm", collapsed=False
):
    run_dir = folder / "trials" / f"{method}-seed{seed}-lr{lr:g}"
    run_dir.mkdir(parents=True)
    record = TrialResult(
        task="mrpc",
        model=model,
        method=method,
        seed=seed,
        lr=lr,
        data_digest=digest,
        objective="accuracy",
        objective_value=value,
        best={"accuracy": value},
        trainable_params=params,
        total_params=1_000_000,
        trainable_pct=100 * params / 1_000_000,
        collapsed=collapsed,
    )
    write_result(run_dir / "metrics.json", record)


def test_the_sweep_report_states_the_gap_to_full_fine_tuning_and_head_only(tmp_path):
    """FINISHED recommends r=2 on q,v: 84 and 86 points, 14,000 trainable parameters. Made-up references beside it:
    full fine-tuning 87, 88, 86.5 (1,000,000 parameters); head only 70, 74 and a collapsed seed (10,000); a head
    trial of other data and a full one of another model, which are not compared."""
    url = make_study(tmp_path, settings(), [trial(*t, digest="abc") for t in FINISHED])
    refs = tmp_path / "mrpc" / "compare" / "default"
    for seed, value in enumerate((0.87, 0.88, 0.865)):
        _reference(refs, "full", seed, value, lr=5e-5, params=1_000_000)
    for seed, value in enumerate((0.70, 0.74)):
        _reference(refs, "head", seed, value, lr=1e-2, params=HEAD)
    _reference(refs, "head", 2, 0.684, lr=1e-2, params=HEAD, collapsed=True)
    _reference(tmp_path / "mrpc" / "compare" / "other", "head", 0, 0.99, lr=1e-2, params=HEAD, digest="xyz")
    _reference(tmp_path / "mrpc" / "compare" / "other", "full", 0, 0.99, lr=5e-5, params=HEAD, model="bert")
    # the same model, rows and objective, more seeds (the one kept, were it comparable), but another training
    # recipe (its config.yaml: 2 epochs; the sweep's none)
    long_config = OmegaConf.to_yaml(compose(["train.epochs=2"])[1])
    for seed in range(4):
        _reference(tmp_path / "mrpc" / "compare" / "long", "full", seed, 0.99, lr=5e-5, params=HEAD)
        (tmp_path / "mrpc" / "compare" / "long" / "trials" / f"full-seed{seed}-lr5e-05" / "config.yaml").write_text(
            long_config
        )
    text = write_reports(url, NAME, tmp_path / "mrpc" / "default")[-1].read_text()
    pick, full, head = [84.0, 86.0], [87.0, 88.0, 86.5], [70.0, 74.0]
    below = ttest_ind(full, pick, equal_var=False).confidence_interval(0.95)  # full − pick: how far below
    above = ttest_ind(pick, head, equal_var=False).confidence_interval(0.95)  # pick − head: how far above
    assert (
        f"- r=2 on Wq,Wv is {sum(full) / 3 - 85:.2f} points below full fine-tuning, 95% interval [{below.low:.2f}, "
        f"{below.high:.2f}], with 1.4% of its trainable parameters (full fine-tuning: {sum(full) / 3:.2f} ± "
        f"{pd.Series(full).std():.2f} over 3 seed(s) at lr 5e-05, `compare/default/`)." in text
    )
    assert (
        f"- r=2 on Wq,Wv is 13.00 points above head only, 95% interval [{above.low:.2f}, {above.high:.2f}], with 1.4× "
        "its trainable parameters (head only: 72.00 ± 2.83 over 2 seed(s), 1 collapsed left out at lr 0.01, "
        "`compare/default/`)." in text
    )
    assert text.count("points above head only") == 1 and "compare/other/" not in text and "compare/long/" not in text


def test_a_setting_applies_to_the_methods_that_read_it(tmp_path):
    """``lora.r=4`` and ``method.vera_r=16`` beside head only: the rank is LoRA's, the shared rank VeRA's, and head
    only's trial is the one a comparison without them plans (the same identity, reused); each is said in one line."""
    from sweep.compare import comparison_config, left_out_lines, planned_trials

    base = ["debug=tiny", f"results_dir={tmp_path}", "compare.seeds=[0]", "compare.methods=[head,lora,vera]"]
    args = [*base, "lora.r=4", "method.vera_r=16"]
    cfg = comparison_config(args)
    plan = {t.cfg.method.name: t for t in planned_trials(cfg, args)}
    plain = {t.cfg.method.name: t for t in planned_trials(comparison_config(base), base)}
    assert plan["lora"].cfg.lora.r == 4 and plan["lora"].run_dir.name == "r4-q-v-seed0-lr0.002"
    assert plan["vera"].cfg.method.vera_r == 16
    assert plan["head"].run_dir == plain["head"].run_dir and plan["head"].resolved == plain["head"].resolved
    assert left_out_lines(cfg, args) == [
        "compare: lora.r=4 applies to lora; head, vera do not read it",
        "compare: method.vera_r=16 applies to vera; head, lora do not read it",
    ]


def test_the_expected_time_is_each_trials_methods_mean_of_what_finished(tmp_path):
    from types import SimpleNamespace

    from sweep.compare import compare_dir, expected_seconds

    cfg, _ = compose(["debug=tiny", f"results_dir={tmp_path}"])
    folder = compare_dir(cfg)
    assert expected_seconds(cfg, []) is None  # nothing finished yet: not known
    for method, seed, train, evaluation in (
        ("head", 0, 100.0, 10.0),
        ("head", 1, 120.0, 10.0),
        ("lora", 0, 300.0, 20.0),
    ):
        run_dir = folder / "trials" / f"{method}-seed{seed}"
        run_dir.mkdir(parents=True)
        write_result(
            run_dir / "metrics.json",
            TrialResult(method=method, seed=seed, train_seconds=train, eval_seconds=evaluation),
        )

    def todo(*methods):
        return [SimpleNamespace(cfg=SimpleNamespace(method=SimpleNamespace(name=m))) for m in methods]

    # head: (110 + 130) / 2 = 120; lora: 320; full has none: the mean of every finished trial, (110 + 130 + 320) / 3
    assert expected_seconds(cfg, todo("head", "lora", "full")) == pytest.approx(120 + 320 + 560 / 3)

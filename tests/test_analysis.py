"""Reports of synthetic sweep studies built with Optuna's API from known numbers: no training.

Expected means, standard deviations, t-intervals, Pareto sets and recommendations are worked out by
hand below (metric units in the CSVs; the sweep's rule compares points, 100 × metric: with two
seeds and no racing, a tolerance of 5 points and one-sided 90% t bounds). The studies' decisions come
from ``sweep.decide.plan``, as the driver stores them.
"""

import math

import matplotlib.image
import optuna
import pandas as pd
import pytest
from conftest import run_main
from fakes import COSTS, FINISHED, HEAD, NAME, T90, T975, make_study, trial
from fakes import small_settings as settings

from analysis import decisions_frame, figures, recommendation, study_info, summary_frame, trials_frame, write_reports
from analysis.__main__ import main as analysis_main
from sweep.decide import plan
from sweep.decision import Action
from sweep.errors import UserError
from sweep.record import record_fields
from sweep.study import load_study, outcomes

FILES = [
    "trials.csv",
    "summary.csv",
    "plots/metric_vs_params.png",
    "plots/metric_vs_compute.png",
    "plots/progression.png",
    "report.md",
]
#: trials.csv: the configuration, the record's csv fields (their list is pinned in test_record.py), the
#: task's metrics at the best epoch, the objective and the reason
TRIAL_COLUMNS = [
    "number",
    "state",
    "status",
    "stage",
    "r",
    "targets",
    "seed",
    *record_fields("csv"),
    "accuracy",
    "f1",
    "objective",
    "reason",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)


# An interrupted progressive sweep with three seeds. r=1: 70, 72, 75 points, mean 72.333, sd² =
# (0.0233² + 0.0033² + 0.0267²)/2 in metric units; r=2: seed 0 diverged, 73.5 and 74.5, mean 74.0, sd
# 0.707. Pooled sd² = (2·6.333 + 1·0.5)/3 = 4.389 → 2.095 (3 d.f.); SE = 2.095·sqrt(1/3+1/2) = 1.912,
# bounds 1.667 ∓ 1.638·1.912 = [−1.46, 4.80], upper < 5: r=2 is no gain, the rank plateaus at r=1 and
# q,k,v,o is escalated to. Trial 6 is an orphan FAIL (no configuration stored), trial 7 is still
# running. Provisional recommendation: the best is r=2; r=1, with fewer parameters, is within 5 points
# of it (upper bound 4.80): r=1 on q,v.
PARTIAL = [
    (1, "q,v", 0, 0.70, "rank"),
    (1, "q,v", 1, 0.72, "rank"),
    (1, "q,v", 2, 0.75, "rank"),
    (2, "q,v", 0, "diverged", "rank"),
    (2, "q,v", 1, 0.735, "rank"),
    (2, "q,v", 2, 0.745, "rank"),
    (4, "q,v", 0, "orphan", "rank"),
    (1, "q,k,v,o", 0, "running", "targets"),
]

# A finished grid, one seed: no noise estimate, so no cheaper configuration can be shown within the
# tolerance of the best: the best, r=2 q,k,v,o at 84.0, is recommended (r=2 q,v at 83.8 is not).
GRID = [
    (1, "q,v", 0, 0.82, "grid"),
    (2, "q,v", 0, 0.838, "grid"),
    (1, "q,k,v,o", 0, 0.83, "grid"),
    (2, "q,k,v,o", 0, 0.84, "grid"),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The finished study, its reports written by the command line into its sweep folder."""
    root = tmp_path_factory.mktemp("finished")
    url = make_study(root, settings(), [trial(*t) for t in FINISHED])
    assert analysis_main([f"results_dir={root}"]) == 0
    return url, root / "mrpc" / "default"


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The interrupted study and the paths of its reports."""
    root = tmp_path_factory.mktemp("partial")
    url = make_study(root, settings(seeds=[0, 1, 2], max_seeds=3), [trial(*t) for t in PARTIAL], sweep_ended=False)
    return url, write_reports(url, NAME, root / "out")


def loaded(url):
    study = load_study(url, NAME)
    trials = trials_frame(study)
    info = study_info(study)
    return trials, summary_frame(trials, info), info


def row(summary, r, targets):
    (i,) = summary.index[(summary["r"] == r) & (summary["targets"] == targets)]
    return summary.loc[i]


def test_trials_csv_one_row_per_trial(finished):
    df = pd.read_csv(finished[1] / "trials.csv")
    assert list(df.columns) == TRIAL_COLUMNS
    assert list(df["number"]) == list(range(8))
    assert list(df["state"]) == ["complete"] * 7 + ["diverged"]
    assert list(df["r"]) == [1, 1, 2, 2, 4, 4, 2, 2]
    assert list(df["targets"]) == ["q,v"] * 6 + ["q,k,v,o"] * 2
    assert list(df["objective"][:7]) == pytest.approx([0.80, 0.82, 0.84, 0.86, 0.85, 0.87, 0.865])
    assert list(df["f1"][:7]) == pytest.approx([0.85, 0.87, 0.89, 0.91, 0.90, 0.92, 0.915])
    assert math.isnan(df["objective"][7]) and math.isnan(df["accuracy"][7])
    last = df.iloc[7]
    assert (last["status"], last["reason"]) == ("diverged", "training loss became nan in epoch 2 by step 40")
    assert last["trainable_params"] == HEAD + 2 * 4_000 and last["train_flops"] == 0.5e11
    assert df["trainable_pct"][0] == pytest.approx(100 * 12_000 / 1_002_000)


def test_summary_csv_matches_hand_arithmetic(finished):
    s = pd.read_csv(finished[1] / "summary.csv")
    assert list(zip(s["r"], s["targets"])) == [(1, "q,v"), (2, "q,v"), (4, "q,v"), (2, "q,k,v,o")]
    sd = math.sqrt((0.01**2 + 0.01**2) / 1)  # every q,v pair is mean ± 0.01
    half = T975[1] * sd / math.sqrt(2)
    for r, mean in ((1, 0.81), (2, 0.85), (4, 0.86)):
        got = row(s, r, "q,v")
        assert (got["n_seeds"], got["n_failed"]) == (2, 0)
        assert got["objective_mean"] == pytest.approx(mean)
        assert got["objective_sd"] == pytest.approx(sd)
        assert got["objective_ci95_low"] == pytest.approx(mean - half)
        assert got["objective_ci95_high"] == pytest.approx(mean + half)
    wide = row(s, 2, "q,k,v,o")
    assert (wide["n_seeds"], wide["n_failed"], wide["objective_mean"]) == (1, 1, pytest.approx(0.865))
    assert wide[["objective_sd", "objective_ci95_low", "objective_ci95_high"]].isna().all()
    # the diverged seed's FLOPs and seconds are not part of the means
    assert wide["mean_train_flops"] == pytest.approx(1.06e11) and wide["mean_train_seconds"] == pytest.approx(15.0)
    assert list(s["mean_train_flops"]) == pytest.approx([1.02e11, 1.03e11, 1.05e11, 1.06e11])
    assert list(s["mean_train_seconds"]) == pytest.approx([11.0, 12.0, 13.0, 15.0])
    assert list(s["trainable_params"]) == [12_000, 14_000, 18_000, 18_000]
    assert list(s["lora_params"]) == [2_000, 4_000, 8_000, 8_000]
    # vs parameters: r=4 q,v (18,000; 86.0) is dominated by r=2 q,k,v,o (18,000; 86.5); vs FLOPs every
    # configuration buys its accuracy with more FLOPs: 1.02e11 < 1.03e11 < 1.05e11 < 1.06e11, 81 < 85 < 86 < 86.5
    assert list(s["pareto_params"]) == [True, True, False, True]
    assert list(s["pareto_flops"]) == [True, True, True, True]
    assert list(s["recommended"]) == [False, True, False, False]
    assert row(s, 2, "q,v")["decision"] == "continue; plateau; escalate; plateau; recommend"
    assert list(s["decision"]) == ["start", "continue; plateau; escalate; plateau; recommend", "no-gain", "no-gain"]


def test_partial_study_reports_provisional_recommendation(partial):
    paths = partial[1]
    out = paths[0].parent
    assert [str(p.relative_to(out)) for p in paths] == FILES
    t = pd.read_csv(out / "trials.csv")
    assert list(t["state"]) == ["complete"] * 3 + ["diverged"] + ["complete"] * 2 + ["failed", "running"]
    assert list(t["status"][3:7]) == ["diverged", "ok", "ok", "failed"] and pd.isna(t["status"][7])
    assert t["reason"][3] == "training loss became nan in epoch 2 by step 40"
    assert (t["r"][6], t["seed"][6]) == (4, 0) and pd.isna(t["targets"][6])

    s = pd.read_csv(out / "summary.csv")
    assert list(zip(s["r"], s["targets"], s["n_seeds"], s["n_failed"], s["n_running"])) == [
        (1, "q,v", 3, 0, 0),
        (2, "q,v", 2, 1, 0),
        (1, "q,k,v,o", 0, 0, 1),
    ]
    r1 = row(s, 1, "q,v")
    mean1 = (0.70 + 0.72 + 0.75) / 3
    sd1 = math.sqrt(((0.70 - mean1) ** 2 + (0.72 - mean1) ** 2 + (0.75 - mean1) ** 2) / 2)
    assert (r1["objective_mean"], r1["objective_sd"]) == (pytest.approx(mean1), pytest.approx(sd1))
    assert r1["objective_ci95_high"] == pytest.approx(mean1 + T975[2] * sd1 / math.sqrt(3))
    r2 = row(s, 2, "q,v")
    assert r2["objective_ci95_low"] == pytest.approx(0.74 - T975[1] * math.sqrt(0.005**2 * 2) / math.sqrt(2))
    assert list(s["recommended"]) == [True, False, False]
    assert list(s["pareto_params"]) == [True, True, False]  # r=2 is dearer and better: both on the front

    report = (out / "report.md").read_text()
    assert "Provisional" in report and "**r=1 on q,v**" in report
    # gain 74.0 − 72.33 = 1.67 points; upper bound 1.667 + t(0.9, 3 d.f.)·1.912
    assert "is ahead by 1.67 points (74.00 vs 72.33)" in report
    se = math.sqrt((2 * 6.3333333 + 0.5) / 3) * math.sqrt(1 / 3 + 1 / 2)
    assert f"the upper bound of that gap is {5 / 3 + T90[3] * se:.2f} \\< 5" in report  # '<' escaped for Markdown
    # σ pooled over r=1 and r=2 (3 d.f.); with 3 seeds the detectable gain is t(0.9, 3)·σ·√(2/3)
    sigma = math.sqrt((2 * 6.3333333 + 0.5) / 3)
    assert (
        f"Seed noise σ = {sigma:.2f} points (pooled, 3 d.f.); at the seed limit (sweep.max_seeds=3 per "
        f"configuration) the smallest gain a comparison can detect is {T90[3] * sigma * math.sqrt(2 / 3):.2f} points"
    ) in report
    assert "8 (5 complete, 1 diverged, 1 failed, 1 running)" in report
    assert "trial 3 (r=2 q,v seed 0): diverged: training loss became nan in epoch 2 by step 40" in report
    assert "1 trial(s) marked running" in report


def test_report_md_finished(finished):
    report = (finished[1] / "report.md").read_text()
    assert report.startswith("# LoRA rank sweep: MRPC on minilm")
    assert "finished (plateau)" in report and "Provisional" not in report
    assert "8 (7 complete, 1 diverged)" in report
    # r=2 q,v: 85.00 ± 1.41 points, CI 85 ± 12.71
    assert "**r=2 on q,v**: accuracy 85.00 ± 1.41 points (n=2; 95% CI 72.29–97.71), 14,000 trainable" in report
    assert "the cheapest configuration shown to be within sweep.tolerance=5 points of the best" in report
    # σ pooled over the three q,v pairs (3 d.f.): 1.414; detectable with 2 seeds: t(0.9, 3)·1.414·√(2/2)
    assert (
        "Seed noise σ = 1.41 points (pooled, 3 d.f.); at the seed limit (sweep.max_seeds=2 per configuration) "
        f"the smallest gain a comparison can detect is {T90[3] * math.sqrt(2):.2f} points; calibrated P(regret ≤ 5 "
        "point(s)) at this σ on this sweep's observed curve: "
    ) in report
    # the Monte-Carlo standard error of that P over the 200 simulated sweeps: √(p(1 − p)/200)
    p = float(report.split("observed curve: ")[1][:4])
    assert f"{p:.2f} (± {math.sqrt(p * (1 - p) / 200):.2f} Monte-Carlo s.e., 200 simulated sweeps)" in report
    assert "- after trial 5: `[rank] plateau r=2 q,v:" in report
    assert "- after trial 7: `[targets] plateau r=2 q,v:" in report
    for name in ("metric_vs_params", "metric_vs_compute", "progression"):
        assert f"](plots/{name}.png)" in report
    assert "| 2 | q,v | 2 / 0 / 0 | 85.00 ± 1.41 | 72.29–97.71 | 14,000 |" in report


def test_cap_stopped_sweep_is_provisional_and_says_what_was_cut_off(tmp_path):
    # FINISHED without the q,k,v,o trials, capped at 6 trials: the plateau at r=2 escalates to q,k,v,o,
    # whose two seeds the cap cuts off; of r=1, r=2, r=4 the best is r=4 (86.0) and r=2 (gap 1.0, upper
    # bound 1 + 1.638·1.414 = 3.32 < 5) is picked
    url = make_study(tmp_path, settings(max_trials=6), [trial(*t) for t in FINISHED[:6]])
    write_reports(url, NAME, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "finished (budget)" in report and "**r=2 on q,v**" in report
    assert (
        "**Provisional**: the compute cap stopped this sweep before its procedure ended (compute cap reached "
        "(trials: 6 ≥ sweep.max_trials=6); stopping cleanly; cut off: the targets stage still needed r=2 on "
        "q,k,v,o seed(s) 0, 1)."
    ) in report
    assert "provisional, the compute cap stopped the sweep before the procedure ended: the cheapest" in report


# FINISHED in a study that ran before with sweep.seeds=[0,1,2]: seed 2 of r=1 and r=2 on q,v scored 50.0.
# The settings now ask for seeds 0 and 1 only (max_seeds 2), so the decisions ignore seed 2: they are
# FINISHED's. The summary used to average every complete trial (r=1: (80 + 82 + 50) / 3 = 70.67 points,
# n=3) while the decisions said 81.00 (n=2); now both say 81.00 ± 1.41 (n=2) and list seed 2 as not counted.
OLD_SEEDS = [(1, "q,v", 2, 0.50, "rank", 1.07e11, 16.0), (2, "q,v", 2, 0.50, "rank", 1.08e11, 17.0)]


@pytest.mark.parametrize("ended", [True, False])
def test_summary_uses_the_decisions_statistics(tmp_path, ended):
    url = make_study(tmp_path, settings(), [trial(*t) for t in OLD_SEEDS + FINISHED], sweep_ended=ended)
    trials, s, info = loaded(url)
    assert [d.line() for d in info.decisions] == [
        d.line() for d in plan(settings(), [o for o in outcomes(load_study(url, NAME)) if o.seed != 2], COSTS).decisions
    ]
    assert list(zip(s["r"], s["targets"], s["n_seeds"], s["n_not_counted"])) == [
        (1, "q,v", 2, 1),
        (2, "q,v", 2, 1),
        (4, "q,v", 2, 0),
        (2, "q,k,v,o", 1, 0),
    ]
    sd = math.sqrt(2 * 0.01**2)
    for r, mean in ((1, 0.81), (2, 0.85), (4, 0.86)):
        got = row(s, r, "q,v")
        assert (got["objective_mean"], got["objective_sd"]) == (pytest.approx(mean), pytest.approx(sd))
        assert got["objective_ci95_low"] == pytest.approx(mean - T975[1] * sd / math.sqrt(2))
    # the decisions quote the same numbers, in points
    start, cont = info.decisions[0], info.decisions[1]
    assert (start.action, start.numbers["mean"], start.numbers["sd"]) == (
        "start",
        pytest.approx(81.0),
        pytest.approx(100 * sd),
    )
    assert cont.reason.startswith("85.00 ± 1.41 points (n=2) vs r=1 on q,v 81.00 ± 1.41 points (n=2)")
    # costs take every seed, as the decisions' do: r=1's FLOPs (1.07 + 1.01 + 1.03)e11 / 3
    assert row(s, 1, "q,v")["mean_train_flops"] == pytest.approx((1.07e11 + 1.01e11 + 1.03e11) / 3)
    # a provisional recommendation (interrupted sweep) is the one the decisions reach, for the same reason
    pick, decision = recommendation(trials, info)
    assert pick == (2, "q,v") and list(s["recommended"]) == [False, True, False, False]
    assert decision.reason.endswith(next(d for d in info.decisions if d.action == Action.RECOMMEND).reason)
    # the report's seed noise is the decisions' too: pooled over the three q,v pairs, 3 d.f.
    write_reports(url, NAME, tmp_path / "out")
    assert "Seed noise σ = 1.41 points (pooled, 3 d.f.)" in (tmp_path / "out" / "report.md").read_text()


def test_a_floored_noise_estimate_is_stated_in_the_report(tmp_path):
    # every seed predicts the majority class, 279 of MRPC's 408 pairs: measured σ = 0 from 3 d.f.; the decisions
    # and the reliability use the floor, sweep.noise_floor = 0.29 examples = 0.29 × 100/408 = 0.0711 points, and
    # say so
    runs = [(1, "q,v", 0, "rank"), (1, "q,v", 1, "rank"), (2, "q,v", 0, "rank"), (2, "q,v", 1, "rank")]
    runs += [(1, "q,k,v,o", 0, "targets"), (1, "q,k,v,o", 1, "targets")]
    url = make_study(tmp_path, settings(), [trial(r, t, seed, 279 / 408, st, n_eval=408) for r, t, seed, st in runs])
    write_reports(url, NAME, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert (
        "Seed noise σ = 0.07 points, floored (sweep.noise_floor = 0.29 validation examples of 408): the measured "
        "0.00 (pooled, 3 d.f.) claims more than the validation set can resolve" in report
    )
    # no gain: 0 ∓ t(0.9, 2)·0.0711 = [−0.13, +0.13], the upper bound below the tolerance 5
    half = T90[2] * 0.29 * 100 / 408
    assert (
        f"90% bounds [{-half:+.2f}, {half:+.2f}] from the seed s.d. pooled over 2 d.f. "
        "floored at 0.07 points (sweep.noise_floor; measured 0.00)" in report
    )
    # the simulation saw no regret in any of its sweeps: a bound, not "± 0.00"
    assert "1.00 (all 200 simulated sweeps; 95% bound ≥ 0.985)" in report


def test_decisions_placed_after_the_trials_they_saw(finished):
    trials, _, info = loaded(finished[0])
    d = decisions_frame(trials, info)
    assert list(zip(d["action"], d["after_trial"])) == [
        ("start", 1),
        ("continue", 3),
        ("no-gain", 5),
        ("plateau", 5),
        ("escalate", 5),
        ("no-gain", 7),
        ("plateau", 7),
        ("recommend", 7),
    ]


# A race: r=2 continues past r=1 after trial 3 (gain +5, bounds 5 ∓ 1.886·1.414 = [+2.33, +7.67]); r=4
# vs r=2 after trial 5 is undecided (pooled sd² (2 + 2 + 32)/3 = 12, SE 3.46, bounds 2 ∓ 1.638·3.46 =
# [−3.67, +7.67]), so r=4 gets seed 2 (trial 6), then r=2 gets seed 2 (trial 7), and at 3 seeds each
# (pooled sd² (2 + 2·1 + 2·16)/5 = 7.2, SE 2.19, bounds 2 ∓ 1.476·2.19 = [−1.23, +5.23]) r=4 is no gain.
RACE = [
    (1, "q,v", 0, 0.80, "rank"),
    (1, "q,v", 1, 0.82, "rank"),
    (2, "q,v", 0, 0.85, "rank"),
    (2, "q,v", 1, 0.87, "rank"),
    (4, "q,v", 0, 0.84, "rank"),
    (4, "q,v", 1, 0.92, "rank"),
    (4, "q,v", 2, 0.88, "rank"),
    (2, "q,v", 2, 0.86, "rank"),
]


def test_decisions_of_a_race_sit_after_the_trial_that_led_to_them(tmp_path):
    s = settings(ranks=[1, 2, 4], target_sets=[["q", "v"]], max_seeds=3)
    url = make_study(tmp_path, s, [trial(*t) for t in RACE])
    trials, _, info = loaded(url)
    d = decisions_frame(trials, info)
    # "continue r=2" was taken after r=2's first two seeds (trial 3), not after its last seed (trial 7)
    assert list(zip(d["action"], d["r"], d["after_trial"])) == [
        ("start", 1, 1),
        ("continue", 2, 3),
        ("more-seeds", 4, 5),
        ("more-seeds", 2, 6),
        ("no-gain", 4, 7),
        ("plateau", 2, 7),
        ("no-escalation", 2, 7),
        ("recommend", 4, 7),
    ]
    assert "bounds [+2.33, +7.67]" in d["reason"][1] and "bounds [-1.23, +5.23]" in d["reason"][4]
    text = write_reports(url, NAME, tmp_path / "out")[-1].read_text()
    # r=2 and r=4 ran 3 seeds each in the race, r=1 the 2 of sweep.seeds
    assert "seeds {0, 1} per configuration, up to 3 where a comparison was raced (sweep.max_seeds=3)." in text
    assert "- after trial 3: `[rank] continue r=2 q,v:" in text


def test_budget_decision_sits_after_the_trial_that_used_up_the_hours(tmp_path):
    """sweep.max_hours = 0.009 h = 32.4 s; trials take 10 + 1, 12 + 1, 11 + 1 s of training + validation:
    11, 24, then 36 s ≥ 32.4 after trial 2, so the cap stops the sweep there (r=2 still needs seed 1).
    A second worker's trial 3 finished after that (its worker died before rewriting the decisions): the
    budget decision and the provisional recommendation stay after trial 2, not after the last trial."""
    s = settings(max_hours=0.009)
    url = make_study(tmp_path, s, [trial(*t) for t in FINISHED[:3]])
    study = load_study(url, NAME)
    study.add_trial(trial(*FINISHED[3]))
    info = study_info(study)
    assert [d.action for d in info.decisions] == ["start", "budget", "recommend"]
    d = decisions_frame(trials_frame(study), info)
    assert list(zip(d["action"], d["after_trial"])) == [("start", 1), ("budget", 2), ("recommend", 2)]
    assert "trial hours: 0.01 ≥ sweep.max_hours=0.009" in d["reason"][1]


def test_decisions_are_placed_by_their_data_not_their_words(tmp_path):
    s = settings(ranks=[1, 2, 4], target_sets=[["q", "v"]], max_seeds=3)
    url = make_study(tmp_path, s, [trial(*t) for t in RACE])
    study = load_study(url, NAME)
    stored = study.user_attrs["decisions"]
    reworded = [{**d, "reason": "reworded"} for d in stored]
    # as the current release stores them (no detail), in other words
    older = [
        {k: v for k, v in d.items() if k != "detail"} | {"reason": f"older words {i}"} for i, d in enumerate(stored)
    ]
    # a stored detail is rendered anew (hand bounds of RACE); a decision without one keeps its stored words
    for decisions, reason in ((reworded, "bounds [+2.33, +7.67]"), (older, "older words 1")):
        study.set_user_attr("decisions", decisions)
        trials, _, info = loaded(url)
        d = decisions_frame(trials, info)
        # the places of test_decisions_of_a_race_sit_after_the_trial_that_led_to_them
        assert list(d["after_trial"]) == [1, 3, 5, 6, 7, 7, 7, 7]
        assert reason in d["reason"][1]


def test_recommendation_against_the_baseline(finished, partial):
    # finished: r=2 q,v at 84 and 86 points, mean 85, sd √2, 95% CI 85 ± 12.706·√2/√2; majority 68.4
    half = T975[1] * math.sqrt(2) / math.sqrt(2)
    text = (finished[1] / "report.md").read_text()
    assert (
        "Against the baseline (always predicting the majority class, 68.40): +16.60 points "
        f"(95% CI {85 - half - 68.4:+.2f} to {85 + half - 68.4:+.2f} over its 2 seeds): above it." in text
    )
    # partial: provisional r=1 q,v at 70, 72, 75: mean 72.333, sd 2.517, 95% CI ± 4.303·2.517/√3 = ± 6.25,
    # whose lower end (66.08) lies below 68.4
    mean, sd = (70 + 72 + 75) / 3, math.sqrt(((70 - 217 / 3) ** 2 + (72 - 217 / 3) ** 2 + (75 - 217 / 3) ** 2) / 2)
    half = T975[2] * sd / math.sqrt(3)
    text = [p for p in partial[1] if p.name == "report.md"][0].read_text()
    assert (
        f"Against the baseline (always predicting the majority class, 68.40): {mean - 68.4:+.2f} points "
        f"(95% CI {mean - half - 68.4:+.2f} to {mean + half - 68.4:+.2f} over its 3 seeds): not shown to beat it;"
    ) in text


def test_grid_sweep_recommendation(tmp_path):
    url = make_study(tmp_path, settings(mode="grid", ranks=[1, 2], seeds=[0]), [trial(*t) for t in GRID])
    write_reports(url, NAME, tmp_path / "out")
    s = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(zip(s["r"], s["targets"])) == [(1, "q,v"), (2, "q,v"), (1, "q,k,v,o"), (2, "q,k,v,o")]
    assert s["objective_sd"].isna().all()
    assert list(s["recommended"]) == [False, False, False, True]
    # params 12,000 / 14,000 / 14,000 / 18,000: r=1 q,k,v,o is beaten by r=2 q,v at the same cost
    assert list(s["pareto_params"]) == [True, True, False, True]
    assert "finished (grid complete)" in (tmp_path / "out" / "report.md").read_text()


def test_study_with_only_failed_trials(tmp_path):
    s = settings(ranks=[1], seeds=[0, 1], target_sets=[["q", "v"]])
    # seed 1 crashed, then its retry diverged: a crash is no result, so only the retry ends the sweep
    url = make_study(
        tmp_path,
        s,
        [
            trial(1, "q,v", 0, "diverged", "rank"),
            trial(1, "q,v", 1, "failed", "rank"),
            trial(1, "q,v", 1, "diverged", "rank"),
        ],
    )
    paths = write_reports(url, NAME, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "No recommendation: no trial has completed." in report
    assert "3 (0 complete, 2 diverged, 1 failed)" in report
    assert all(image_is_drawn(p) for p in paths if p.suffix == ".png")


def test_abandoned_trial_is_listed_but_neither_a_result_nor_a_failure(tmp_path):
    # the worker of trial 0 died; trial 1 took the configuration over and completed it
    s = settings(ranks=[1], seeds=[0], target_sets=[["q", "v"]])
    url = make_study(tmp_path, s, [trial(1, "q,v", 0, "abandoned", "rank"), trial(1, "q,v", 0, 0.81, "rank")])
    write_reports(url, NAME, tmp_path / "out")
    t = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert list(t["state"]) == ["abandoned", "complete"]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(zip(summary["n_seeds"], summary["n_failed"], summary["objective_mean"])) == [
        (1, 0, pytest.approx(0.81))
    ]
    assert "2 (1 complete, 1 abandoned)" in (tmp_path / "out" / "report.md").read_text()


def labels(ax):
    return ax.get_legend_handles_labels()[1]


def test_metric_vs_params_figure(finished):
    fig = figures(*loaded(finished[0]))["metric_vs_params"]
    (ax,) = fig.axes
    # x: LoRA parameters, r·2,000 on q,v and r·4,000 on q,k,v,o; the 10,000 of the head stated once
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "LoRA parameters (log scale); every configuration also trains the head's 10,000"
    assert list(ax.get_xticks()) == [2_000, 4_000, 8_000]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2,000", "4,000", "8,000"]
    assert ax.get_ylabel() == "validation accuracy (%, higher is better)"
    assert all(word in ax.get_title() for word in ("MRPC", "minilm", "accuracy"))
    assert sorted(labels(ax)) == ["Pareto front", "majority class (68.4)", "q,k,v,o", "q,v", "recommended: r=2 q,v"]
    series = {c.get_label(): c.lines[0].get_xydata().tolist() for c in ax.containers}
    assert series == {"q,v": [[2_000, 81.0], [4_000, 85.0], [8_000, 86.0]], "q,k,v,o": [[8_000, 86.5]]}
    assert sorted(t.get_text() for t in ax.texts) == ["r=1", "r=2", "r=2", "r=4"]
    front = next(line for line in ax.lines if line.get_label() == "Pareto front")
    assert front.get_xydata().tolist() == [[2_000, 81.0], [4_000, 85.0], [8_000, 86.5]]
    baseline = next(line for line in ax.lines if line.get_label().startswith("majority"))
    assert list(baseline.get_ydata()) == pytest.approx([68.4, 68.4]) and baseline.get_linestyle() == "--"


def test_metric_vs_compute_figure(finished):
    fig = figures(*loaded(finished[0]))["metric_vs_compute"]
    flops_ax, time_ax = fig.axes
    # linear from 0, the spread in words: FLOPs (1.01+1.03)/2 = 1.02e11 … 1.06e11, seconds (10+12)/2 = 11 … 15
    assert flops_ax.get_xscale() == "linear" and flops_ax.get_xlim()[0] == 0 and time_ax.get_xlim()[0] == 0
    assert flops_ax.get_xlabel() == "training FLOPs per trial\n(102.00G–106.00G, 3.9% apart)"
    assert time_ax.get_xlabel() == "training time per trial\n(11 s–15 s, 36.4% apart)"
    assert all(word in fig.get_suptitle() for word in ("MRPC", "minilm", "accuracy"))
    assert "Pareto front" in labels(flops_ax) and "recommended: r=2 q,v" in labels(flops_ax)
    times = {c.get_label(): c.lines[0].get_xydata().tolist() for c in time_ax.containers}
    assert times == {"q,v": [[11.0, 81.0], [12.0, 85.0], [13.0, 86.0]], "q,k,v,o": [[15.0, 86.5]]}


def test_sub_second_trials_keep_legible_time_ticks(tmp_path):
    """FINISHED with every training time divided by 100: 0.11 s … 0.15 s per configuration; the ticks are
    plain seconds (engineering prefixes printed "100m s")."""
    fast = [(*t[:6], t[6] / 100) for t in FINISHED]
    url = make_study(tmp_path, settings(), [trial(*t) for t in fast])
    _, time_ax = figures(*loaded(url))["metric_vs_compute"].axes
    time_ax.figure.canvas.draw()
    ticks = [t.get_text() for t in time_ax.get_xticklabels() if t.get_text()]
    assert time_ax.get_xlabel() == "training time per trial\n(0.11 s–0.15 s, 36.4% apart)"
    assert ticks and all(t.endswith(" s") and "m" not in t for t in ticks) and ticks[0] == "0 s"


def test_progression_figure(partial):
    trials, summary, info = loaded(partial[0])
    fig = figures(trials, summary, info)["progression"]
    ax, flops_ax = fig.axes
    assert all(word in ax.get_title() for word in ("MRPC", "minilm", "accuracy"))
    assert flops_ax.get_xlabel() == "trial number (order run)" and "FLOPs" in flops_ax.get_ylabel()
    assert labels(ax) == [
        "q,v",
        "configuration mean",
        "diverged (1)",
        "failed (1)",
        "running (1)",
        "majority class (68.4)",
        "decision",
    ]
    # means over the ok seeds: r=1 (70 + 72 + 75) / 3 across trials 0–2, r=2 (73.5 + 74.5) / 2 across 4–5
    (means,) = [c for c in ax.collections if c.get_label() == "configuration mean"]
    segments = [v for seg in means.get_segments() for v in (seg[0][0], seg[1][0], seg[0][1])]
    assert segments == pytest.approx([-0.35, 2.35, 217 / 3, 3.65, 5.35, 74.0])
    points = next(line for line in ax.lines if line.get_label() == "q,v")
    assert list(points.get_xdata()) == [0, 1, 2, 4, 5]
    assert list(points.get_ydata()) == pytest.approx([70, 72, 75, 73.5, 74.5])
    # the plateau at r=1 and the escalation were decided once trial 5 had finished
    (top,) = ax.child_axes
    assert [t.get_text() for t in top.get_xticklabels()] == ["plateau r=1\nescalate r=1"]
    assert list(top.get_xticks()) == [5.5]
    decision = next(line for line in ax.lines if line.get_label() == "decision")
    assert list(decision.get_xdata()) == [5.5, 5.5]
    # five ok trials and the diverged one at 1e11 each; the orphan and the running trial have none
    cumulative = next(line for line in flops_ax.lines if line.get_marker() == ".")
    assert cumulative.get_ydata()[-1] == pytest.approx(6e11)


def image_is_drawn(path) -> bool:
    pixels = matplotlib.image.imread(path)
    return pixels.shape[1] == 1280 and pixels[..., :3].std() > 0.05


def test_png_files_are_drawn(finished, partial):
    assert all(image_is_drawn(finished[1] / f) for f in FILES if f.endswith(".png"))
    assert all(image_is_drawn(p) for p in partial[1] if p.suffix == ".png")


def test_empty_study_message(tmp_path):
    url = make_study(tmp_path, settings(), [trial(1, "q,v", 0, "running", "rank")], sweep_ended=False)
    with pytest.raises(UserError, match=rf"^study '{NAME}' has no finished trials yet \(1 running\)"):
        write_reports(url, NAME, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_study_message(tmp_path):
    proc = run_main(analysis_main, f"results_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"ranksweep: error: no sweep study at {tmp_path.resolve()}/mrpc/default/study.db; run `make sweep TASK=mrpc "
        f"ARGS=results_dir={tmp_path}` first (or point sweep.storage at one)"
    ]
    assert not (tmp_path / "mrpc").exists()


def _steps(tmp_path, s, rows):
    from analysis.report import _next_steps, _status_line

    trials, _, info = loaded(make_study(tmp_path, s, [trial(*t) for t in rows]))
    return _status_line(trials, info), "\n".join(_next_steps(info))


# r=1 and r=2 score the same (81, 83 points): no gain; with patience 2 the ranks [1, 2] run out first
SAME = [
    (1, "q,v", 0, 0.81, "rank"),
    (1, "q,v", 1, 0.83, "rank"),
    (2, "q,v", 0, 0.81, "rank"),
    (2, "q,v", 1, 0.83, "rank"),
]


def test_next_steps_after_a_plateau_with_ranks_left_suggest_more_patience(tmp_path):
    # FINISHED: plateau at r=4 (patience 1) of ranks 1…8: r=8 is left, so patience 2 would train it
    status, steps = _steps(tmp_path, settings(), FINISHED)
    assert status == "finished (plateau)"
    assert "- Look further before calling a plateau: `make sweep TASK=mrpc ARGS=sweep.patience=2`" in steps
    assert "sweep.max_seeds=4" in steps


def test_next_steps_when_the_ranks_ran_out_suggest_more_ranks_not_patience(tmp_path):
    s = settings(ranks=[1, 2], target_sets=[["q", "v"]], patience=2)
    status, steps = _steps(tmp_path, s, SAME)
    assert status == "finished (ranks exhausted: sweep.ranks ended before a plateau)"
    assert "sweep.patience" not in steps and "plateau:" not in steps
    assert (
        """- The ranks ran out before a plateau (sweep.ranks ends at r=2): `make sweep TASK=mrpc ARGS='"sweep.ranks=[1,2,4]"'`"""
        in steps
    )


def test_next_steps_of_a_grid_never_suggest_patience(tmp_path):
    s = settings(mode="grid", ranks=[1, 2], target_sets=[["q", "v"]])
    _, steps = _steps(tmp_path, s, SAME)
    assert "patience" not in steps
    assert """`make sweep TASK=mrpc SWEEP=grid ARGS='"sweep.seeds=[0,1,2,3]"'`""" in steps


def test_next_steps_when_every_trial_diverged_suggest_no_more_of_the_same(tmp_path):
    s = settings(ranks=[1, 2], target_sets=[["q", "v"]], seeds=[0], max_seeds=1)
    _, steps = _steps(tmp_path, s, [(1, "q,v", 0, "diverged", "rank"), (2, "q,v", 0, "diverged", "rank")])
    assert "make sweep" not in steps
    assert steps.startswith("No trial succeeded, so more seeds or ranks with the same settings would fail")


def test_intervals_of_seeds_that_all_scored_the_same_are_floored(tmp_path):
    """Two seeds at 80.0 each (sd 0) on a 32-example validation set: the 95% interval uses the floor,
    0.29 · 100/32 = 0.90625 points: 80 ± t(0.975, 1) · 0.90625/√2 = 80 ± 8.1438, not 80–80."""
    runs = [trial(1, "q,v", s, 0.80, "rank") for s in (0, 1)]
    for t in runs:  # the fakes' trials say nothing of their validation set: 32 examples
        t.user_attrs = {**t.user_attrs, "n_eval": 32}
    url = make_study(tmp_path, settings(ranks=[1], noise_floor=0.29), runs, sweep_ended=False)
    _, summary, _ = loaded(url)
    half = T975[1] * 0.90625 / math.sqrt(2) / 100
    assert summary["objective_sd"].tolist() == [0.0]
    assert summary[["objective_ci95_low", "objective_ci95_high"]].values.tolist() == [
        pytest.approx([0.80 - half, 0.80 + half])
    ]

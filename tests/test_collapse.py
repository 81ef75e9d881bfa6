"""Collapsed trials: detection on hand-made predictions (sweep/collapse.py), how the decisions treat them
(sweep/decide.py: left out of the statistics and replaced by the next seed, counted per configuration, a
configuration with no value left is failed, a sweep whose every trial collapsed stops without a
recommendation), and what summary.csv and report.md say of them. Every expected number is worked out by
hand in the comments."""

import math

import numpy as np
import pytest
from fakes import MAJORITY as FAKE_MAJORITY
from fakes import MINILM_COSTS as COSTS
from fakes import NAME, fake_trial, make_study, small_settings, trial
from scipy import stats
from test_decide import settings as decide_settings

from analysis.plots import figures
from analysis.report import load_report, report_markdown
from sweep import driver
from sweep.cli import compose
from sweep.collapse import is_collapsed
from sweep.decide import Outcome, aggregate, noise_floor, plan
from sweep.decision import Action, Decision, StopReason

C, R, L = "single_label_classification", "regression", "causal_lm"
STSB = np.array([0.0, 1.2, 2.5, 3.8, 5.0])  # s.d. 1.80 (ddof 0): the regression threshold is 1e-3 of it, 0.0018


@pytest.mark.parametrize(
    "preds, labels, problem_type, expected",
    [
        (np.array([1, 1, 1, 1]), np.array([0, 1, 1, 0]), C, True),  # one class for every example
        (np.array([0, 0, 0, 0]), np.array([0, 1, 1, 0]), C, True),  # the minority class is a collapse too
        (np.array([1, 1, 0, 1]), np.array([0, 1, 1, 0]), C, False),  # one example differs
        (np.array([2, 2, 2]), np.array([0, 1, 2]), C, True),  # three classes, one predicted
        (np.full(5, 2.7, dtype=np.float32), STSB, R, True),  # the training mean for every pair
        (np.array([2.700, 2.701, 2.702, 2.701, 2.700]), STSB, R, True),  # s.d. 0.00075 ≤ 0.0018
        (np.array([2.70, 2.71, 2.72, 2.71, 2.70]), STSB, R, False),  # s.d. 0.0075 > 0.0018
        (np.array([0.1, 1.0, 2.6, 3.9, 4.8]), STSB, R, False),  # a trained regressor
        (np.zeros((5, 3)), np.ones(5), L, None),  # a causal LM has no collapse
        (None, np.array([0, 1]), C, None),  # no epoch evaluated
        (np.array([1, 1, 1]), np.array([1, 1, 1]), C, None),  # one class in the labels: right, or collapsed?
        (np.array([2.5]), np.array([2.5]), R, None),  # one example: the same
    ],
)
def test_collapsed_predictions(preds, labels, problem_type, expected):
    assert is_collapsed(preds, labels, problem_type) is expected


def settings(**kw):
    """test_decide's settings on a short rank axis, q,v alone, up to 4 seeds."""
    return decide_settings(**{"ranks": [1, 2], "target_sets": [["q", "v"]], "max_seeds": 4, **kw})


MAJORITY = 0.6838  # MRPC's majority class: 279 of 408 validation pairs


def outcome(r, seed, value, flag=True, targets="q,v"):
    """An ok MRPC trial; ``value`` "C" collapsed to the majority class (flagged as a real trial is, unless
    ``flag`` is False: the value kept, as the decisions did before collapses were recorded)."""
    collapsed = value == "C"
    return Outcome(
        r,
        targets,
        seed,
        "ok",
        MAJORITY if collapsed else value,
        r * COSTS[targets],
        1e12,
        60.0,
        100 / 408,
        "accuracy",
        collapsed=collapsed and flag,
        baseline=MAJORITY,
    )


def drive(s, script, flag=True):
    """Run the procedure one trial (``plan.next``) at a time on ``script[r][seed]`` (accuracy, or "C":
    collapsed); returns (the (r, seed) of the trials run, the final plan)."""
    history = []
    for _ in range(100):
        p = plan(s, history, COSTS)
        if p.next is None:
            return [(o.r, o.seed) for o in history], p
        history.append(outcome(p.next.r, p.next.seed, script[p.next.r][p.next.seed], flag))
    raise AssertionError("the procedure did not stop")


def t90(dof):
    return stats.t.ppf(0.9, dof)


# r=1 scores 80.1, 79.9, 80.1, 79.9 (80.00 ± 0.14); r=2 82.1, collapsed, 81.9, 82.1: its seed 1 collapsed to the
# majority class (68.38)
FLIP = {1: [0.801, 0.799, 0.801, 0.799], 2: [0.821, "C", 0.819, 0.821]}


def test_a_collapsed_seed_is_replaced_and_does_not_flip_the_comparison():
    # the rule: r=2's seed 1 is left out and seed 2 runs in its place; r=2 = 82.1, 81.9 (82.00 ± 0.14); pooled
    # s.d. √0.02 = 0.1414 over 2 d.f., SE 0.1414·√(1/2 + 1/2) = 0.1414; gain 2.00 ∓ t(0.9, 2)·0.1414 =
    # [1.733, 2.267]: a gain, and r=2 (the truly better rank) is recommended after 5 trials
    ran, p = drive(settings(), FLIP)
    assert ran == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert [(d.action, d.r) for d in p.decisions] == [
        (Action.START, 1),
        (Action.CONTINUE, 2),
        (Action.RANKS_EXHAUSTED, 2),
        (Action.NO_ESCALATION, 2),
        (Action.RECOMMEND, 2),
    ]
    gain = p.decisions[1].numbers
    half = t90(2) * math.sqrt(0.02)
    assert (gain["gain"], gain["low"], gain["high"]) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert p.recommendation == (2, "q,v")


def test_the_same_seed_kept_as_a_value_flips_it():
    # kept as a value: r=2 = 82.1, 68.38, s.d. 13.72/√2 = 9.70, which pooled with r=1's 0.1414 over 2 d.f. is
    # √((0.02 + 94.13)/2) = 6.86: every look is undecided, seeds race to max_seeds 4 on both sides (8 trials);
    # at the limit r=2 = 82.1, 68.38, 81.9, 82.1 (78.62) against r=1's 80.00: no gain, and r=1 is recommended
    ran, p = drive(settings(), FLIP, flag=False)
    assert len(ran) == 8
    verdict = next(d for d in p.decisions if d.action == Action.NO_GAIN)
    v = [82.1, 68.38, 81.9, 82.1]
    assert verdict.numbers["gain"] == pytest.approx(np.mean(v) - 80.0)
    pooled = math.sqrt((3 * np.var(v, ddof=1) + 3 * np.var([80.1, 79.9, 80.1, 79.9], ddof=1)) / 6)
    assert verdict.numbers["sd"] == pytest.approx(pooled)
    assert p.recommendation == (1, "q,v")


def test_every_trial_collapsed_stops_after_the_start_seeds():
    ran, p = drive(settings(), {1: ["C"] * 4, 2: ["C"] * 4})
    assert ran == [(1, 0), (1, 1)]  # no replacement seed, no second rank
    assert (p.next, p.recommendation, p.stop_reason, p.evaluated) == (None, None, StopReason.COLLAPSED, [])
    (d,) = p.decisions
    assert (d.action, d.r, d.targets, d.numbers) == (Action.COLLAPSED, 1, "q,v", {"trials": 2, "baseline": 68.38})
    assert d.reason == (
        "every trial so far (2) collapsed to a constant prediction (accuracy 68.38 points, what the majority class "
        "scores): nothing trains at this recipe, so no configuration can be compared or recommended; stopping: try "
        "another train.lr (sweep.lrs races a bracket of them) or other train.* settings under a new sweep.name"
    )
    assert Decision.from_dict(d.to_dict()) == d


def test_one_start_seed_of_two_collapsed_is_replaced_not_a_stop():
    # r=1: seed 0 collapsed, seed 1 80.0, seed 2 (in seed 0's place) 80.2; r=2 80.1, 79.9: no gain (gain −0.1,
    # upper bound −0.1 + t(0.9, 2)·0.1414 = 0.17 < 1)
    ran, p = drive(settings(), {1: ["C", 0.800, 0.802, 0.8], 2: [0.801, 0.799, 0.8, 0.8]})
    assert ran == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert [d.action for d in p.decisions][:2] == [Action.START, Action.NO_GAIN]
    assert p.decisions[0].numbers["mean"] == pytest.approx(80.1)


def test_a_configuration_whose_every_seed_collapsed_fails():
    # r=2 collapses on seeds 0, 1 and on their replacements 2, 3: no seed left up to max_seeds 4
    ran, p = drive(settings(), {1: [0.801, 0.799], 2: ["C"] * 4})
    assert ran == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (2, 3)]
    failed = p.decisions[1]
    assert (failed.action, failed.r, failed.numbers) == (Action.FAILED, 2, {"collapsed": 4, "diverged": 0})
    assert failed.reason == (
        "no seed has a value: 4 collapsed to a constant prediction (each replaced by the next seed, up to "
        "sweep.max_seeds=4): not comparable, counts as no gain"
    )
    assert p.recommendation == (1, "q,v")


def test_a_grid_leaves_collapsed_seeds_out_and_does_not_replace_them():
    s = settings(mode="grid", ranks=[1], target_sets=[["q", "v"]])
    ran, p = drive(s, {1: [0.80, "C"]})
    assert ran == [(1, 0), (1, 1)] and p.stop_reason == StopReason.GRID_COMPLETE
    assert p.decisions[-1].numbers["mean"] == pytest.approx(80.0)


def test_aggregate_counts_collapses_and_leaves_them_out():
    # r=1: 80.1, collapsed, 79.9 and a diverged seed 3: stats of seeds 0 and 2 (80.00 ± 0.14, n=2); 1 of 4
    # measured outcomes collapsed; the diverged seed measured nothing: counted neither way
    history = [outcome(1, 0, 0.801), outcome(1, 1, "C"), outcome(1, 2, 0.799)]
    history.append(Outcome(1, "q,v", 3, "diverged", None, objective="accuracy"))
    (res,) = aggregate(history, [0, 1, 2, 3]).values()
    assert (res.stats.n, res.stats.mean, res.stats.sd) == (2, pytest.approx(80.0), pytest.approx(math.sqrt(0.02)))
    assert (res.seeds, res.collapsed, res.collapse_rate, res.not_counted) == ((0, 2), 1, 0.25, 0)
    # over seeds 0 and 1 only: seed 2 is ok and not counted, the collapsed seed 1 is neither
    (res,) = aggregate(history, [0, 1]).values()
    assert (res.seeds, res.not_counted) == ((0,), 1)
    # collapsed trials set no noise floor: with only them, none
    assert noise_floor(history[1:2], settings()) is None
    assert noise_floor(history, settings()) == pytest.approx(0.29 * 100 / 408)


def test_a_longer_history_never_changes_an_earlier_decision():
    # the replay of every prefix of the flip case takes a prefix of the final decisions (recommendations aside)
    _, final = drive(settings(), FLIP)
    history = [outcome(r, s, FLIP[r][s]) for r, s in [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]]
    for k in range(len(history) + 1):
        taken = [d for d in plan(settings(), history[:k], COSTS).decisions if d.action != Action.RECOMMEND]
        assert taken == final.decisions[: len(taken)]


def test_summary_and_report_name_the_collapsed_trials(tmp_path):
    # r=1: 80, 82 (81 ± 1.41); r=2: 86, collapsed to the majority class (68.40 in the fakes), 88 in its place
    # (87 ± 1.41). Pooled s.d. 1.414 (2 d.f.), SE 1.414, gain 6 ∓ t(0.9, 2)·1.414 = [3.33, 8.67]: r=2 gains, the
    # ranks run out, r=1's gap of 6 has an upper bound ≥ the tolerance 5: r=2 is recommended
    s = small_settings(ranks=[1, 2], target_sets=[["q", "v"]], max_seeds=3)
    runs = [
        trial(1, "q,v", 0, 0.80, "rank"),
        trial(1, "q,v", 1, 0.82, "rank"),
        trial(2, "q,v", 0, 0.86, "rank"),
        trial(2, "q,v", 1, FAKE_MAJORITY, "rank", collapsed=True),
        trial(2, "q,v", 2, 0.88, "rank"),
    ]
    url = make_study(tmp_path, s, runs)
    rep = load_report(url, NAME)
    assert rep.info.recommendation == (2, "q,v")
    got = rep.summary.set_index("r")[["n_seeds", "n_collapsed", "collapse_rate", "objective_mean"]]
    assert got.loc[1].tolist() == [2, 0, 0.0, pytest.approx(0.81)]
    assert got.loc[2].tolist() == [2, 1, pytest.approx(1 / 3), pytest.approx(0.87)]  # 1 of 3 measured trials
    assert rep.trials["collapsed"].tolist() == [None, None, None, True, None]
    text = report_markdown(rep.trials, rep.summary, rep.info, rep.reliability)
    assert "- **Collapsed**: 1 trial(s) predicted the same answer for every validation example, in 1 " in text
    assert "- trial 3 (r=2 q,v seed 1): collapsed to the majority class (68.40)" in text
    assert "r=2 on q,v collapsed to a constant prediction in 1 trial(s), 33% of its measured trials" in text
    assert "| 2 | q,v | 2 / 1 / 0 | 87.00 ± 1.41 |" in text
    # the progression plot marks trial 3 apart and draws r=2's mean (87) over trials 2 and 4 without it
    ax = figures(rep.trials, rep.summary, rep.info)["progression"].axes[0]
    marked = next(line for line in ax.lines if line.get_label() == "collapsed (constant prediction, left out)")
    assert (list(marked.get_xdata()), list(marked.get_ydata())) == ([3], [pytest.approx(68.4)])
    (means,) = [c for c in ax.collections if c.get_label() == "configuration mean"]
    segments = [v for seg in means.get_segments() for v in (seg[0][0], seg[1][0], seg[0][1])]
    assert segments == pytest.approx([-0.35, 1.35, 81.0, 1.65, 4.35, 87.0])


def test_a_trial_that_collapsed_to_another_class_is_told_apart_from_the_majority(tmp_path):
    # a constant prediction of the minority class scores 100 − 68.40 = 31.60 on the fakes' validation set
    s = small_settings(ranks=[1], target_sets=[["q", "v"]], max_seeds=3)
    runs = [
        trial(1, "q,v", 0, 0.80, "rank"),
        trial(1, "q,v", 1, 1 - FAKE_MAJORITY, "rank", collapsed=True),
        trial(1, "q,v", 2, 0.82, "rank"),
    ]
    rep = load_report(make_study(tmp_path, s, runs), NAME)
    text = report_markdown(rep.trials, rep.summary, rep.info, rep.reliability)
    assert (
        "- trial 1 (r=1 q,v seed 1): collapsed to a constant prediction (31.60; the majority class scores 68.40)"
        in text
    )


def test_the_driver_stops_a_sweep_whose_every_trial_collapsed_in_one_line(tiny, tmp_path, monkeypatch):
    # every stand-in trial collapses to the majority class (68.40): the two seeds of r=1 run, no replacement
    # seed and no other rank, and the sweep's last line says why there is no recommendation
    run_trial, calls = fake_trial(crash_on_call=0, collapsed=True)
    monkeypatch.setattr(driver, "run_trial", run_trial)
    cfg, resolved = compose([*tiny, "sweep.ranks=[1,2]", "sweep.seeds=[0,1]", "sweep.max_seeds=4", "train.lr=8e-3"])
    lines = []
    p = driver.run_sweep(cfg, resolved, progress=False, log=lines.append)
    assert calls == [1, 1] and (p.next, p.recommendation, p.stop_reason) == (None, None, StopReason.COLLAPSED)
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all(
        ": accuracy 0.6840 (collapsed: every validation prediction is the same answer; left out of the statistics)"
        in line
        for line in trial_lines
    )
    sdir = tmp_path / "mrpc" / "default"
    assert driver.recommendation_line(p, sdir, cfg.train.lr) == (
        "no recommendation: every trial so far (2) collapsed to a constant prediction (accuracy 68.40 points, what "
        "the majority class scores): nothing trains at this recipe, so no configuration can be compared or "
        "recommended; stopping: try another train.lr (sweep.lrs races a bracket of them) or other train.* settings under a new sweep.name (this "
        f"sweep: train.lr=0.008); results in {sdir}"
    )

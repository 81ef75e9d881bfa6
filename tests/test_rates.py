"""The learning-rate stage (``sweep.lrs``, issue #22) on scripted histories: fake metrics, no training.

Each scripted metric gives the accuracy of (r, targets, seed, lr); the seeds differ by ±0.1 points, far
below the tolerance of 1 point, so every comparison of configurations 3 points apart is decided on its
first two seeds and the sequences below can be worked out by hand.
"""

import json
from dataclasses import replace

import pytest
from fakes import MINILM_COSTS as COSTS
from test_decide import settings

from sweep.cli import compose
from sweep.decide import Outcome, at_rate, plan
from sweep.decision import Action, Decision, RateChosen, RateVerdict, Stage, TrialSpec
from sweep.errors import UserError

BRACKET = [2e-3, 1e-3, 4e-3]


def drive(s, metric):
    """Run the procedure against ``metric(r, targets, seed, lr)``; returns (trials as (r, targets, seed, lr),
    the final plan)."""
    history = []
    for _ in range(300):
        p = plan(s, history, COSTS)
        if p.next is None:
            return [(o.r, o.targets, o.seed, o.lr) for o in history], p
        n = p.next
        assert n.lr is not None  # with a bracket every trial names its rate
        value = metric(n.r, n.targets, n.seed, n.lr)
        history.append(Outcome(n.r, n.targets, n.seed, "ok", value, n.r * COSTS[n.targets], 1e12, 60.0, lr=n.lr))
    raise AssertionError("the procedure did not stop")


def noise(seed):
    return 0.001 if seed % 2 == 0 else -0.001


def rate_decisions(p):
    return [(d.action, d.r, d.targets, d.lr) for d in p.decisions if d.stage == Stage.LR]


def test_a_better_rate_at_the_start_runs_the_stages_and_is_confirmed_at_the_pick():
    """1e-3 is 3 points above 2e-3 at every configuration, 4e-3 3 below; the curve is flat (70) and the
    wider sets add nothing. By hand: the rates at r=1 on q,v (6 trials): 1e-3 gains on the incumbent 2e-3,
    4e-3 does not gain on 1e-3: the stages run at 1e-3: r=2 and r=4 bring no gain (plateau at r=1, patience
    2), r=1 is low (≤ escalate_max_r 8): q,k,v,o and all-linear at r=1, no gain (4 trials), pick r=1 on q,v;
    the re-check there needs no new trial (every rate has its two seeds) and confirms 1e-3: 14 trials."""
    offset = {2e-3: 0.0, 1e-3: 0.03, 4e-3: -0.03}
    trials, p = drive(settings(lrs=BRACKET), lambda r, t, seed, lr: 0.70 + offset[lr] + noise(seed))
    assert trials[:6] == [(1, "q,v", s, lr) for lr in BRACKET for s in (0, 1)]
    assert trials[6:] == [
        (r, t, s, 1e-3) for r, t in [(2, "q,v"), (4, "q,v"), (1, "q,k,v,o"), (1, "all-linear")] for s in (0, 1)
    ]
    assert rate_decisions(p) == [
        (Action.RATE, 1, "q,v", 1e-3),
        (Action.RATE, 1, "q,v", 4e-3),
        (Action.RATE_CHOSEN, 1, "q,v", 1e-3),
        (Action.RATE, 1, "q,v", 2e-3),
        (Action.RATE, 1, "q,v", 4e-3),
        (Action.RATE_CHOSEN, 1, "q,v", 1e-3),
    ]
    verdicts = [d.detail for d in p.decisions if d.action == Action.RATE]
    assert [(v.ref_lr, v.verdict.end, v.recheck) for v in verdicts] == [
        (2e-3, "gain", False),
        (1e-3, "no-gain", False),
        (1e-3, "no-gain", True),
        (1e-3, "no-gain", True),
    ]
    # the gain of 1e-3 over 2e-3: 3 points
    assert verdicts[0].verdict.comparison.gain == pytest.approx(3.0)
    assert (p.recommendation, p.lr) == ((1, "q,v"), 1e-3)
    assert p.decisions[-1].action == Action.RECOMMEND and p.decisions[-1].lr == 1e-3
    # every decision of the stages names the rate they ran at
    assert {d.lr for d in p.decisions if d.stage in (Stage.RANK, Stage.TARGETS)} == {1e-3}


def test_a_better_rate_at_the_pick_redoes_the_stages_at_it():
    """At r=1, 2e-3 is best (1e-3 and 4e-3 3 points below); from r=2 on 1e-3 is 3 points above 2e-3. The curve
    at 2e-3 is 70, 72, 74, then 74. By hand: rates at r=1 (6 trials) keep 2e-3; the climb at 2e-3 gains at r=2
    and r=4, not at r=8 or r=16 (8 trials): plateau at r=4; q,k,v,o and all-linear at r=4 add nothing (4);
    pick r=4 on q,v; the re-check at r=4 runs 1e-3 (77: a gain) and 4e-3 (71: none) (4 trials) and chooses
    1e-3: the stages are redone at 1e-3: r=1 is there (67), r=2 (75) and r=4 (77, already run) gain, r=8 and
    r=16 do not (6 new trials), the wider sets at r=4 add nothing (4): pick r=4 on q,v at 1e-3; 32 trials."""
    curve = {1: 0.70, 2: 0.72, 4: 0.74, 8: 0.74, 16: 0.74, 32: 0.74, 64: 0.74}

    def metric(r, t, seed, lr):
        offset = {2e-3: 0.0, 1e-3: -0.03 if r == 1 else 0.03, 4e-3: -0.03}[lr]
        return curve[r] + offset + noise(seed)

    trials, p = drive(settings(lrs=BRACKET), metric)
    assert len(trials) == 32
    assert trials[18:22] == [(4, "q,v", s, lr) for lr in (1e-3, 4e-3) for s in (0, 1)]
    assert trials[22:] == [
        (r, t, s, 1e-3)
        for r, t in [(2, "q,v"), (8, "q,v"), (16, "q,v"), (4, "q,k,v,o"), (4, "all-linear")]
        for s in (0, 1)
    ]
    chosen = [d for d in p.decisions if d.action == Action.RATE_CHOSEN]
    assert [(d.lr, d.detail.recheck, d.detail.previous) for d in chosen] == [(2e-3, False, None), (1e-3, True, 2e-3)]
    assert "the rank and targets stages are redone at lr=0.001" in chosen[1].reason
    assert (p.recommendation, p.lr) == ((4, "q,v"), 1e-3)
    # the recommendation compares configurations of the second pass only, all at 1e-3
    assert set(p.evaluated) == {(r, "q,v") for r in (1, 2, 4, 8, 16)} | {(4, "q,k,v,o"), (4, "all-linear")}


def test_without_a_bracket_nothing_changes():
    """One rate, or none: no learning-rate stage, no rate on the specs, and a history whose outcomes carry
    their (equal) rates plans exactly as one without them."""
    s = settings(lrs=None)
    history = [Outcome(1, "q,v", seed, "ok", 0.7 + noise(seed), 9216, 1e12, 60.0) for seed in (0, 1)]
    rated = [replace(o, lr=2e-3) for o in history]
    a, b = plan(s, history, COSTS), plan(s, rated, COSTS)
    assert a.runnable == b.runnable == [TrialSpec(2, "q,v", 0, Stage.RANK), TrialSpec(2, "q,v", 1, Stage.RANK)]
    assert a.decisions == b.decisions and a.lr is None and b.lr is None
    assert plan(settings(lrs=[2e-3]), history, COSTS).runnable == a.runnable


def test_a_rate_where_every_seed_diverged_is_skipped():
    """The incumbent 2e-3 diverges at r=1: the next rate with a result (1e-3) becomes the incumbent."""
    history = [Outcome(1, "q,v", seed, "diverged", None, 9216, 1e12, 60.0, lr=2e-3) for seed in (0, 1)]
    history += [
        Outcome(1, "q,v", seed, "ok", 0.7 + noise(seed), 9216, 1e12, 60.0, lr=lr)
        for lr in (1e-3, 4e-3)
        for seed in (0, 1)
    ]
    p = plan(settings(lrs=BRACKET), history, COSTS)
    assert [(d.action, d.lr) for d in p.decisions] == [
        (Action.FAILED, 2e-3),
        (Action.RATE, 4e-3),
        (Action.RATE_CHOSEN, 1e-3),
        (Action.START, 1e-3),
    ]
    assert p.runnable == [TrialSpec(2, "q,v", s, Stage.RANK, lr=1e-3) for s in (0, 1)]


def test_rate_decisions_are_stored_and_read_back():
    offset = {2e-3: 0.0, 1e-3: 0.03, 4e-3: -0.03}
    _, p = drive(settings(lrs=BRACKET), lambda r, t, seed, lr: 0.70 + offset[lr] + noise(seed))
    for d in p.decisions:
        stored = json.loads(json.dumps(d.to_dict()))
        back = Decision.from_dict(stored)
        assert back == d and back.reason == d.reason
        assert ("lr" in stored) == (d.lr is not None)
    first = next(d for d in p.decisions if d.action == Action.RATE)
    assert isinstance(first.detail, RateVerdict) and first.line().startswith("[lr] rate r=1 q,v lr=0.001: ")
    # by hand: s.d. of ±0.1 points pooled over 2 d.f. 0.1414, SE 0.1414·√(1/2 + 1/2), t(0.9, 2 d.f.) = 1.886
    assert first.reason == (
        "r=1 on q,v: lr=0.001 73.00 ± 0.14 points (n=2) vs lr=0.002 70.00 ± 0.14 points (n=2): gain +3.00, "
        "90% bounds [+2.73, +3.27] from the seed s.d. 0.14 pooled over 2 d.f., SE 0.14; lower bound +2.73 > 0"
    )
    chosen = next(d for d in p.decisions if d.action == Action.RATE_CHOSEN)
    assert isinstance(chosen.detail, RateChosen) and chosen.detail.rates == tuple(BRACKET)
    # a decision stored before decisions had a rate reads back with none
    old = {k: v for k, v in p.decisions[0].to_dict().items() if k != "lr"}
    assert Decision.from_dict(old).lr is None


def test_at_rate_keeps_one_rate():
    outs = [Outcome(1, "q,v", 0, "ok", 0.7, lr=lr) for lr in (1e-3, 2e-3)]
    assert at_rate(outs, 1e-3) == outs[:1] and at_rate(outs, None) == outs


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.lrs=[1e-3,1e-3]"], "sweep.lrs=[0.001, 0.001] is invalid: give distinct learning rates"),
        (["sweep.lrs=[0,1e-3]"], "sweep.lrs"),
        (["sweep=grid", "sweep.lrs=[1e-3,2e-3]"], "the learning-rate stage is the progressive procedure's"),
        (["sweep.lrs=[1e-3,2e-3]", "sweep.screen=true"], "not calibrated together"),
        (["sweep.lrs=[1e-3]"], "sweep.lrs=[0.001] holds one rate other than train.lr=0.002: give train.lr=0.001"),
    ],
)
def test_bad_brackets_are_refused_in_one_line(overrides, message):
    with pytest.raises((UserError, ValueError)) as e:
        compose(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_trial_of_the_bracket_trains_at_its_rate_in_its_own_folder(tmp_path):
    from sweep.claims import key_of
    from sweep.driver import run_dir_of, trial_config

    cfg, _ = compose(["debug=tiny", f"results_dir={tmp_path}", "sweep.lrs=[2e-3,1e-3]"])
    at_1e3 = TrialSpec(1, "q,v", 0, Stage.LR, lr=1e-3)
    at_2e3 = TrialSpec(1, "q,v", 0, Stage.LR, lr=2e-3)
    assert trial_config(cfg, at_1e3, ["q", "v"])[0].train.lr == 1e-3
    assert trial_config(cfg, at_2e3, ["q", "v"])[0].train.lr == 2e-3 == cfg.train.lr
    assert run_dir_of(cfg, at_1e3).name == "r1-q-v-seed0-lr0.001"
    assert run_dir_of(cfg, at_2e3).name == "r1-q-v-seed0"  # the recipe's rate: the folder it always had
    assert key_of(at_1e3) != key_of(at_2e3)


def test_the_rate_table_reads_trial_folders(tmp_path):
    """Four trials in two sweeps' folders (one trial reused by both: counted once), one collapsed to the
    majority class (0.6838): the means by hand."""
    from analysis.rates import markdown, rate_frame, rate_tables
    from sweep.record import TrialResult

    def write(sweep, r, seed, lr, value, *, config_only=False):
        folder = tmp_path / sweep / "trials" / f"r{r}-q-v-seed{seed}-lr{lr:g}"
        folder.mkdir(parents=True)
        rec = TrialResult(
            r=r,
            targets=["q", "v"],
            seed=seed,
            scaling="standard",
            lr=None if config_only else lr,
            objective="accuracy",
            objective_value=value,
            majority_baseline={"accuracy": 0.6838},
        )
        (folder / "metrics.json").write_text(json.dumps(rec.to_dict()))
        (folder / "config.yaml").write_text(f"train:\n  lr: {lr}\n")

    write("a", 1, 0, 1e-3, 0.75)
    write("a", 1, 1, 1e-3, 0.76, config_only=True)  # an older record: the rate from its config.yaml
    write("b", 1, 0, 1e-3, 0.75)  # the same trial, reused by sweep b
    write("b", 1, 0, 8e-3, 0.6838)
    write("b", 8, 0, 8e-3, 0.79)
    frame = rate_frame(tmp_path)
    assert len(frame) == 4 and frame["collapsed"].tolist().count(True) == 1
    (table,) = rate_tables(frame).values()
    assert table.loc[1e-3, 1][0] == pytest.approx(75.5) and table.loc[1e-3, 8] is None
    assert markdown(rate_tables(frame))[-2:] == [
        "| 0.001 | **75.50** (75.00, 76.00) | — |",
        "| 0.008 | 68.38 (68.38†) | **79.00** (79.00) |",
    ]


def test_the_simulated_stage_finds_the_better_rate_that_the_recipe_misses():
    """lr-off: 1e-3 is 2 points above the recipe's 2e-3 at every configuration. Nearly noise-free (σ 0.01),
    without the stage the sweep trains at 2e-3 and its pick is exactly 2 points short of the best (regret 2.00);
    with the bracket it races 1e-3 past 2e-3 at the start and loses nothing (regret 0)."""
    import numpy as np

    from analysis.simulate import BRACKET, rate_scenarios, simulate

    base = settings(escalate_max_r=16, max_seeds=8)
    off = next(s for s in rate_scenarios(base, COSTS) if s.name == "lr-off")
    assert off.mean(8, "q,v", 1e-3) - off.mean(8, "q,v") == pytest.approx(2.0)
    without = simulate(base, off, 0.01, COSTS, np.random.default_rng(0))
    with_stage = simulate(replace(base, lrs=list(BRACKET)), off, 0.01, COSTS, np.random.default_rng(0))
    assert without.regret == pytest.approx(2.0, abs=0.05) and with_stage.regret == pytest.approx(0.0, abs=0.05)
    assert with_stage.trials > without.trials  # the stage costs its trials


def test_a_bracketed_study_resumed_without_its_bracket_is_refused(tmp_path):
    """A study whose trials ran at 1e-3 and 2e-3 (a bracket) and is resumed with one rate: its decisions would
    pool the two rates into one configuration, so it is refused in one line naming the stored bracket."""
    import optuna
    from fakes import trial as frozen

    from sweep.study import _check_rates

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    study.set_user_attr("settings", {"lrs": [2e-3, 1e-3]})
    for lr, seed in ((2e-3, 0), (1e-3, 0)):
        t = frozen(1, "q,v", seed, 0.8, "lr")
        t.user_attrs["lr"] = lr
        study.add_trial(t)
    cfg, _ = compose([])
    with pytest.raises(UserError) as e:
        _check_rates(study, cfg)
    assert str(e.value) == (
        "sweep 'default' holds trials at lr=0.001 besides train.lr=0.002 (it ran with a bracket of rates): give "
        "sweep.lrs=[0.002,0.001] again, or a new sweep.name"
    )
    _check_rates(study, compose(["sweep.lrs=[2e-3,1e-3]"])[0])  # with the bracket: resumed


def test_a_bracket_whose_every_rate_collapses_stops_with_the_collapsed_line():
    """Every trial collapses to 68.38: by hand, the first two seeds at 2e-3 and at 1e-3 (4 trials), no
    replacement seeds for a rate whose first seeds all collapsed, then the collapsed stop: no recommendation."""
    history = []
    for _ in range(20):
        p = plan(settings(lrs=[2e-3, 1e-3]), history, COSTS)
        if p.next is None:
            break
        n = p.next
        history.append(Outcome(n.r, n.targets, n.seed, "ok", 0.6838, 9216, 1e12, 60.0, collapsed=True, lr=n.lr))
    assert [(o.seed, o.lr) for o in history] == [(0, 2e-3), (1, 2e-3), (0, 1e-3), (1, 1e-3)]
    assert p.recommendation is None and p.stop_reason == "every trial collapsed"
    assert [(d.action, d.lr) for d in p.decisions] == [
        (Action.FAILED, 2e-3),
        (Action.FAILED, 1e-3),
        (Action.COLLAPSED, None),
    ]
    assert p.decisions[-1].reason.startswith("every trial so far (4) collapsed to a constant prediction")

"""What a sweep will cost (``analysis/estimate.py``, ``make plan``): trial counts against a grid's arithmetic
and against ``simulate`` run directly, the compute caps, FLOPs per trial against what real tiny trials record,
the time left on a trial's line, and ``make plan`` writing nothing. No timing is asserted."""

import dataclasses

import numpy as np
import pytest
from conftest import run_main

from analysis import estimate
from analysis.estimate import TrialCost, measure_cost, trial_counts
from analysis.simulate import SEED, scenarios, simulate
from sweep.cli import compose
from sweep.decide import Outcome
from sweep.driver import Forecast, check_sweep, run_sweep, time_left
from sweep.trial import run_trial

#: LoRA parameters per rank of MiniLM's target sets (6 layers, d = 384, d_ff = 1536), by hand
MINILM = {
    "q": 6 * 768,
    "v": 6 * 768,
    "q,v": 6 * 2 * 768,
    "q,k,v,o": 6 * 4 * 768,
    "up,down": 6 * 2 * 1920,
    "all-linear": 6 * (4 * 768 + 2 * 1920),
}


def cost(flops: float, seconds_per_flop: float = 1e-12) -> TrialCost:
    """A trial cost that is the same for every configuration: ``flops`` training and flops/4 evaluation FLOPs."""
    return TrialCost(
        (1, "q"), (64, "all-linear"), (0, 0), (flops, flops), (flops / 4, flops / 4), seconds_per_flop, 1, 0.1,
        "cpu", "fp32", 1,
    )  # fmt: skip


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], 7 * 5 * 2),  # the default grid: ranks × target sets × seeds
        (["sweep.ranks=[1,2]", "sweep.target_sets=[[q,v]]", "sweep.seeds=[0,1,2]"], 2 * 1 * 3),
        (["sweep.target_sets=[[q,v],[v,q],[q]]"], 7 * 2 * 2),  # [v,q] is [q,v] spelt again
        (["sweep.max_trials=10"], 10),  # the cap cuts the grid
    ],
)
def test_a_grid_count_is_exact(overrides, expected):
    settings = compose(["sweep=grid", *overrides])[0].sweep
    counts = trial_counts(settings, MINILM, 1.0, n_eval=408)
    assert counts.exact and counts.trials_mean == counts.trials_p90 == expected


def test_trial_quantiles_are_those_of_simulate_run_directly():
    settings = compose([])[0].sweep
    reps = 4
    rng = np.random.default_rng(SEED)
    direct = [
        simulate(settings, s, 1.0, MINILM, rng, n_eval=408).trials
        for s in scenarios(settings, MINILM)
        for _ in range(reps)
    ]
    counts = trial_counts(settings, MINILM, 1.0, n_eval=408, reps_per_family=reps, cost=cost(2e13))
    assert counts.reps == len(direct) == 12 * reps and not counts.exact  # 12 families (late-r16, late-r32 among them)
    assert counts.trials_mean == pytest.approx(np.mean(direct))
    assert counts.trials_p90 == pytest.approx(np.quantile(direct, 0.9))
    # every trial costs 2e13 training FLOPs and (2e13 + 5e12) × 1e-12 = 25 s
    assert counts.flops_mean == pytest.approx(2e13 * np.mean(direct))
    assert counts.seconds_p90 == pytest.approx(25 * np.quantile(direct, 0.9))


@pytest.mark.parametrize(
    "overrides, most",
    [
        (["sweep.max_trials=5"], 5),
        # one seed, no racing: one trial at a time, each 25 s, so 75 s of max_hours stops it after 3
        (["sweep.seeds=[0]", "sweep.max_seeds=1", f"sweep.max_hours={75 / 3600}"], 3),
        (["sweep.seeds=[0]", "sweep.max_seeds=1", "sweep.max_train_flops=4e13"], 2),
    ],
)
def test_the_compute_caps_bind_in_the_estimate(overrides, most):
    settings = compose(overrides)[0].sweep
    counts = trial_counts(settings, MINILM, 1.0, n_eval=408, reps_per_family=3, cost=cost(2e13))
    assert counts.trials_p90 == most and counts.trials_mean <= most and counts.capped == 1.0


def test_a_budget_sweep_is_simulated_on_the_ranks_its_budgets_give():
    # conf/sweep/budget.yaml: 4 sets × 2 budgets (ranks 8, 4, 3, 2 and 64, 32, 26, 14: curves drawn there) × 2
    # seeds; without racing (max_seeds 2) exactly 16 in every simulated sweep, with racing more, at most 8 seeds each
    exact = trial_counts(compose(["sweep=budget", "sweep.max_seeds=2"])[0].sweep, MINILM, 1.0, reps_per_family=2)
    assert exact.trials_mean == exact.trials_p90 == 16
    raced = trial_counts(compose(["sweep=budget"])[0].sweep, MINILM, 1.0, n_eval=408, reps_per_family=2)
    assert 16 < raced.trials_mean <= raced.trials_p90 <= 4 * 2 * 8


def test_a_minimised_objective_is_simulated_in_its_unit():
    settings = compose(["task=stsb", "task.metrics=[pearson,spearman,mse]", "task.objective=mse"])[0].sweep
    counts = trial_counts(settings, MINILM, 0.04, objective="mse", reps_per_family=2)
    assert 3 <= counts.trials_mean <= counts.trials_p90 < 100


def test_interpolation_in_lora_parameters_is_exact_at_both_ends():
    c = dataclasses.replace(cost(0), lora_params=(100, 900), train_flops=(1000, 1800), eval_flops=(10, 18))
    assert c.flops(100) == (1000, 10) and c.flops(900) == (1800, 18) and c.flops(500) == (1400, 14)


def test_flops_per_trial_are_those_a_real_trial_records(tiny_bert, glue_dir, tmp_path):
    args = [
        "debug=tiny",
        f"model.name_or_path={tiny_bert}",
        f"data.dir={glue_dir}",
        f"results_dir={tmp_path}",
        "train.epochs=2",  # the batches' shapes differ per epoch
        "train.threads=1",  # on shared cores two threads wait for each other
        "sweep.ranks=[1,2,4]",
        "sweep.target_sets=[[q,v],all-linear]",
    ]
    cfg, _ = compose(args)
    c = measure_cost(cfg, check_sweep(cfg), probe_steps=1)
    assert (c.smallest, c.largest) == ((1, "q,v"), (4, "all-linear"))
    for (r, key), train, evaluation in zip((c.smallest, c.largest), c.train_flops, c.eval_flops):
        tcfg, tresolved = compose([*args, f"lora.r={r}", f"lora.targets=[{key}]", "train.seed=0"])
        m = run_trial(tcfg, tresolved, tmp_path / f"r{r}", progress=False)
        assert (m.train_flops, m.eval_flops) == (train, evaluation)
    assert c.train_flops[1] > c.train_flops[0] and c.seconds_per_flop > 0 and c.probe_steps == 1


@pytest.mark.parametrize(
    "seconds, expected",
    [
        ([], (10, 600)),  # the probe's 60 s a trial until one is measured
        ([30, 30, 30, 30], (6, 180)),  # then the measured mean
        ([30, 0, 90], (7, 420)),  # a crashed trial (0 s) measures nothing
        ([30] * 12, (0, 0)),  # past the expected trials
    ],
)
def test_time_left(seconds, expected):
    history = [Outcome(1, "q,v", i, seconds=s) for i, s in enumerate(seconds)]
    assert time_left(Forecast(10, 60), history) == expected


def test_a_nested_trial_counts_its_cost_in_the_time_left():
    # two nested trials of the screen (1.3 ordinary trials each) and one independent: 3.6 of 10 done
    history = [Outcome(64, "q,v", 0, seconds=60, nested=True), Outcome(64, "q,v", 1, seconds=60, nested=True)]
    history.append(Outcome(1, "q,v", 0, seconds=60))
    left, seconds = time_left(Forecast(10, 60), history)
    assert left == pytest.approx(10 - 3.6) and seconds == pytest.approx(6.4 * 60)


def test_a_cap_inside_the_screen_counts_as_the_worst_pick():
    # max_trials=2: the two nested trials use the cap, no independent trial runs, so there is no recommendation;
    # plateau-r4's worst configuration is r=1 on q or v (78 − 1 = 77), 3 points below its best (80)
    settings = dataclasses.replace(compose([])[0].sweep, screen=True, max_trials=2)
    scenario = next(s for s in scenarios(settings, MINILM) if s.name == "plateau-r4")
    run = simulate(settings, scenario, 1.0, MINILM, np.random.default_rng(0), n_eval=408)
    assert run.pick is None and run.regret == pytest.approx(3.0) and run.capped and run.trials == pytest.approx(2.6)


def _tree(folder):
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


def test_a_sweep_says_its_cost_and_time_left_and_plan_writes_nothing(tiny_bert, glue_dir, tmp_path):
    args = [
        "debug=tiny",
        f"model.name_or_path={tiny_bert}",
        f"data.dir={glue_dir}",
        f"results_dir={tmp_path}",
        "train.threads=1",
        "sweep.ranks=[1]",
        "sweep.seeds=[0,1]",
        "sweep.max_seeds=2",
        "sweep.target_sets=[[q,v]]",
    ]
    lines = []
    cfg, resolved = compose(args)
    run_sweep(cfg, resolved, progress=False, log=lines.append, forecast=estimate.forecaster(cfg, lines.append))
    # one configuration, two seeds, nothing to escalate to: exactly 2 trials in every simulated sweep
    assert any(line.startswith("expected cost: trials: mean 2.0, p90 2 at assumed seed σ = 1.00") for line in lines)
    trials = [line for line in lines if line.startswith("trial ")]
    assert len(trials) == 2 and "1.0 more trials of ~2.0 expected" in trials[0], lines

    before = _tree(tmp_path)
    ran = run_main(estimate.main, *args)
    assert ran.returncode == 0, ran
    assert "at measured pooled seed σ" in ran.stdout and "the study has 2 finished trials" in ran.stdout
    assert _tree(tmp_path) == before  # nothing written, nothing touched


def test_plan_on_nothing_writes_nothing(tiny_bert, glue_dir, tmp_path):
    ran = run_main(
        estimate.main,
        "debug=tiny",
        f"model.name_or_path={tiny_bert}",
        f"data.dir={glue_dir}",
        f"results_dir={tmp_path}/results",
    )
    assert ran.returncode == 0, ran
    assert "expected cost: per trial: training FLOPs" in ran.stdout and "estimate from" in ran.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "bad, says",
    [
        ("sweep.rankz=[1]", "sweep.rankz"),
        ("lora.r=8", "lora.r=8 is ignored by a sweep"),
        ("sweep.target_sets=[[nothing]]", "sweep.target_sets holds [nothing]"),
    ],
)
def test_plan_refuses_bad_input_in_one_line(bad, says, tiny_bert, tmp_path):
    ran = run_main(estimate.main, "debug=tiny", f"model.name_or_path={tiny_bert}", f"results_dir={tmp_path}", bad)
    assert ran.returncode == 2 and says in ran.stderr and len(ran.stderr.strip().splitlines()) == 1, ran

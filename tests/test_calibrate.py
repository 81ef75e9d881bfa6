"""The calibration: scenario curves, noise-free replays whose trials and regret are known by hand, a
study's observed curve and σ, and the command's table."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from fakes import FINISHED, make_study, small_settings, trial
from fakes import MINILM_COSTS as COSTS
from scipy import stats

import analysis.simulate as simulate_module
from analysis.calibrate import COLUMNS, _print_table, main
from analysis.reliability import observed_scenario, reliability
from analysis.simulate import (
    GAUSSIAN,
    MAJORITY,
    NOISE_MODELS,
    SCREEN,
    NoiseModel,
    Scenario,
    calibrate_cell,
    degenerate_scenarios,
    grid_trials,
    scenarios,
    search_space,
    simulate,
)
from sweep.cli import defaults as default_config
from sweep.config import SweepSettings
from sweep.decide import Outcome
from sweep.errors import UserError

RANKS = [1, 2, 4, 8, 16, 32, 64]


def defaults(**kw) -> SweepSettings:
    return replace(default_config().sweep, **{"max_trials": None, "max_hours": None, **kw})


def test_default_grid_is_70_trials():
    # 7 ranks × 5 target sets (q, v, q,v, q,k,v,o, all-linear) × 2 seeds
    assert grid_trials(defaults()) == 70
    assert len(search_space(defaults())) == 35


def test_scenario_curves_by_hand():
    by_name = {s.name: s for s in scenarios(defaults(), COSTS)}
    assert list(by_name) == [
        "flat",
        "plateau-r2",
        "plateau-r4",
        "plateau-r8",
        "plateau-r32",
        "rising",
        "peak-r8",
        "wider+1+2",
        "wider+0.5",
        "wider-1",
        "late-r16",
        "late-r32",
    ]
    # late risers (issue #23): flat to k/2, then 1.1, 2.6 and 3 above it at k, 2k, 4k
    assert [by_name["late-r16"].curve[r] for r in RANKS] == pytest.approx([77, 77, 77, 77, 78.1, 79.6, 80])
    assert [by_name["late-r32"].curve[r] for r in RANKS] == pytest.approx([77, 77, 77, 77, 77, 78.1, 79.6])
    assert [by_name["plateau-r4"].curve[r] for r in RANKS] == [78, 79, 80, 80, 80, 80, 80]
    assert [by_name["plateau-r32"].curve[r] for r in RANKS] == [75, 76, 77, 78, 79, 80, 80]
    assert [by_name["rising"].curve[r] for r in RANKS] == [74, 75, 76, 77, 78, 79, 80]
    assert [by_name["peak-r8"].curve[r] for r in RANKS] == [77, 78, 79, 80, 79, 78, 77]
    wider = by_name["wider+1+2"]
    assert wider.offsets == {"q": -1, "v": -1, "q,v": 0, "q,k,v,o": 1, "all-linear": 2}
    assert wider.best(search_space(defaults())) == 82  # all-linear at r ≥ 4


@pytest.mark.parametrize(
    "name, trials",
    [
        # flat: r=1, r=2, r=4 (2 doublings: plateau at r=1), then q,k,v,o and all-linear at r=1: 5 × 2 seeds
        ("flat", 10),
        # plateau at r=4: r=1, 2, 4 gain; r=8 and r=16 do not: plateau at r=4; two wider sets: 7 × 2 seeds
        ("plateau-r4", 14),
    ],
)
def test_noise_free_replay(name, trials):
    s = defaults()
    scenario = next(x for x in scenarios(s, COSTS) if x.name == name)
    # no noise: every comparison is decided by its first two seeds (SE 0: a gain of 0 is no gain); regret 0
    cell = calibrate_cell(s, scenario, 0.0, COSTS, reps=3, seed=0, tolerance=s.tolerance)
    assert (cell.p_within_tolerance, cell.mean_regret, cell.mean_trials) == (1.0, 0.0, trials)
    assert cell.pct_of_grid == pytest.approx(100 * trials / 70)


def test_the_screen_error_model_is_the_measured_bias_line():
    # nested (nested_draw=every) − independent on MRPC by rank: −5.31, −4.08, −2.94, −1.96, +1.63, −0.98, −1.14
    # (mean −14.78/7); least squares in x = log2 r (mean 3, Σ(x − 3)² = 28): slope Σ(x − 3)·y / 28 = 23.28/28
    slope = 23.28 / 28
    assert SCREEN.bias_per_doubling == pytest.approx(slope)
    assert SCREEN.bias(1) == pytest.approx(-14.78 / 7 - 3 * slope) and SCREEN.bias(64) == pytest.approx(
        -14.78 / 7 + 3 * slope
    )
    assert (SCREEN.noise, SCREEN.shared, SCREEN.cost) == (1.65, 0.0, 1.3)
    assert SCREEN.scaled(0.01).bias(8) == pytest.approx(0.01 * SCREEN.bias(8))


def test_noise_free_screened_replay_of_a_plateau_at_r4():
    # σ = 0: both nested trials read plateau-r4 (78, 79, then 80) + the bias line −2.1114 + 0.8314·(log2 r − 3):
    # 73.394, 75.226, 77.057, 77.889, 78.720, 79.551, 80.383 (the same in both: no residual, no slack). Best
    # r=64; knee r=32 (gap 0.832 ≤ 1; r=16's is 1.663). Pair: r=32 and r=64 (80 and 80: no gain); r=32 is above
    # escalate_max_r=16: no wider sets. Trials: 2 nested × 1.3 + 2 configurations × 2 seeds = 6.6 ordinary-trial
    # equivalents, regret 0, but the pick is r=32 where r=4 would do: the screen's tilt towards high ranks costs
    # parameters, which P(regret ≤ tolerance) does not see (docs/validation.md §6)
    s = defaults(screen=True)
    scenario = next(x for x in scenarios(s, COSTS) if x.name == "plateau-r4")
    assert [scenario.curve[r] + SCREEN.bias(r) for r in RANKS][4:] == pytest.approx([78.720, 79.551, 80.383], abs=1e-3)
    run = simulate(s, scenario, 0.0, COSTS, np.random.default_rng(0))
    assert (run.regret, run.trials, run.pick) == (0.0, pytest.approx(6.6), (32, "q,v"))


def test_regret_counts_the_whole_search_space():
    # wider sets help by 3 but the curve rises up to r=32 > escalate_max_r: the wider sets are never
    # tried, the pick is r=32 on q,v at 80 while all-linear at r=32 scores 83: regret 3
    s = defaults()
    curve = {r: 80 - max(0, 5 - math.log2(r)) for r in RANKS}
    scenario = Scenario("x", "x", curve, {"q,k,v,o": 3.0, "all-linear": 3.0})
    cell = calibrate_cell(s, scenario, 0.0, COSTS, reps=2, seed=0, tolerance=s.tolerance)
    assert cell.mean_regret == 3.0 and cell.p_within_tolerance == 0.0


def history(values):
    return [Outcome(r, t, seed, "ok", v) for (r, t), vs in values.items() for seed, v in enumerate(vs)]


def test_observed_scenario_fills_ranks_from_the_nearest_observed_one():
    s = defaults(ranks=[1, 2, 4, 8])
    h = history({(1, "q,v"): [0.80, 0.82], (4, "q,v"): [0.84, 0.86], (4, "q,k,v,o"): [0.87]})
    scenario = observed_scenario(h, s, COSTS)
    # r=2 is one doubling from r=1 and from r=4: the lower one; r=8 takes r=4's 85
    assert scenario.curve == pytest.approx({1: 81.0, 2: 81.0, 4: 85.0, 8: 85.0})
    # q,k,v,o: 87 − 85 at r=4; all-linear never tried (wider: 0); q and v alone narrower: −1
    assert scenario.offsets == pytest.approx({"q": -1, "v": -1, "q,v": 0, "q,k,v,o": 2.0, "all-linear": 0})
    assert observed_scenario(history({(4, "q,k,v,o"): [0.87]}), s, COSTS) is None


def test_reliability_sigma_and_detectable_gain_by_hand():
    h = history({(1, "q,v"): [0.80, 0.82], (2, "q,v"): [0.84, 0.87, 0.84]})
    # s² = (1·2 + 2·3) / 3 (points²), 3 d.f.; with 8 seeds: t(0.9, 3)·s·√(2/8)
    rel = reliability(h, defaults(), None)
    sigma = math.sqrt(8 / 3)
    assert (rel.sigma, rel.dof, rel.seeds) == (pytest.approx(sigma), 3, 8)
    assert rel.detectable_gain == pytest.approx(stats.t.ppf(0.9, 3) * sigma * 0.5)
    assert rel.p_within_tolerance is None
    assert reliability(history({(1, "q,v"): [0.8]}), defaults(), None) is None


def test_degenerate_cells():
    cells = degenerate_scenarios(defaults(), COSTS)
    assert [(s.name, sigma, n) for s, sigma, n in cells[:2]] == [("majority", 0.0, 408), ("majority", 0.0, 32)]
    assert cells[0][0].curve[8] == pytest.approx(100 * 279 / 408)  # on the 408-example grid: rounding keeps it
    quantised = {(s.name, sigma, n) for s, sigma, n in cells[2:]}
    names = ("plateau-r4", "peak-r8", "wider-1", "rising")
    assert quantised == {(x, sg, 32) for x in names for sg in (0.5, 1.0, 2.0)} | {
        (x, sg, 408) for x in names for sg in (0.1, 0.25)
    }


@pytest.mark.parametrize(
    "n_eval, noise_floor, trials",
    [
        # every seed scores the majority class: gain 0 everywhere. Floored at 100/408 = 0.245 points the upper
        # bound 0 + t(0.9, d.f.)·0.245·√(1/2 + 1/2) ≤ 1.886·0.245 = 0.46 < 1 at two seeds: no gain at once, as
        # the noise-free replay (r=1, 2, 4, then q,k,v,o and all-linear at r=1: 5 × 2 seeds)
        (408, 1.0, 10),
        (408, 0.29, 10),
        (408, 0.0, 10),
        # floored at 100/32 = 3.125 points, 0 + t·3.125·√(2/n) > 1 even at n = 8 (t > 1.28 > 1/(3.125·0.5)):
        # every comparison races to 8 seeds a side and ends at the seed limit: 5 × 8 seeds
        (32, 1.0, 40),
        # unfloored, σ = 0 decides at two seeds
        (32, 0.0, 10),
    ],
)
def test_majority_class_scenario_by_hand(n_eval, noise_floor, trials):
    s = defaults(noise_floor=noise_floor)
    majority = degenerate_scenarios(s, COSTS)[0][0]
    cell = calibrate_cell(s, majority, 0.0, COSTS, reps=2, seed=0, tolerance=s.tolerance, n_eval=n_eval)
    assert (cell.p_within_tolerance, cell.mean_regret, cell.mean_trials, cell.n_eval) == (1.0, 0.0, trials, n_eval)


def test_reliability_of_equal_seeds_is_floored():
    # every seed scored 279 of 408: measured σ 0 (2 d.f.), floored at 0.29 × 100/408 = 0.0711 points (the
    # default); detectable gain with 8 seeds: t(0.9, 2)·0.0711·√(2/8)
    h = [replace(o, resolution=100 / 408) for o in history({(1, "q,v"): [279 / 408] * 2, (2, "q,v"): [279 / 408] * 2})]
    rel = reliability(h, defaults(), None)
    floor = 0.29 * 100 / 408
    assert (rel.sigma, rel.measured, rel.floor, rel.dof, rel.n_eval) == (pytest.approx(floor), 0.0, floor, 2, 408)
    assert rel.detectable_gain == pytest.approx(stats.t.ppf(0.9, 2) * floor * 0.5)
    assert rel.text().startswith(
        "seed noise σ = 0.07 points, floored (sweep.noise_floor = 0.29 validation examples of 408): the measured "
        "0.00 (pooled, 2 d.f.) claims more"
    )
    # no floor: the measured 0 as it is
    rel = reliability(h, defaults(noise_floor=0.0), None)
    assert (rel.sigma, rel.floor) == (0.0, None) and rel.text().startswith(
        "seed noise σ = 0.00 points (pooled, 2 d.f.)"
    )


def test_command_writes_the_table_for_defaults_and_overrides(tmp_path, capsys):
    assert main(["--reps=2", f"results_dir={tmp_path}", "sweep.max_seeds=4"]) == 0
    every = pd.read_csv(tmp_path / "calibration" / "calibration.csv")
    assert tuple(every.columns) == COLUMNS
    # then the minimised objective (the loss, nats) on the same families for each settings: σ = 0.5, 1 and
    # 1.5 × its tolerance of 0.01 nats, never rounded
    nats = every[every["unit"] == "nats"]
    assert len(nats) == 2 * 12 * 3 and nats["n_eval"].isna().all()
    assert sorted(nats["sigma"].unique()) == pytest.approx([0.005, 0.01, 0.015])
    assert (nats.loc[nats["scenario"] == "flat", "p_within_tolerance"] == 1.0).all()
    points = every[(every["unit"] == "points") & (every["noise"] == "gaussian")]
    # each settings' tables (12 scenarios × σ ∈ {0.5, 1.0, 1.5} on MRPC's 408 examples + the 22 degenerate
    # cells), then the screen's frontier: each settings without and with the screen, 12 scenarios × σ ∈
    # {0.5, 1, 2} on 408 examples
    table, after = points.iloc[: 2 * (12 * 3 + 22)], points.iloc[2 * (12 * 3 + 22) :]
    # after each settings' screen frontier, its learning-rate frontier: without the stage and with the bracket,
    # the 5 rate families × σ ∈ {0.5, 1, 2}
    rates = after[after["scenario"].str.startswith("lr-")]
    # after the rates, the head arm (issue #21): without it and with 0 first in sweep.ranks, 4 families × head
    # 0, 1 and 9 points below r=1 × σ ∈ {0.5, 1}
    head = after[after["scenario"].str.contains("/head-")]
    assert list(head["settings"].unique()) == [
        "default",
        "default sweep.ranks=[0,…]",
        "sweep.max_seeds=4",
        "sweep.max_seeds=4 sweep.ranks=[0,…]",
    ]
    assert len(head) == 4 * 4 * 3 * 2 and sorted(head["sigma"].unique()) == [0.5, 1.0]
    assert sorted({n.partition("/")[2] for n in head["scenario"]}) == ["head-0", "head-1", "head-9"]
    assert head["p_head"].notna().all() and (head.loc[head["settings"] == "default", "p_head"] == 0).all()
    assert every.loc[~every["scenario"].str.contains("/head-"), "p_head"].isna().all()
    front = after[~after["scenario"].str.startswith("lr-") & ~after["scenario"].str.contains("/head-")]
    assert list(rates["settings"].unique()) == [
        "default rates off",
        "default sweep.lrs=[0.002,0.001,0.004]",
        "sweep.max_seeds=4 rates off",
        "sweep.max_seeds=4 sweep.lrs=[0.002,0.001,0.004]",
    ]
    assert len(rates) == 4 * 5 * 3 and sorted(rates["sigma"].unique()) == [0.5, 1.0, 2.0]
    assert list(table["settings"].unique()) == ["default", "sweep.max_seeds=4"]
    assert list(front["settings"].unique()) == [
        "default",
        "default sweep.screen=true",
        "sweep.max_seeds=4",
        "sweep.max_seeds=4 sweep.screen=true",
    ]
    assert len(front) == 4 * 12 * 3 and sorted(front["sigma"].unique()) == [0.5, 1.0, 2.0]
    families = table[table["scenario"].isin([s.name for s in scenarios(defaults(), COSTS)])]
    assert sorted(table["sigma"].unique()) == [0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0]
    assert sorted(families.loc[families["n_eval"] == 408, "sigma"].unique()) == [0.1, 0.25, 0.5, 1.0, 1.5]
    flat = table[table["scenario"] == "flat"]
    assert (flat["p_within_tolerance"] == 1.0).all()  # every pick on a flat curve has regret 0
    assert list(table["pct_of_grid"]) == pytest.approx(list(100 * table["mean_trials"] / 70), abs=1e-4)
    out = capsys.readouterr().out
    assert "settings: default" in out
    assert "the nested-rank screen (sweep.screen, issue #23): without it and with it" in out
    assert "trials are ordinary-trial equivalents (a nested trial counts 1.3)" in out
    assert (
        "minimised objective: validation loss in nats (lower is better); scenario families stepping by the "
        "tolerance, Gaussian seed noise σ in nats (0.5, 1 and 1.5 × the tolerance), not rounded" in out
    )
    assert "tolerance 0.01, confidence 0.9" in out
    # last, each settings under the four noise models beyond the Gaussian: 12 scenarios × σ ∈ {0.5, 1}, half the
    # sweeps per cell (1 of --reps=2), rounded to 408 examples
    noisy = every[every["noise"] != "gaussian"]
    assert list(noisy.index) == list(range(len(every) - len(noisy), len(every)))  # appended: earlier rows stay put
    assert list(dict.fromkeys(noisy["noise"])) == [
        "student-t3",
        "collapse-5%",
        "collapse-5%-as-values",
        "sd-by-rank",
    ]
    assert len(noisy) == 2 * 4 * 12 * 2 and sorted(noisy["sigma"].unique()) == [0.5, 1.0]
    assert (noisy["n_eval"] == 408).all() and (noisy["unit"] == "points").all()
    assert list(dict.fromkeys(noisy["settings"])) == ["default", "sweep.max_seeds=4"]
    assert "seed noise beyond the Gaussian (issue #22, docs/validation.md §7), settings default: 1 simulated" in out
    assert "  sd-by-rank: s.d. 2σ at r ≤ 2, 0.7σ above" in out
    assert "\ncollapse-5%: targets " in out and "\nsd-by-rank: targets " in out
    assert "head only as rank 0 (sweep.ranks=[0,1,2,…], issue #21: is any adapter needed?)" in out


def test_command_calibrates_against_a_study(tmp_path, capsys):
    make_study(tmp_path, small_settings(), [trial(*t) for t in FINISHED])
    assert main(["--reps=2", f"results_dir={tmp_path}", "sweep.name=default"]) == 0
    table = pd.read_csv(tmp_path / "calibration" / "calibration.csv")
    # σ pooled over the three q,v pairs of FINISHED: 1.41 points, one more σ for every scenario; its trials do not
    # say how many examples they evaluated, so those values are not rounded (n_eval empty)
    assert sorted(table.loc[table["n_eval"].isna(), "sigma"].unique()) == [0.5, 1.0, 1.41, 1.5]
    study = table[table["scenario"] == "study"]
    # calibrated with the study's own settings (ranks 1–8, 2 target sets: 9 families) × 4 σ, plus the study's
    # curve, plus the 22 degenerate cells
    assert list(study["sigma"]) == [1.41] and len(table) == len(scenarios(small_settings(), COSTS)) * 4 + 1 + 22 == 59
    assert set(table["settings"]) == {"as run"}
    assert "seed noise σ = 1.41 points (pooled, 3 d.f.)" in capsys.readouterr().out


def test_a_study_that_starts_on_other_targets_is_calibrated_as_it_ran(tmp_path, capsys):
    # a sweep that starts on q,k,v,o (as a GPT-2 sweep starts on qkv): the defaults' start targets q,v
    # have no trial, so only the study's own settings can calibrate it. σ: two pairs 2 points apart, √2
    s = small_settings(start_targets=["q", "k", "v", "o"], target_sets=[["q", "k", "v", "o"]])
    runs = [(1, "q,k,v,o", 0, 0.80, "rank"), (1, "q,k,v,o", 1, 0.82, "rank"), (2, "q,k,v,o", 0, 0.85, "rank")]
    make_study(tmp_path, s, [trial(*t) for t in [*runs, (2, "q,k,v,o", 1, 0.87, "rank")]], sweep_ended=False)
    assert main(["--reps=2", f"results_dir={tmp_path}", "sweep.name=default", "sweep.max_seeds=3"]) == 0
    table = pd.read_csv(tmp_path / "calibration" / "calibration.csv")
    assert set(table["settings"]) == {"as run", "sweep.max_seeds=3"}
    assert sorted(table.loc[table["scenario"] == "study", "sigma"]) == [1.41, 1.41]
    assert "seed noise σ = 1.41 points (pooled, 2 d.f.)" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["--reps=0", "--reps=x"])
def test_bad_reps(bad):
    with pytest.raises(UserError, match=rf"^{bad} is invalid: give --reps=N with N a positive integer"):
        main([bad])


def test_overrides_on_top_of_a_study(tmp_path, capsys):
    make_study(tmp_path, small_settings(), [trial(*t) for t in FINISHED])
    study = [f"results_dir={tmp_path}", "sweep.name=default"]
    # a rank the sweep never ran takes the nearest observed rank's mean on the observed curve
    assert main(["--reps=2", *study, "sweep.ranks=[1,2,4,8,16]"]) == 0
    table = pd.read_csv(tmp_path / "calibration" / "calibration.csv")
    assert list(table.loc[table["scenario"] == "study", "settings"]) == ["as run", "sweep.ranks=[1,2,4,8,16]"]
    capsys.readouterr()
    # a target set the sweep never sized, and a bad value, are refused in one line before any output
    with pytest.raises(
        UserError, match=r"^sweep.target_sets holds \[all-linear\], which sweep 'ranksweep-mrpc-default'"
    ):
        main(["--reps=2", *study, "sweep.target_sets=[[q,v],[q,k,v,o],all-linear]"])
    with pytest.raises(UserError, match=r"^sweep.confidence=1.5 is invalid"):
        main(["--reps=2", *study, "sweep.confidence=1.5"])
    assert capsys.readouterr().out == ""


def test_a_share_of_the_grid_above_100_percent_says_what_it_means(capsys):
    # a tiny grid (ranks [1,2], one target set, one seed: 2 trials) that racing to 4 seeds outgrows
    settings = replace(small_settings(), ranks=[1, 2], target_sets=[["q", "v"]], seeds=[0], max_seeds=4)
    row = {
        "scenario": "flat",
        "sigma": 1.0,
        "n_eval": 408,
        "settings": "default",
        "p_within_tolerance": 1.0,
        "mean_regret": 0.0,
    }
    table = pd.DataFrame([{**row, "mean_trials": 5.0, "pct_of_grid": 250.0}])
    _print_table(table, settings, "scenario families")
    assert capsys.readouterr().out.splitlines()[-1] == (
        "% of grid: mean trials / the 2 trials of the grid at sweep.seeds=[0]; racing adds seeds up to "
        "sweep.max_seeds=4, so above 100% the procedure ran more trials than that grid (a small grid, or much racing)"
    )
    _print_table(table.assign(pct_of_grid=50.0), settings, "scenario families")  # within the grid: no note
    assert "racing adds seeds" not in capsys.readouterr().out


def test_against_a_missing_sweep_the_hint_names_its_folder_and_name(tmp_path):
    from conftest import run_main

    ran = run_main(main, "task=rte", "sweep.name=mine", f"results_dir={tmp_path}")
    assert ran.returncode == 2
    assert ran.stderr == (
        f"ranksweep: error: no sweep study at {tmp_path}/rte/mine/study.db; run "
        f"`make sweep TASK=rte ARGS='sweep.name=mine results_dir={tmp_path}'` first (or point sweep.storage at one)\n"
    )


def test_a_budget_sweep_is_refused_in_one_line(tmp_path):
    """A budget sweep compares target sets at equal budgets: no rank curve for the simulation to draw on."""
    from conftest import run_main

    s = small_settings(mode="budget", budgets=[{"r": 2, "targets": ["q", "v"]}], target_sets=[["q", "k", "v", "o"]])
    make_study(
        tmp_path,
        s,
        [trial(r, t, seed, 0.8, "equal-budget") for r, t in ((2, "q,v"), (1, "q,k,v,o")) for seed in (0, 1)],
    )
    for args in (["sweep=budget"], ["task=mrpc", "sweep.name=default", f"results_dir={tmp_path}"]):
        ran = run_main(main, *args)
        assert ran.returncode == 2 and len(ran.stderr.splitlines()) == 1, ran
        assert (
            "a budget sweep (sweep=budget) compares target sets at equal budgets, which is no rank curve" in ran.stderr
        )


def test_the_gaussian_model_draws_what_the_calibration_always_drew():
    # one standard normal per trial, in order: the tables of the Gaussian model do not move
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    drawn = [GAUSSIAN.draw(a, 80.0, 0.5, r) for r in (1, 2, 64)]
    assert drawn == [(80.0 + 0.5 * b.standard_normal(), False) for _ in range(3)]


def test_noise_models_draw_their_spread():
    rng = np.random.default_rng(0)
    n = 20_000
    t3, collapse, values, by_rank = NOISE_MODELS
    # Student-t with 3 d.f. scaled by √(1/3) to s.d. 1: its upper quartile is t.ppf(0.75, 3)/√3 = 0.4416 (the
    # s.d. of a sample of t3 does not settle: its fourth moment is infinite); quantile s.e. ≈ 0.008
    heavy = np.array([t3.draw(rng, 0.0, 1.0, 4)[0] for _ in range(n)])
    assert np.quantile(heavy, 0.75) == pytest.approx(stats.t.ppf(0.75, 3) / math.sqrt(3), abs=0.03)
    # by rank at σ = 0.5: s.d. 1.0 at r ≤ 2, 0.35 above (sample s.d. within 3%: its s.e. is 0.5%)
    for r, sd in ((1, 1.0), (2, 1.0), (4, 0.35), (64, 0.35)):
        assert np.std([by_rank.draw(rng, 0.0, 0.5, r)[0] for _ in range(n)]) == pytest.approx(sd, rel=0.03)
    # 5% collapses, at MRPC's majority class: 1,000 of 20,000 expected, binomial s.d. √(20,000·0.05·0.95) = 30.8
    drawn = [collapse.draw(rng, 80.0, 1.0, 4) for _ in range(n)]
    hits = [v for v, c in drawn if c]
    assert abs(len(hits) - 1000) < 4 * 30.8 and set(hits) == {MAJORITY}
    assert (values.collapse, values.flagged, collapse.flagged) == (0.05, False, True)


def test_the_simulation_flags_its_share_of_collapsed_trials(monkeypatch):
    # the outcomes the procedure sees: about 5% flagged collapsed, each at the majority class (within 4
    # binomial s.d. of the share over every trial of 20 simulated sweeps)
    seen, real = [], simulate_module.plan

    def spy(settings, history, per_rank):
        seen.append(list(history))
        return real(settings, history, per_rank)

    monkeypatch.setattr(simulate_module, "plan", spy)
    rng = np.random.default_rng(0)
    flat = scenarios(defaults(), COSTS)[0]
    collapse = NOISE_MODELS[1]
    finals = []
    for _ in range(20):
        seen.clear()
        simulate(defaults(), flat, 1.0, COSTS, rng, n_eval=408, noise=collapse)
        finals += seen[-1]
    flagged = [o for o in finals if o.collapsed]
    n = len(finals)
    assert abs(len(flagged) - 0.05 * n) < 4 * math.sqrt(n * 0.05 * 0.95)
    assert [o.value for o in flagged] == pytest.approx([MAJORITY / 100] * len(flagged))


@pytest.mark.parametrize(
    "flagged, trials, picked, regret",
    [
        # flagged: the start configuration's two seeds collapsed, the sweep stops without a recommendation,
        # which the simulation scores as the worst configuration (q or v alone, 1 point below the flat curve)
        (True, 2, False, 1.0),
        # kept as values, every seed scores 68.38: the majority-class case by hand (test above), 5 × 2 trials,
        # and on a flat curve every pick on q,v or wider is as good
        (False, 10, True, 0.0),
    ],
)
def test_a_sweep_whose_every_trial_collapses(flagged, trials, picked, regret):
    always = NoiseModel("always", collapse=1.0, collapse_value=MAJORITY, flagged=flagged)
    flat = scenarios(defaults(), COSTS)[0]
    run = simulate(defaults(), flat, 1.0, COSTS, np.random.default_rng(0), n_eval=408, noise=always)
    assert (run.trials, run.pick is not None, run.regret) == (trials, picked, regret)


def test_head_only_is_one_configuration_of_the_search_space():
    # r=0 has no target matrices: once, on the start targets; 6 ranks × 5 sets + 1 = 31 configurations
    s = defaults(ranks=[0, 1, 2, 4, 8, 16, 32])
    assert search_space(s)[0] == (0, "q,v") and len(search_space(s)) == 31 and grid_trials(s) == 62


@pytest.mark.parametrize(
    "gap, sigma, picked",
    [
        # every adapter scores what head only scores, seeds within 0.1 point: every configuration is shown within
        # the tolerance of the best, so the rule picks the fewest trainable parameters (head only) every time
        (0.0, 0.1, 1.0),
        # head only 9 points below: never within the tolerance, never picked
        (9.0, 0.5, 0.0),
    ],
)
def test_head_arm_picks_head_only_exactly_when_no_adapter_is_needed(gap, sigma, picked):
    on = defaults(ranks=[0, *RANKS])
    flat = [sc for sc in simulate_module.head_scenarios(scenarios(defaults(), COSTS), [gap]) if sc.family == "flat"]
    assert flat[0].curve[0] == 80.0 - gap and flat[0].name == f"flat/head-{gap:g}"
    rng, head_rng = np.random.default_rng(0), np.random.default_rng(1)
    runs = [simulate(on, flat[0], sigma, COSTS, rng, n_eval=408, head_rng=head_rng) for _ in range(10)]
    assert np.mean([r.pick[0] == 0 for r in runs]) == picked
    assert all(r.regret <= 1.0 for r in runs)  # flat: every pick has regret 0; head only too when gap is 0


def test_families_with_head_only_put_it_mrpcs_gap_below_the_lowest_rank():
    # a sweep of sweep.ranks=[0,…] (make plan, calibrate against its study): every family has head only 9 points
    # (MRPC's gap) below its r=1, the rest of the curve as without it
    on, off = scenarios(defaults(ranks=[0, *RANKS]), COSTS), scenarios(defaults(), COSTS)
    assert [s.name for s in on] == [s.name for s in off]
    for a, b in zip(on, off):
        assert a.curve == {0: b.curve[1] - 9.0, **b.curve}

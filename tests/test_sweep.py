"""Real sweeps, shrunk to seconds per trial: resume after SIGKILL, grid mode, refusals, the budget.

Sweeps run in-process (``run_main``) except where a separate process is the point: a SIGKILL. The default
suite kills one sweep mid-trial; the kill at several points in a row is marked slow."""

import json
import signal
from pathlib import Path

import optuna
import pytest
from conftest import kill_when, ok, run_main

from sweep.__main__ import main as sweep_main

# two epochs (so a trial can die between them), enough examples that metrics and losses differ
# between configurations, two ranks and one wider target set: three trials for the progressive
# procedure (r=1, r=2, then q,k,v,o at r=1: one seed and no racing, so no gain is significant and the
# ranks run out), four for the grid
SMALL = [
    "debug=tiny",
    "train.epochs=2",
    "train.lr=5e-3",
    "data.max_train_samples=96",
    "data.max_eval_samples=48",
    "sweep.ranks=[1,2]",
    "sweep.seeds=[0]",
    "sweep.patience=2",
    "sweep.target_sets=[[q,v],[q,k,v,o]]",
]


def args(tmp: Path, glue: Path, *extra: str):
    return [*SMALL, f"data.dir={glue}", f"results_dir={tmp}", *extra]


def trials_of(tmp: Path, name: str = "default"):
    url = f"sqlite:///{tmp / 'mrpc' / name / 'study.db'}"
    study = optuna.load_study(study_name=f"ranksweep-mrpc-{name}", storage=url)
    return study.get_trials(deepcopy=False)


def finished(tmp: Path, name: str = "default"):
    """(r, targets, seed, state, value, per-epoch records of metrics.json) of every trial."""
    out = []
    for t in trials_of(tmp, name):
        run_dir = Path(t.user_attrs["run_dir"])
        epochs = (
            json.loads((run_dir / "metrics.json").read_text())["epochs"]
            if (run_dir / "metrics.json").exists()
            else None
        )
        out.append((t.params["r"], t.user_attrs["targets_key"], t.params["seed"], t.state.name, t.value, epochs))
    return sorted(out, key=repr)


def n_finished(tmp, name="default"):
    """Trials whose metrics.json is written (a trial writes it just before the study is told)."""
    return len(list((tmp / "mrpc" / name / "trials").glob("*/metrics.json")))


def checkpoints(tmp):
    return list((tmp / "mrpc" / "default" / "trials").glob("*/checkpoint.pt"))


@pytest.fixture(scope="module")
def reference(glue_dir, tmp_path_factory):
    """An uninterrupted run of the small sweep."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = run_main(sweep_main, *args(tmp, glue_dir))
    ok(proc)
    return tmp, proc.stdout


@pytest.mark.slow  # three SIGKILLs and four sweep processes; test_grid_interrupted_mid_trial... kills one
def test_sigkill_at_several_points_then_resume_equals_an_uninterrupted_run(reference, glue_dir, tmp_path):
    ref_dir, ref_out = reference
    a = args(tmp_path, glue_dir)
    log = tmp_path / "killed.log"
    # 1: in the middle of the first trial, after its first epoch; 2: after two finished trials;
    # 3: in the middle of a later trial
    assert kill_when(a, lambda: checkpoints(tmp_path), log) == -signal.SIGKILL, log.read_text()
    assert kill_when(a, lambda: n_finished(tmp_path) >= 2, log) == -signal.SIGKILL, log.read_text()
    assert kill_when(a, lambda: n_finished(tmp_path) >= 2 and checkpoints(tmp_path), log) == -signal.SIGKILL, (
        log.read_text()
    )
    done = run_main(sweep_main, *a)
    ok(done)
    got, want = finished(tmp_path), finished(ref_dir)
    assert got == want  # same configurations, same values, bit-identical per-epoch losses
    configs = [(r, t, s) for r, t, s, *_ in got]
    assert len(configs) == len(set(configs)) == 3  # r=1, r=2 on q,v, then q,k,v,o: nothing twice, nothing lost
    assert all(state == "COMPLETE" for *_, state, _, _ in got)
    assert not checkpoints(tmp_path)  # epoch checkpoints are removed once trials complete
    assert done.stdout.splitlines()[-1] == ref_out.splitlines()[-1].replace(str(ref_dir), str(tmp_path))


def test_rerun_of_a_finished_sweep_trains_nothing_and_says_the_same(reference, glue_dir):
    ref_dir, ref_out = reference
    before = finished(ref_dir)
    again = run_main(sweep_main, *args(ref_dir, glue_dir))
    ok(again)
    assert finished(ref_dir) == before
    assert not [line for line in again.stdout.splitlines() if line.startswith("trial ")]
    decisions = [line for line in ref_out.splitlines() if line.startswith("decision ")]
    assert decisions == [line for line in again.stdout.splitlines() if line.startswith("decision ")]
    assert again.stdout.splitlines()[-1] == ref_out.splitlines()[-1]
    for name in ("trials.csv", "summary.csv", "report.md", "plots/progression.png"):
        assert (ref_dir / "mrpc" / "default" / name).is_file()


def test_another_sweep_reuses_finished_trials_and_names_their_source(reference, glue_dir):
    ref_dir, _ = reference
    proc = run_main(sweep_main, *args(ref_dir, glue_dir, "sweep.name=again"))
    ok(proc)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and all(" (reused from " in line for line in lines)
    for t in trials_of(ref_dir, "again"):
        source = Path(t.user_attrs["reused_from"])
        assert source.parent.parent.name == "default" and source.name == Path(t.user_attrs["run_dir"]).name
        assert t.value == json.loads((source / "metrics.json").read_text())["objective_value"]
    assert finished(ref_dir, "again") == finished(ref_dir)
    assert [line for line in proc.stdout.splitlines() if line.startswith("recommendation:")]


def test_grid_interrupted_mid_trial_trains_only_what_is_missing(reference, glue_dir, tmp_path):
    """The one real SIGKILL of the default suite: the second trial dies after its first epoch."""
    a = args(tmp_path, glue_dir, "sweep=grid", "sweep.name=default", "sweep.ranks=[1]")
    log = tmp_path / "killed.log"
    assert kill_when(a, lambda: n_finished(tmp_path) >= 1 and checkpoints(tmp_path), log) == -signal.SIGKILL, (
        log.read_text()
    )
    assert sum(t.state.name == "COMPLETE" for t in trials_of(tmp_path)) == 1
    done = run_main(sweep_main, *a)
    ok(done)
    assert "resuming trial 1" in done.stdout
    got = finished(tmp_path)
    configs = [(r, t, s) for r, t, s, *_ in got]
    assert sorted(configs) == [(1, "q,k,v,o", 0), (1, "q,v", 0)]  # the grid: 1 rank × 2 target sets
    assert all(state == "COMPLETE" for *_, state, _, _ in got) and not checkpoints(tmp_path)
    # a trial's result depends only on its configuration: the uninterrupted progressive sweep trained
    # r=1 on q,v too, with the same per-epoch losses and metrics, and so must the killed-and-resumed one
    # have trained whatever the reference also trained
    want = {(r, t, s): rest for r, t, s, *rest in finished(reference[0])}
    shared = [x for x in got if (x[0], x[1], x[2]) in want]
    assert shared and all(list(x[3:]) == want[x[:3]] for x in shared)
    again = run_main(sweep_main, *a)
    ok(again)
    assert not [line for line in again.stdout.splitlines() if line.startswith("trial ")]
    assert len(trials_of(tmp_path)) == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            "train.epochs=3",
            "ranksweep: error: sweep 'default' for mrpc was run with train.epochs=2, this run has "
            "train.epochs=3: its finished trials would not be comparable; re-run with the original "
            "settings to resume, or start another sweep with sweep.name=<new name>",
        ),
        (
            "sweep.target_sets=[[q,zz]]",
            "ranksweep: error: sweep.target_sets holds [q,zz]: lora target 'zz' matches no linear module of model "
            "'minilm'",
        ),
    ],
)
def test_refused_resume_changes_nothing(reference, glue_dir, bad, message):
    ref_dir, _ = reference
    folder = ref_dir / "mrpc" / "default"
    before = {name: (folder / name).read_bytes() for name in ("study.db", "config.yaml", "report.md")}
    proc = run_main(sweep_main, *args(ref_dir, glue_dir, bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert {name: (folder / name).read_bytes() for name in before} == before


@pytest.mark.slow  # a real sweep; the cap itself is in tests/test_decide.py
def test_trial_budget_stops_cleanly(glue_dir, tmp_path):
    proc = run_main(sweep_main, *args(tmp_path, glue_dir, "sweep.max_trials=1"))
    ok(proc)
    assert len(trials_of(tmp_path)) == 1
    assert (
        "decision [final] budget: compute cap reached (trials: 1 ≥ sweep.max_trials=1); stopping cleanly" in proc.stdout
    )
    assert "recommendation: r=" in proc.stdout.splitlines()[-1]
    assert "(budget; provisional: the compute cap cut the procedure short" in proc.stdout.splitlines()[-1]
    assert "reliability: no seed-noise estimate" in proc.stdout  # one seed: no σ
    (t,) = trials_of(tmp_path)
    majority = t.user_attrs["majority_baseline"]["accuracy"]
    assert proc.stdout.splitlines()[-2] == (
        f"Against the baseline (always predicting the majority class, {100 * majority:.2f}): "
        f"{100 * (t.value - majority):+.2f} points on 1 seed(s), too few for an interval: not shown to beat it."
    )


@pytest.mark.slow  # a real sweep of diverging trials; divergence of one trial is in tests/test_trial.py
def test_a_sweep_in_which_every_trial_diverged_exits_non_zero(glue_dir, tmp_path):
    # lr 1e30: the loss is NaN within the first epoch of r=1 and of r=2, as `make trial` would report it
    ran = run_main(
        sweep_main,
        "debug=tiny",
        "train.threads=1",
        "train.lr=1e30",
        "sweep.ranks=[1,2]",
        "sweep.target_sets=[[q,v]]",
        f"data.dir={glue_dir}",
        f"results_dir={tmp_path}",
    )
    assert ran.returncode == 1, ran
    assert ran.stdout.splitlines()[-1] == (
        f"no recommendation: no trial succeeded (no successful trial); results in {tmp_path}/mrpc/default"
    )
    assert [t.user_attrs["status"] for t in trials_of(tmp_path)] == ["diverged", "diverged"]


@pytest.mark.slow  # a real STS-B sweep; the default suite minimises in tests/test_causal_lm.py and the mirrored decision table
def test_a_sweep_minimising_stsb_mse_picks_the_lowest_and_reports_real_values(glue_dir, tmp_path):
    """STS-B with ``task.objective=mse`` (minimised, squared label units), ``debug=tiny``: r=1 and r=2 on q,v,
    one seed each, no wider set. Without a noise estimate nothing is significant, so the recommendation is the
    best configuration: the lower MSE. Each value is recomputed here from the saved predictions and the TSV."""
    import csv

    import numpy as np
    import pandas as pd

    objective = ["task=stsb", "task.metrics=[pearson,spearman,mse]", "task.objective=mse"]
    shape = ["debug=tiny", "sweep.ranks=[1,2]", "sweep.patience=2", "sweep.target_sets=[[q,v]]"]
    ran = run_main(sweep_main, *shape, *objective, f"data.dir={glue_dir}", f"results_dir={tmp_path}")
    assert ran.returncode == 0, ran
    read = dict(sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
    labels = pd.read_csv(glue_dir / "STS-B" / "dev.tsv", **read)["score"].to_numpy(float)[:32]
    train_mean = pd.read_csv(glue_dir / "STS-B" / "train.tsv", **read)["score"].to_numpy(float).mean()
    folder = tmp_path / "stsb" / "default"
    by_config = {}
    for run_dir in sorted((folder / "trials").iterdir()):
        m = json.loads((run_dir / "metrics.json").read_text())
        preds = np.load(run_dir / "val_predictions.npy")
        assert m["objective"] == "mse" and m["objective_value"] == pytest.approx(np.mean((preds - labels) ** 2))
        assert m["majority_baseline"]["mse"] == pytest.approx(np.mean((train_mean - labels) ** 2))
        by_config[(m["r"], ",".join(m["targets"]))] = (m["objective_value"], m["trainable_params"])
    assert set(by_config) == {(1, "q,v"), (2, "q,v")}
    best = min(by_config, key=lambda c: (by_config[c][0], by_config[c][1]))  # lowest MSE, fewer parameters on a tie
    assert f"recommendation: r={best[0]} on {best[1]}" in ran.stdout
    summary = pd.read_csv(folder / "summary.csv")
    for row in summary.itertuples():
        assert row.objective_mean == pytest.approx(by_config[(row.r, row.targets)][0])  # the MSE itself, not −MSE
        assert row.recommended == ((row.r, row.targets) == best)
    report = (folder / "report.md").read_text()
    assert (
        "validation MSE, minimised (lower is better); values below and in the plots are squared label units" in report
    )
    mse = by_config[best][0]
    assert f"**r={best[0]} on {best[1]}**: MSE {mse:.3f} squared label units (n=1)" in report
    baseline = np.mean((train_mean - labels) ** 2)
    better = baseline - mse  # the improvement on the training mean: lower is better
    assert (
        f"Against the baseline (always predicting the training mean, {baseline:.3f}): {better:+.3f} squared label "
        "units better on 1 seed(s), too few for an interval: not shown to beat it." in report
    )
    assert "sweep.tolerance = 0.04 squared label units of the best one tried" in report


def test_a_screened_sweep_runs_nested_trials_and_decides_on_independent_ones(glue_dir, tmp_path):
    """sweep.screen: the nested trials run first, keyed apart from the independent trial of the same r and seed,
    their rank curves reach the decisions (the screen's sentence quotes metrics.json's values), and no summary
    row counts them."""
    import pandas as pd

    proc = run_main(
        sweep_main,
        *args(
            tmp_path,
            glue_dir,
            "sweep.screen=true",
            "sweep.target_sets=[[q,v]]",
            "train.epochs=1",
            "sweep.estimate=true",
        ),
    )
    # debug=tiny turns the estimate off; sweep.estimate=true brings it back, before the first trial
    assert proc.stdout.index("expected cost: trials: mean") < proc.stdout.index("trial 0 r=2 q,v nested (screen)")
    ok(proc)
    nested = [t for t in trials_of(tmp_path) if t.user_attrs["spec"].get("nested")]
    assert [(t.params["r"], t.params["seed"], t.user_attrs["stage"]) for t in nested] == [
        (2, 0, "screen"),
        (2, 1, "screen"),
    ]
    curves = []
    for t in nested:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.name == f"r2-q-v-nested-seed{t.params['seed']}"
        curves.append(
            {c["r"]: c["objective_value"] for c in json.loads((run_dir / "metrics.json").read_text())["rank_curve"]}
        )
    screened = {r: 100 * (curves[0][r] + curves[1][r]) / 2 for r in (1, 2)}  # the screened curve, by hand
    assert f"r=1 {screened[1]:.2f}, r=2 {screened[2]:.2f}" in proc.stdout
    report = (tmp_path / "mrpc" / "default" / "report.md").read_text()
    assert (
        "## Screen: nested-rank trials" in report
        and f"| 2 | {100 * curves[0][2]:.2f} | {100 * curves[1][2]:.2f} | {screened[2]:.2f} |" in report
    )
    independent = [t for t in trials_of(tmp_path) if not t.user_attrs["spec"].get("nested")]
    assert independent and all(t.user_attrs["stage"] != "screen" for t in independent)
    summary = pd.read_csv(tmp_path / "mrpc" / "default" / "summary.csv")
    counted = {(r, s) for r, s in zip(summary["r"], summary["n_seeds"])}
    by_hand = pd.Series([t.params["r"] for t in independent if t.state.name == "COMPLETE"]).value_counts()
    assert counted == {(r, n) for r, n in by_hand.items()}


def test_a_sweep_with_a_bracket_of_rates_races_them_and_reports_the_rate(glue_dir, tmp_path):
    """sweep.lrs=[5e-3,1e-3] on one seed (no noise estimate: nothing is significant): by hand, r=1 at 5e-3 (the
    incumbent) and at 1e-3 (no gain: 5e-3 stays), r=2 at 5e-3 (no gain: the ranks run out), the re-check at the
    pick r=1 needs no new trial and confirms 5e-3; three trials, the one at 1e-3 in its own folder, trained at
    its rate; summary.csv holds the configurations at 5e-3 only, the report's rate table both rates."""
    import pandas as pd

    proc = run_main(
        sweep_main, *args(tmp_path, glue_dir, "sweep.lrs=[5e-3,1e-3]", "sweep.target_sets=[[q,v]]", "train.epochs=1")
    )
    ok(proc)
    got = [(t.params["r"], t.user_attrs["spec"]["lr"], Path(t.user_attrs["run_dir"]).name) for t in trials_of(tmp_path)]
    assert got == [(1, 5e-3, "r1-q-v-seed0"), (1, 1e-3, "r1-q-v-seed0-lr0.001"), (2, 5e-3, "r2-q-v-seed0")]
    values = {}
    for t in trials_of(tmp_path):
        record = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert record["lr"] == t.user_attrs["spec"]["lr"] == json.loads(json.dumps(t.user_attrs["lr"]))
        values[(t.params["r"], record["lr"])] = 100 * record["objective_value"]
    assert proc.stdout.splitlines()[-1].startswith("recommendation: r=1 on q,v at lr=0.005 (")
    summary = pd.read_csv(tmp_path / "mrpc" / "default" / "summary.csv")
    assert list(zip(summary["r"], summary["n_seeds"])) == [(1, 1), (2, 1)]
    assert summary["objective_mean"].round(6).tolist() == [
        round(values[(1, 5e-3)] / 100, 6),
        round(values[(2, 5e-3)] / 100, 6),
    ]
    report = (tmp_path / "mrpc" / "default" / "report.md").read_text()
    assert "- **Learning rate**: 0.005, chosen by the learning-rate stage from sweep.lrs = [0.005, 0.001]" in report
    assert (
        "- Re-check: re-checked at the pick r=1 on q,v: no rate of sweep.lrs=\\[0.005, 0.001\\] is significantly better"
        in report
    )
    # the trial at 1e-3 predicts one class for all 48 pairs (collapsed): left out of its rate's mean
    low = next(t for t in trials_of(tmp_path) if t.user_attrs["spec"]["lr"] == 1e-3)
    if json.loads((Path(low.user_attrs["run_dir"]) / "metrics.json").read_text())["collapsed"]:
        assert "| r=1 on q,v | 0.001 | 0 (+1 collapsed) | — (collapsed) |" in report
    else:
        assert f"| r=1 on q,v | 0.001 | 1 | {values[(1, 1e-3)]:.2f} |" in report
    assert f"| r=1 on q,v | 0.005 | 1 | {values[(1, 5e-3)]:.2f} |" in report


def test_a_budget_sweep_reports_the_sets_at_their_ranks_as_their_trials_recorded(glue_dir, tmp_path):
    """sweep=budget on MiniLM (6 layers, d_model 384, d_ff 1536: q,v cost 6·2·(384+384) = 9,216 LoRA parameters a
    rank, q,k,v 13,824, q,k,v,o 18,432) at the budget of r=2 on q,v, 18,432: q,k,v gets r=1 (13,824: 1.33 ranks
    round down), q,k,v,o r=1 (18,432); one trial each, whose records the report's table must show (the MLP sets
    collapse in 4 steps: the attention sets do not). train.lr=1e-2: at the default rate debug=tiny's 4 steps leave
    every trial collapsed (tests/test_collapse.py), and the random tiny BERT collapses at any rate."""
    proc = run_main(
        sweep_main,
        "debug=tiny",
        "sweep=budget",
        "train.lr=1e-2",
        f"data.dir={glue_dir}",
        f"results_dir={tmp_path}",
        "sweep.budgets=[{r:2,targets:[q,v]}]",
        "sweep.target_sets=[[q,k,v,o],[q,k,v]]",
    )
    ok(proc)
    # the at-budget decision, cheapest per rank first after the start targets
    assert "q,v r=2 (18,432, 1.00×) | q,k,v r=1 (13,824, 0.75×) | q,k,v,o r=1 (18,432, 1.00×)" in proc.stdout
    trials = trials_of(tmp_path, "budget")
    assert sorted((t.params["r"], t.user_attrs["targets_key"], t.user_attrs["stage"]) for t in trials) == [
        (1, "q,k,v", "equal-budget"),
        (1, "q,k,v,o", "equal-budget"),
        (2, "q,v", "equal-budget"),
    ]
    records = {
        t.user_attrs["targets_key"]: json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        for t in trials
    }
    assert {t: m["lora_params"] for t, m in records.items()} == {"q,v": 18432, "q,k,v,o": 18432, "q,k,v": 13824}
    assert not any(m["collapsed"] for m in records.values())
    start = records["q,v"]["objective_value"]
    report = (tmp_path / "mrpc" / "budget" / "report.md").read_text()
    assert "## Target sets at an equal budget (LoRA Table 5)" in report
    for targets, m in records.items():
        gain = "—" if targets == "q,v" else f"{100 * m['objective_value'] - 100 * start:+.2f}"
        race = "—" if targets == "q,v" else "no-gain"  # one seed: no noise estimate, nothing is significant
        row = (
            f"| 18,432 (r=2 on q,v) | {targets} | {m['r']} | {m['lora_params']:,} ({m['lora_params'] / 18432:.2f}×) "
            f"| {m['trainable_params']:,} | {100 * m['objective_value']:.2f} (n=1) | — | {gain} | {race} |"
        )
        assert row in report, row
    assert "At 18,432 LoRA parameters (r=2 on q,v): " in report


@pytest.mark.slow  # a real trial that collapses; the default suite drives the sweep with collapsed stand-ins (test_collapse.py)
def test_a_sweep_in_which_every_trial_collapsed_stops_after_the_start_seeds(glue_dir, tmp_path):
    # train.lr=1: the tiny model predicts one class for every validation pair after its epoch (a collapse, as
    # MRPC at 8e-3 in issue #22); one seed: the start configuration's seeds are that one trial
    import numpy as np

    ran = run_main(
        sweep_main,
        "debug=tiny",
        "train.threads=1",
        "train.lr=1.0",
        "sweep.ranks=[1,2]",
        "sweep.target_sets=[[q,v]]",
        "sweep.max_seeds=2",
        f"data.dir={glue_dir}",
        f"results_dir={tmp_path}",
    )
    (t,) = trials_of(tmp_path)  # no replacement seed, no second rank
    run_dir = Path(t.user_attrs["run_dir"])
    preds = np.load(run_dir / "val_predictions.npy")
    assert len(set(preds.tolist())) == 1  # one class for all 32 validation pairs: collapsed, by hand
    assert json.loads((run_dir / "metrics.json").read_text())["collapsed"] is True
    assert t.user_attrs["collapsed"] is True and t.state.name == "COMPLETE"
    value, majority = 100 * t.value, 100 * t.user_attrs["majority_baseline"]["accuracy"]
    kind = "what the majority class scores" if value == majority else f"the majority class scores {majority:.2f}"
    assert ran.returncode == 1, ran  # no recommendation
    assert ran.stdout.splitlines()[-1] == (
        f"no recommendation: every trial so far (1) collapsed to a constant prediction (accuracy {value:.2f} points"
        f"{', ' if value == majority else '; '}{kind}): nothing trains at this recipe, so no configuration can be "
        "compared or recommended; stopping: try another train.lr (sweep.lrs races a bracket of them) or other "
        f"train.* settings under a new sweep.name (this sweep: train.lr=1); results in {tmp_path}/mrpc/default"
    )
    summary = (tmp_path / "mrpc" / "default" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("r,targets,n_seeds,n_failed,n_collapsed,collapse_rate,")
    assert summary[1].startswith('1,"q,v",0,0,1,1.0,')

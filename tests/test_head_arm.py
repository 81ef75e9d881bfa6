"""Head only as rank 0 of the progressive sweep (``sweep.ranks=[0,1,2,…]``): "is any adapter needed?". A real
tiny sweep trains head-only trials at head only's rate, stores rank 0, reports it and reuses it; every place rank 0
has no meaning refuses it in one line; records of `make compare`'s head trials (``r: null``) keep tabulating."""

import json
from pathlib import Path

import optuna
import pytest
from conftest import run_main
from omegaconf import OmegaConf

from analysis.methods import methods_frame, trial_frame
from sweep import driver
from sweep.__main__ import main as sweep_main
from sweep.cli import compose
from sweep.decision import TrialSpec
from sweep.errors import UserError
from sweep.record import TrialResult
from sweep.study import outcomes, storage_url, study_name, trial_rank

PROJECT = Path(__file__).resolve().parents[1]


def _head_rate() -> float:
    """head.yaml's own rate, read from the file itself."""
    return float(OmegaConf.load(PROJECT / "conf" / "method" / "head.yaml").train.lr)


def test_a_tiny_sweep_from_rank_0_trains_head_only_reports_and_reuses_it(tiny):
    args = [*tiny, "sweep.ranks=[0,1,2]", "sweep.target_sets=[[q,v]]", "train.threads=1"]
    first = run_main(sweep_main, *args)
    assert first.returncode == 0, first
    cfg, _ = compose(args)
    study = optuna.load_study(study_name=study_name(cfg), storage=storage_url(cfg))
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    head = trials[0]
    assert head.user_attrs["spec"]["r"] == 0 and "r" not in head.params and trial_rank(head) == 0
    # log-scaled r beside head only's none, one study; debug=tiny's r=1 collapses (as every adapter at its rate),
    # so the climb stops there as it would without head only, and head only, the one value, is recommended
    assert [trial_rank(t) for t in trials[1:]] == [1]
    assert (
        first.stdout.strip()
        .splitlines()[-1]
        .startswith("recommendation: head only (r=0): no adapter (every adapter trial collapsed); results in ")
    )
    assert head.user_attrs["lr"] == _head_rate() != cfg.train.lr
    run_dir = Path(head.user_attrs["run_dir"])
    assert run_dir == Path(cfg.results_dir) / "mrpc" / "default" / "trials" / "head-seed0"
    record = json.loads((run_dir / "metrics.json").read_text())
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert (record["method"], record["lr"], saved.method.name, saved.train.lr) == (
        "head",
        _head_rate(),
        "head",
        _head_rate(),
    )
    # MiniLM (BERT) head: the pooler's dense h×h + h and the classifier's h×labels + labels, from the model's shapes
    from sweep.modeling import load_base_model

    config = load_base_model(cfg.model, ["0", "1"]).config
    h, labels = config.hidden_size, config.num_labels
    assert (record["lora_params"], record["trainable_params"]) == (0, h * h + h + h * labels + labels)
    assert outcomes(study)[0].r == 0 and outcomes(study)[0].targets == "q,v"
    report = (run_dir.parents[1] / "report.md").read_text()
    assert "| head only (r=0) | — |" in report
    summary = (run_dir.parents[1] / "summary.csv").read_text().splitlines()
    assert summary[1].startswith('0,"q,v",1,')  # the first configuration, one seed counted
    again = run_main(sweep_main, *args)
    assert again.returncode == 0, again
    assert "\ntrial " not in again.stdout and "trial 0" not in again.stdout  # every trial read back, none trained
    assert "every adapter trial so far (1) collapsed" in again.stdout
    assert "finished (every adapter trial collapsed; head only (r=0) did not)" in report
    # nothing to export: one line that says why, not a missing adapter file
    from analysis.export import main as export_main

    with pytest.raises(UserError, match=r"recommends head only \(r=0\): no adapter is needed, so there is none"):
        export_main(args)
    assert len(optuna.load_study(study_name=study_name(cfg), storage=storage_url(cfg)).get_trials()) == len(trials)


REFUSALS = [
    ("sweep.ranks=[1,0,2]", "0 (head only) may come once, first"),
    ("sweep.ranks=[0]", "holds no adapter rank"),
    ("sweep.ranks=[0,0,1]", "0 (head only) may come once, first"),
    ("sweep.ranks=[0,1,2] sweep=grid", "with sweep.mode=grid"),
    ("sweep.ranks=[0,1,2] sweep.screen=true", "with sweep.screen=true"),
    ("sweep.ranks=[0,1,2] sweep.lrs=[2e-3,1e-3]", "head only trains at its own rate"),
    ("sweep.ranks=[0,1,2] task=sft model=smollm2-135m-instruct", "a causal LM has none"),
    ("sweep.ranks=[0,1,2] method=vera", "method=vera has none"),
]


@pytest.mark.parametrize("given, says", REFUSALS)
def test_rank_0_is_refused_where_it_has_no_place(tiny, given, says):
    with pytest.raises(UserError) as e:
        compose([*tiny, *given.split()])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_the_command_line_refuses_rank_0_with_a_screen_in_one_line(tiny):
    ran = run_main(sweep_main, *tiny, "sweep.ranks=[0,1,2]", "sweep.screen=true")
    assert ran.returncode != 0
    assert len(ran.stderr.strip().splitlines()) == 1 and "sweep.screen=true" in ran.stderr


def test_a_study_holds_head_only_beside_ranked_trials(tiny):
    cfg, resolved = compose([*tiny, "sweep.ranks=[0,1,2]"])
    from sweep.study import open_study

    study = open_study(cfg, resolved)
    for r in (0, 1, 0, 2):  # either order, twice
        trial = study.ask()
        driver._start(trial, TrialSpec(r=r, targets="q,v", seed=0, stage="rank"), ["q", "v"], cfg)
        study.tell(trial, 0.5)
    reread = optuna.load_study(study_name=study.study_name, storage=storage_url(cfg)).get_trials()
    assert [trial_rank(t) for t in reread] == [0, 1, 0, 2]
    assert driver.run_dir_of(cfg, TrialSpec(r=0, targets="q,v", seed=3, stage="rank")).name == "head-seed3"


def test_compare_head_records_without_a_rank_still_tabulate(tmp_path):
    base = {"task": "mrpc", "objective": "accuracy", "n_eval": 408, "status": "ok", "trainable_params": 148610}
    for seed, value in ((0, 0.70), (1, 0.68)):
        folder = tmp_path / "trials" / f"head-seed{seed}-lr0.01"
        folder.mkdir(parents=True)
        record = {**base, "method": "head", "r": None, "seed": seed, "lr": 0.01, "objective_value": value}
        (folder / "metrics.json").write_text(json.dumps(record))
    trials = trial_frame(tmp_path)
    assert trials["r"].isna().all() and list(trials["method"]) == ["head", "head"]
    table = methods_frame(trials, {"head": 0.01})
    assert len(table) == 1 and table["objective_mean"].iloc[0] == pytest.approx(0.69)
    assert TrialResult(**{**base, "method": "head", "seed": 0, "objective_value": 0.7}).outcome().r == 0


def test_the_last_line_names_head_only_as_no_adapter(tmp_path):
    from sweep.decide import Plan
    from sweep.decision import StopReason

    line = driver.recommendation_line(Plan(None, [], (0, "q,v"), StopReason.PLATEAU), tmp_path)
    assert line == f"recommendation: head only (r=0): no adapter (plateau); results in {tmp_path}"

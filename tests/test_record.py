"""sweep/record.py and the store (sweep/study.py): one record, written to metrics.json, the study and
trials.csv by its own field declarations, and read back from files and studies of earlier versions.

These tests walk every field of ``TrialResult``, so a field added to the record reaches the study, the
CSV and these checks without another edit."""

import json
from dataclasses import fields
from pathlib import Path

import optuna
import pytest
from fakes import NAME, make_study, small_settings, trial
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

import sweep.record as record_module
from analysis import trials_frame
from sweep.decide import Outcome, Status
from sweep.record import TrialResult, read_result, record_fields, write_result
from sweep.study import load_study, result_attrs, result_of

FIXTURE = Path(__file__).parent / "data" / "study-0.1.0"


def _sample(name: str, hint: str):
    """A value of the field ``name`` unlike its default, of its declared type."""
    if name == "status":
        return Status.DIVERGED
    if "Dict" in hint:
        return {f"{name}-key": 0.5}
    if "List" in hint:
        return [f"{name}-item"]
    if "int" in hint:
        return 7 + len(name)
    if "float" in hint:
        return 0.25 + len(name)
    return f"{name}-text"


def full_record() -> TrialResult:
    """A record whose every field holds a value other than its default."""
    values = {f.name: _sample(f.name, str(f.type)) for f in fields(TrialResult)}
    return TrialResult(**{**values, "r": 4, "seed": 2, "targets": ["q", "v"], "status": Status.OK})


def test_every_field_has_a_default_and_a_comment_in_the_source():
    """A file written before a field existed reads it as its default; each field is documented once,
    by the ``#:`` comment above it."""
    assert TrialResult() == TrialResult.from_dict({})
    lines = Path(record_module.__file__).read_text().splitlines()
    for f in fields(TrialResult):
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"    {f.name}: ")]
        assert lines[at - 1].lstrip().startswith("#:"), f"{f.name} has no #: comment"


def test_metrics_json_round_trip_keeps_every_field(tmp_path):
    record = full_record()
    write_result(tmp_path / "metrics.json", record)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert list(on_disk) == [f.name for f in fields(TrialResult)] and on_disk["status"] == "ok"
    assert read_result(tmp_path / "metrics.json") == record


def test_reader_tolerates_old_and_future_files():
    """A metrics.json of release 0.1.0 (tests/data) reads as written; an unknown key is ignored; a key
    it lacks takes its default; a status outside ok/diverged/failed is refused."""
    old = json.loads((FIXTURE / "trials" / "r1-q-v-seed0" / "metrics.json").read_text())
    record = TrialResult.from_dict({**old, "from_the_future": 1})
    assert (record.r, record.targets, record.seed, record.status) == (1, ["q", "v"], 0, Status.OK)
    assert record.objective_value == old["objective_value"] and record.train_flops == old["train_flops"]
    assert TrialResult.from_dict({k: v for k, v in old.items() if k != "peak_mem_mb"}).peak_mem_mb is None
    with pytest.raises(ValueError, match="'crashed' is not a valid Status"):
        TrialResult.from_dict({"status": "crashed"})


def test_the_study_holds_the_fields_marked_study_and_reads_them_back():
    record = full_record()
    attrs = result_attrs(record)
    assert list(attrs) == record_fields("study")  # every study field holds a value here, so all are stored
    frozen = create_trial(
        params={"r": 4, "seed": 2},
        distributions={"r": IntDistribution(4, 4, log=True), "seed": IntDistribution(2, 2)},
        value=record.objective_value,
        user_attrs={"targets": ["q", "v"], "targets_key": "q,v", "stage": "rank", **attrs},
    )
    back = result_of(frozen)
    assert {k: getattr(back, k) for k in record_fields("study")} == {k: getattr(record, k) for k in attrs}
    assert (back.r, back.targets, back.seed) == (4, ["q", "v"], 2)
    # what the study does not hold reads as the default
    assert back.epochs == [] and back.versions == {} and back.device is None


def test_empty_values_are_not_stored():
    """A crashed trial stores its status and reason only: no null or empty attributes."""
    crashed = TrialResult(r=1, targets=["q"], seed=0, status=Status.FAILED, reason="OSError: disk full")
    assert result_attrs(crashed) == {"status": "failed", "reason": "OSError: disk full"}


@pytest.mark.parametrize(
    "record, expected",
    [
        # value of an ok trial; seconds = train + eval (10 + 1.5)
        (
            TrialResult(
                r=8,
                targets=["q", "v"],
                seed=1,
                objective_value=0.8,
                trainable_params=9,
                train_flops=2e9,
                train_seconds=10.0,
                eval_seconds=1.5,
            ),
            Outcome(8, "q,v", 1, Status.OK, 0.8, 9, 2e9, 11.5),
        ),
        # the validation set's size gives the resolution of the metric: one example of 408 is 100/408 points
        (
            TrialResult(r=8, targets=["q", "v"], seed=1, objective_value=0.8, n_eval=408),
            Outcome(8, "q,v", 1, Status.OK, 0.8, 0, 0.0, 0.0, 100 / 408),
        ),
        # a diverged trial is a measurement without a value, whatever objective it stored
        (
            TrialResult(r=2, targets=["all-linear"], seed=0, status=Status.DIVERGED, objective_value=0.5),
            Outcome(2, "all-linear", 0, Status.DIVERGED, None, 0, 0.0, 0.0),
        ),
        # a crash
        (
            TrialResult(r=1, targets=["q", "k", "v", "o"], seed=3, status=Status.FAILED, reason="x"),
            Outcome(1, "q,k,v,o", 3, Status.FAILED, None, 0, 0.0, 0.0),
        ),
        # a collapsed trial keeps its value (the decisions leave it out) and quotes its task's constant baseline
        (
            TrialResult(
                r=1,
                targets=["q", "v"],
                seed=0,
                objective="accuracy",
                objective_value=0.6838,
                majority_baseline={"accuracy": 0.6838, "f1": 0.8122},
                collapsed=True,
            ),
            Outcome(1, "q,v", 0, Status.OK, 0.6838, objective="accuracy", collapsed=True, baseline=0.6838),
        ),
        # only an ok trial counts as collapsed; a record made before the flag reads as not collapsed
        (
            TrialResult(r=1, targets=["q", "v"], seed=0, status=Status.DIVERGED, collapsed=True),
            Outcome(1, "q,v", 0, Status.DIVERGED, None),
        ),
    ],
)
def test_outcome_is_what_the_decisions_see(record, expected):
    assert record.outcome() == expected


def test_the_csv_and_study_fields():
    """What trials.csv shows after the configuration columns (a field marked csv is one more column)."""
    assert record_fields("csv") == [
        "method",
        "nested",
        "lora_alpha",
        "scaling",
        "lora_init",
        "lr",
        "lora_params",
        "head_params",
        "trainable_params",
        "total_params",
        "trainable_pct",
        "train_flops",
        "eval_flops",
        "train_seconds",
        "eval_seconds",
        "peak_mem_mb",
        "best_epoch",
        "train_tokens_per_s",
        "collapsed",
    ]
    assert set(record_fields("csv")) - {"best_epoch"} < set(record_fields("study"))
    assert {"status", "reason", "reused_from", "objective_value", "best", "majority_baseline"} < set(
        record_fields("study")
    )


def test_tokens_per_second_is_derived_when_absent():
    """1,000 tokens in 4 s: 250 tokens/s; a stored value wins; no tokens or no time: none."""
    assert TrialResult(train_tokens=1_000, train_seconds=4.0).train_tokens_per_s == 250.0
    assert TrialResult(train_tokens=1_000, train_seconds=4.0, train_tokens_per_s=7.0).train_tokens_per_s == 7.0
    assert TrialResult(train_tokens=1_000).train_tokens_per_s is None
    old = json.loads((FIXTURE / "trials" / "r1-q-v-seed0" / "metrics.json").read_text())
    assert "train_tokens_per_s" not in old  # release 0.1.0 did not write it
    assert TrialResult.from_dict(old).train_tokens_per_s == old["train_tokens"] / old["train_seconds"]


def test_trials_csv_has_every_csv_field_in_order(tmp_path):
    runs = [trial(1, "q,v", 0, 0.80, "rank"), trial(1, "q,v", 1, 0.82, "rank")]
    url = make_study(tmp_path, small_settings(), runs, sweep_ended=False)
    frame = trials_frame(load_study(url, NAME))
    columns = list(frame.columns)
    assert columns[columns.index("seed") + 1 : columns.index("seed") + 1 + len(record_fields("csv"))] == record_fields(
        "csv"
    )
    # by hand from fakes.trial: 1·2,000 LoRA parameters + 10,000 head; 11 s of training and evaluation
    assert list(frame["trainable_params"]) == [12_000, 12_000]
    assert list(frame["train_seconds"] + frame["eval_seconds"]) == [11.0, 11.0]


def test_study_of_release_0_1_0_reads_as_records(tmp_path):
    """The study in tests/data (written by release 0.1.0: a tiny sweep, r=1 and r=2 on q,v, then r=1 on
    q,k,v,o) reads back through the store with the numbers its metrics.json files hold."""
    import gzip

    db = tmp_path / "study.db"
    db.write_bytes(gzip.decompress((FIXTURE / "study.db.gz").read_bytes()))
    study = optuna.load_study(study_name="ranksweep-mrpc-before", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        record = result_of(t)
        on_disk = read_result(FIXTURE / "trials" / Path(t.user_attrs["run_dir"]).name / "metrics.json")
        for name in record_fields("study"):
            assert getattr(record, name) == getattr(on_disk, name), name
        assert record.outcome() == on_disk.outcome()

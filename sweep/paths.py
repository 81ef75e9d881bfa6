"""Where things live on disk: the project's ``conf/``, the results folder and a sweep's folder in it,
and the local GLUE directory."""

from __future__ import annotations

import os
from pathlib import Path

from sweep.config import Config
from sweep.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


def results_root(cfg: Config) -> Path:
    """Absolute results folder: ``results_dir`` or ``<project>/results``.

    Raises:
        UserError: the folder (or its nearest existing parent) is a file or not writable.
    """
    root = Path(cfg.results_dir).expanduser().resolve() if cfg.results_dir else PROJECT_ROOT / "results"
    check_writable(root, "results_dir")
    return root


def sweep_dir(cfg: Config) -> Path:
    """``results/<task>/<sweep.name>/`` (absolute): the sweep's study, reports and trial folders.

    Raises:
        UserError: as ``results_root``.
    """
    return results_root(cfg) / cfg.task.name / cfg.sweep.name


def check_writable(folder: Path, key: str) -> None:
    """Check that ``folder`` is, or can be made as, a writable directory: its nearest existing ancestor
    must be a writable directory.

    Raises:
        UserError: names ``key``, the folder and the ancestor that is a file or not writable.
    """
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a directory" if not existing.is_dir() else "is not writable"
        raise UserError(f"{key} {folder}: {existing} {what}; give a writable folder")


def glue_dir(cfg: Config) -> str | None:
    """The local GLUE directory from ``data.dir`` or ``$GLUE_DIR``; None means the hub."""
    return cfg.data.dir or os.environ.get("GLUE_DIR") or None

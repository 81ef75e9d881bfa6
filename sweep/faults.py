"""Faults of the operating system (no permission, a read-only file system, a full disk or quota) as one
line naming the path and the cause, and files written so that such a fault leaves the previous file as
it was.

Every command reports these faults through ``sweep.cli.run_cli`` (``fault_line``); the code that knows
what it was doing with a path says so with ``at(path, verb)``; SQLite's own words for the same faults
(``database or disk is full``, ``disk I/O error``…) are recognised inside SQLAlchemy's and Optuna's
exceptions, and the study's database is named by a SQLAlchemy ``handle_error`` hook (``watch_databases``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional

_ACCESS = "give the user running ranksweep access to it, or use another folder"
_SPACE = "free space on that disk (or use results_dir=… elsewhere), then re-run the same command"
#: errno -> (the verb when the code did not say, the cause in words, what to do)
CAUSES = {
    errno.EACCES: ("access", "permission denied", _ACCESS),
    errno.EPERM: ("access", "operation not permitted", _ACCESS),
    errno.EROFS: ("write", "read-only file system", "use a folder on a writable file system (results_dir=…)"),
    errno.ENOSPC: ("write", "no space left on device", _SPACE),
    errno.EDQUOT: ("write", "disk quota exceeded", _SPACE),
    errno.EISDIR: ("write", "it is a folder, where a file belongs", "move that folder away, then re-run"),
    errno.ENOTDIR: ("write", "a file stands where a folder belongs", "move that file away, then re-run"),
    errno.EEXIST: ("write", "a file stands where a folder belongs", "move that file away, then re-run"),
}
#: SQLite's message (lower case) -> (verb, cause in words, what to do)
SQLITE_CAUSES = {
    "database or disk is full": ("write", "the disk is full (SQLite: database or disk is full)", _SPACE),
    "disk i/o error": ("write", "disk I/O error (SQLite; usually a full disk)", _SPACE),
    "readonly database": (
        "write",
        "it is read-only (SQLite: attempt to write a readonly database)",
        "give the user running ranksweep write access to it and its folder",
    ),
    "unable to open database file": (
        "open",
        "SQLite: unable to open database file (no permission on it or its folder, or no space for its journal)",
        _ACCESS,
    ),
}


def _blocked_folder(path: Path) -> Optional[Path]:
    """The outermost folder above ``path`` that this process may not enter (None: every one is open), so a
    fault inside a locked folder names the folder, not a file the user cannot see."""
    for folder in reversed(path.parents):
        if folder.is_dir() and not os.access(folder, os.X_OK):
            return folder
    return None


def _os_line(e: OSError) -> str:
    default_verb, cause, hint = CAUSES[e.errno]
    verb = getattr(e, "ranksweep_verb", None) or default_verb
    if not e.filename:
        return f"cannot {verb} a file: {cause}; {hint}"
    path = Path(os.fsdecode(e.filename))
    blocked = _blocked_folder(path) if e.errno in (errno.EACCES, errno.EPERM) else None
    where = f" (on the folder {blocked})" if blocked else ""
    return f"cannot {verb} {path}: {cause}{where}; {hint}"


def fault_line(exc: BaseException) -> Optional[str]:
    """One line for a permission, read-only or disk-full fault found in ``exc`` or its causes
    (``__cause__``: Optuna and SQLAlchemy wrap the OS's and SQLite's errors): ``cannot write
    /r/mrpc/default/report.md: no space left on device; free space …``. None when ``exc`` is another error.
    """
    database = None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
            # copytree's list of (source, destination, why): the first failed copy names the path and cause
            source, destination, why = exc.args[0][0]
            for code, words in ((errno.ENOSPC, "No space left"), (errno.EACCES, "Permission denied")):
                if words in str(why):
                    return _os_line(OSError(code, words, destination))
        database = database or getattr(exc, "ranksweep_database", None)
        if isinstance(exc, OSError) and exc.errno in CAUSES:
            return _os_line(exc)
        text = str(exc).lower()
        for words, (verb, cause, hint) in SQLITE_CAUSES.items():
            if type(exc).__name__ == "OperationalError" and words in text:
                return f"cannot {verb} the study {database or '(its SQLite file)'}: {cause}; {hint}"
        exc = exc.__cause__
    return None


@contextlib.contextmanager
def at(path: Path, verb: str) -> Iterator[None]:
    """Name ``path`` and what was done to it (``read``, ``write``) on an OS fault raised inside (the OS
    names no file when a write to an open file fails, and a temporary file is not the user's)."""
    try:
        yield
    except OSError as e:
        if e.errno in CAUSES:
            e.filename, e.ranksweep_verb = str(path), verb
        raise


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(tmp)`` into a temporary file in its folder, then rename it over
    ``path``: a fault (a full disk) or a kill mid-write leaves the previous ``path`` intact and no
    temporary file behind. Returns ``path``.

    Raises:
        OSError: as ``write`` or the rename, naming ``path`` (``at``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with at(path, "write"):
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    return path


def _note_database(ctx) -> None:
    """SQLAlchemy ``handle_error`` hook: mark the error with the database it happened on (its file for
    SQLite; a server's URL without its password)."""
    url = ctx.engine.url if ctx.engine is not None else None
    if url is not None and ctx.sqlalchemy_exception is not None:
        where = url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)
        ctx.sqlalchemy_exception.ranksweep_database = where


def watch_databases() -> None:
    """Install ``_note_database`` on every SQLAlchemy engine (once per process)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "handle_error", _note_database):
        event.listen(Engine, "handle_error", _note_database)

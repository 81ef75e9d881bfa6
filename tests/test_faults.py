"""Faults of the operating system (issue 19): no permission, a read-only file system, a full disk or
quota end every command in one line naming the path and the cause (exit 1), and leave what was there as
it was. In-process, with the failing call made to raise the OS's (or SQLite's) error; one real case runs
a report as the unprivileged user ``nobody`` on a folder it may not write."""

import contextlib
import errno
import os
import pwd
import sqlite3
from pathlib import Path

import fakes
import pandas as pd
import pytest
from conftest import run_main
from fakes import fake_trial

import analysis.__main__ as report_command
from analysis.report import write_reports
from sweep import data, driver
from sweep import trial as trial_command
from sweep import worker as worker_command
from sweep.__main__ import main as sweep_main
from sweep.faults import atomic_write

SPACE = "free space on that disk (or use results_dir=… elsewhere), then re-run the same command"
ACCESS = "give the user running ranksweep access to it, or use another folder"


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(ran) -> str:
    """The one line a failed command printed on stderr, after checking it is the only one, and no traceback."""
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 1 and len(lines) == 1 and "Traceback" not in ran.stdout + ran.stderr, ran
    return lines[0]


@pytest.fixture
def reported(tmp_path) -> Path:
    """A finished sweep (``fakes.FINISHED``) whose reports are written: its folder."""
    runs = [fakes.trial(r, t, seed, value, stage, flops, s) for r, t, seed, value, stage, flops, s in fakes.FINISHED]
    fakes.make_study(tmp_path, fakes.small_settings(), runs)
    out = tmp_path / "mrpc" / "default"
    write_reports(f"sqlite:///{out / 'study.db'}", fakes.NAME, out)
    return out


def raising(error: int, filename=None):
    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error), *([filename] if filename else []))

    return fail


# (what fails, the error it raises, the file named, the cause in the line, the hint): a write() on an
# open file names no file (the OS does not know it); opening one does
REPORT_FAULTS = [
    ("pathlib.Path.write_text", errno.ENOSPC, None, "report.md", "no space left on device", SPACE),
    ("pathlib.Path.write_text", errno.EDQUOT, None, "report.md", "disk quota exceeded", SPACE),
    (
        "pandas.DataFrame.to_csv",
        errno.EROFS,
        "x",
        "trials.csv",
        "read-only file system",
        "use a folder on a writable file system (results_dir=…)",
    ),
    ("pandas.DataFrame.to_csv", errno.EACCES, "x", "trials.csv", "permission denied", ACCESS),
    (
        "matplotlib.figure.Figure.savefig",
        errno.EPERM,
        None,
        "plots/metric_vs_params.png",
        "operation not permitted",
        ACCESS,
    ),
]


@pytest.mark.parametrize(
    "target, error, filename, named, cause, hint", REPORT_FAULTS, ids=[c[4] for c in REPORT_FAULTS]
)
def test_a_report_on_a_faulty_disk_is_one_line_and_leaves_the_old_report(
    target, error, filename, named, cause, hint, reported, tmp_path, monkeypatch
):
    before = snapshot(reported)
    monkeypatch.setattr(target, raising(error, filename))
    ran = run_main(report_command.main, f"results_dir={tmp_path}")
    assert one_line(ran) == f"ranksweep: error: cannot write {reported / named}: {cause}; {hint}"
    assert snapshot(reported) == before  # every file as it was (the CSVs rewritten before are the same), no temporary


def test_atomic_write_keeps_the_old_file_when_the_disk_fills_mid_write(tmp_path):
    """The bug: a full disk left report.md at 0 bytes. Half the new text is written, then the disk is full."""
    path = tmp_path / "report.md"
    path.write_text("old report\n")

    def half_then_full(tmp: Path):
        tmp.write_text("new rep")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        atomic_write(path, half_then_full)
    assert (e.value.filename, path.read_text()) == (str(path), "old report\n")
    assert os.listdir(tmp_path) == ["report.md"]


@contextlib.contextmanager
def disk_full_on_writes():
    """SQLite's own error for a full disk, raised by every statement that writes (reads still work)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def full(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(Engine, "before_cursor_execute", full)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", full)


@pytest.mark.parametrize("command", [sweep_main, worker_command.main], ids=["sweep", "worker"])
def test_a_full_disk_when_a_rerun_opens_the_study(command, tiny, monkeypatch):
    """The bug: 103 lines ending in Optuna's "exceeding max length". Now one line naming study.db; the
    study is as the first run left it."""
    args = [*tiny, "sweep=grid", "sweep.ranks=[1]", "sweep.seeds=[0]", "sweep.target_sets=[[q,v]]"]
    run_trial, calls = fake_trial(crash_on_call=0)
    monkeypatch.setattr(driver, "run_trial", run_trial)
    assert run_main(sweep_main, *args).returncode == 0 and calls == [1]
    sdir = Path(tiny[2].partition("=")[2]) / "mrpc" / "grid"
    before = snapshot(sdir)
    with disk_full_on_writes():
        ran = run_main(command, *args)
    assert one_line(ran) == (
        f"ranksweep: error: cannot write the study {sdir / 'study.db'}: the disk is full "
        f"(SQLite: database or disk is full); {SPACE}"
    )
    assert snapshot(sdir) == before and calls == [1]


def test_a_trial_whose_crash_log_cannot_be_written_is_one_line(tiny, monkeypatch):
    """A full disk inside a sweep's trial: recorded as a crash with its log, and when the log itself
    cannot be written, one line naming it."""
    args = [*tiny, "sweep=grid", "sweep.ranks=[1]", "sweep.seeds=[0]", "sweep.target_sets=[[q,v]]"]
    monkeypatch.setattr(driver, "run_trial", raising(errno.ENOSPC, "/x/checkpoint.pt"))
    real_write = Path.write_text
    monkeypatch.setattr(
        Path, "write_text", lambda p, *a: raising(errno.ENOSPC)() if "error-attempt" in p.name else real_write(p, *a)
    )
    ran = run_main(sweep_main, *args)
    log = Path(tiny[2].partition("=")[2]) / "mrpc" / "grid" / "trials" / "r1-q-v-seed0" / "error-attempt1.log"
    assert one_line(ran) == f"ranksweep: error: cannot write {log}: no space left on device; {SPACE}"


def test_an_unreadable_data_file_is_one_line(tiny, glue_dir, monkeypatch):
    path = glue_dir / "MRPC" / "train.tsv"
    data.raw_data.cache_clear(), data.tokenized.cache_clear()  # read again, not from an earlier test's cache
    real_open = open
    monkeypatch.setattr(
        data,
        "open",
        lambda p, *a, **k: raising(errno.EACCES, str(p))() if p == path else real_open(p, *a, **k),
        raising=False,
    )
    ran = run_main(trial_command.main, *tiny)
    assert one_line(ran) == f"ranksweep: error: cannot read {path}: permission denied; {ACCESS}"


def test_calibrate_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from analysis import calibrate

    monkeypatch.setattr(pd.DataFrame, "to_csv", raising(errno.ENOSPC))
    ran = run_main(calibrate.main, "--reps=1", "sweep.ranks=[1,2]", f"results_dir={tmp_path}")
    out = tmp_path / "calibration" / "calibration.csv"
    assert one_line(ran) == f"ranksweep: error: cannot write {out}: no space left on device; {SPACE}"
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_a_report_in_a_folder_nobody_may_write_as_nobody(reported, tmp_path):
    """The real case: the report command run by the unprivileged user ``nobody`` (a forked process that
    drops root's rights: the interpreter, under root's home, is not nobody's to start) on a sweep folder
    owned by root (mode 755) in a results folder nobody may write: the OS refuses the write; one line, the reports as they were."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")  # CI runs as root: never skipped there
    nobody = pwd.getpwnam("nobody")
    for folder in (tmp_path, *tmp_path.parents[:-1]):  # pytest's folders are root's alone (700)
        if folder.stat().st_uid == 0 and not folder.stat().st_mode & 0o001:
            os.chmod(folder, folder.stat().st_mode | 0o005)
    os.chmod(tmp_path, 0o777)  # results_dir is writable (its check passes), the sweep folder in it is not
    before = snapshot(reported)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, run the command, send back its exit code and stderr
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            ran = run_main(report_command.main, f"results_dir={tmp_path}")
            os.write(write, f"{ran.returncode}\n{ran.stderr}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        code, _, stderr = f.read().partition("\n")
    os.waitpid(pid, 0)
    assert (code, stderr.strip()) == (
        "1",
        f"ranksweep: error: cannot write {reported / 'trials.csv'}: permission denied; {ACCESS}",
    )
    assert snapshot(reported) == before


@pytest.mark.parametrize(
    "occupied, named, cause",
    [
        ("report.md", "report.md", "it is a folder, where a file belongs; move that folder away, then re-run"),
        ("plots", "plots", "a file stands where a folder belongs; move that file away, then re-run"),
    ],
)
def test_a_report_whose_file_is_a_folder_or_whose_folder_is_a_file_is_one_line(
    occupied, named, cause, reported, tmp_path
):
    """A folder named report.md (or a file named plots) where the report writes: one line naming it."""
    import shutil

    target = reported / occupied
    (shutil.rmtree if target.is_dir() else Path.unlink)(target)
    if occupied == "report.md":
        target.mkdir()
    else:
        target.write_text("not a folder")
    ran = run_main(report_command.main, f"results_dir={tmp_path}")
    assert one_line(ran) == f"ranksweep: error: cannot write {reported / named}: {cause}"


def test_an_export_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """copytree reports a full disk as shutil.Error, a list of (source, destination, why): one line naming
    the file it could not write."""
    import shutil

    from sweep.faults import fault_line

    failed = shutil.Error([("/a/adapter.safetensors", "/b/adapter.safetensors", "[Errno 28] No space left on device")])
    assert fault_line(failed) == f"cannot write /b/adapter.safetensors: no space left on device; {SPACE}"

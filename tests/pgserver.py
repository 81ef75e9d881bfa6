"""A throwaway PostgreSQL server in a temporary folder, for the tests (the ``postgres`` fixture of
``conftest.py``) and ``make bench`` (which imports it from the checkout's ``tests/``): many workers on one
machine need a database server, SQLite serves one process at a time.

    with local_postgres() as url:      # postgresql+psycopg://ranksweep@127.0.0.1:<free port>/postgres
        ...                            # the server is stopped and its folder removed on exit

It runs the PostgreSQL binaries of this machine (``initdb``, ``pg_ctl``: on PATH, or Debian's
``/usr/lib/postgresql/<version>/bin``), listens on 127.0.0.1 and a unix socket inside the folder only,
trusts local connections, and skips fsync (the data is thrown away). PostgreSQL refuses to run as
root, so as root the server runs as the unprivileged user ``nobody``, which then owns the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

#: the database user the server is initialised with (trusted, no password)
DB_USER = "ranksweep"
#: the system user the server runs as when we are root
RUN_AS = "nobody"


def postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (PATH first, then Debian's layout), None if absent."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(debian[-1]).parent if debian else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: List[str]) -> List[str]:
    return ["runuser", "-u", RUN_AS, "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def local_postgres(password: str | None = None) -> Iterator[str]:
    """Start a PostgreSQL server in a new temporary folder; yields its SQLAlchemy URL. With ``password``,
    every connection must give it (``scram-sha-256`` authentication; the URL yielded holds no password),
    else local connections are trusted.

    Raises:
        RuntimeError: no PostgreSQL binaries, or the server did not start (with its log's last lines).
    """
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL binaries (initdb, pg_ctl) not found on PATH nor in /usr/lib/postgresql/*/bin: "
            "install Debian's postgresql package"
        )
    folder = Path(tempfile.mkdtemp(prefix="ranksweep-pg-"))
    data, log = folder / "data", folder / "server.log"
    if os.geteuid() == 0:
        user = pwd.getpwnam(RUN_AS)
        os.chown(folder, user.pw_uid, user.pw_gid)
    port = _free_port()
    auth = ["--auth=trust"]
    if password is not None:
        (folder / "pwfile").write_text(password + "\n")
        auth = ["--auth=scram-sha-256", f"--pwfile={folder / 'pwfile'}"]
    try:
        subprocess.run(
            _as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, *auth, "-E", "UTF8", "--no-sync"]),
            check=True,
            capture_output=True,
            text=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c fsync=off"
        started = subprocess.run(
            _as_server_user(
                [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]
            ),
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            tail = log.read_text().splitlines()[-5:] if log.exists() else [started.stderr]
            raise RuntimeError("PostgreSQL did not start: " + " | ".join(tail))
        yield f"postgresql+psycopg://{DB_USER}@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
            )
        shutil.rmtree(folder, ignore_errors=True)

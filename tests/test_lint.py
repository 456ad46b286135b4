"""The code is ruff-clean (pyproject's [tool.ruff]: pycodestyle at 120 columns, pyflakes, import
order), as `make lint` checks it; docs/NOTES.md says why `ruff format` is not applied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "viewfusion", "tests", "benchmarks",
                           "tools"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

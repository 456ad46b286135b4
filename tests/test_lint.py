"""The code is ruff-clean (pyproject's [tool.ruff]: pycodestyle at 120 columns, pyflakes, import
order) and keeps its import contracts (pyproject's [tool.importlinter]: stages import only
downward, no cycles, no torch in the report), as `make lint` checks them; docs/NOTES.md says why
`ruff format` is not applied, docs/FORMATS.md (Package map) where a module belongs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_ruff_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "viewfusion", "tests", "benchmarks",
                           "tools"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # lint-imports finds the package on sys.path, where it puts the working directory first.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_import_contracts_hold():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


# (module file, the import appended to it, the contract it breaks, the line its report names)
BREAKS = [
    # the cycle sample.py <-> targets.py had (SamplerSpec), inside one stage
    ("evaluate/targets.py", "from viewfusion.evaluate import sample", "No import cycles", ".targets -> .sample"),
    # the cycle config.py <-> model had (build_model), across layers
    ("config.py", "from viewfusion.model import build", "Stages import only downward",
     "viewfusion.config is not allowed to import viewfusion.model"),
    # data reaching up into a stage
    ("data/manifest.py", "from viewfusion.train import rundir", "data and model never import",
     "viewfusion.data.manifest -> viewfusion.train.rundir"),
    # the report pulling in torch through a stage below it
    ("report/tables.py", "from viewfusion.evaluate import metrics", "The report never imports torch",
     "viewfusion.report.tables -> viewfusion.evaluate.metrics"),
]


@pytest.mark.parametrize(("module", "line", "contract", "named"), BREAKS, ids=[b[0] for b in BREAKS])
def test_an_added_cycle_or_upward_import_breaks_a_contract(tmp_path, module, line, contract, named):
    shutil.copytree(REPO / "viewfusion", tmp_path / "viewfusion", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path).returncode == 0  # the copy keeps the contracts before the edit
    with open(tmp_path / "viewfusion" / module, "a") as fh:
        fh.write(f"\n{line}  # noqa: E402, F401\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout[-4000:]
    broken = proc.stdout.split("Broken contracts", 1)[1]
    assert f"{contract}" in broken and named in broken, proc.stdout[-4000:]


# What must load without torch at run time: import-linter sees only the imports written in a
# module, not the package __init__ files Python runs on the way (viewfusion/model/__init__.py
# is lazy for this reason).
TORCH_FREE = ["viewfusion.cli", "viewfusion.config", "viewfusion.configfile", "viewfusion.report.tables",
              "viewfusion.report.figures", "viewfusion.report.weightfigs", "viewfusion.workflow.plan",
              "viewfusion.model.samplers", "viewfusion.evaluate.samplestore", "viewfusion.train.rundir",
              "viewfusion.data.manifest", "viewfusion.data.shard"]


def test_the_report_and_what_the_snakefile_reads_load_no_torch():
    code = ("import importlib, sys\n"
            f"for name in {TORCH_FREE!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name + ' loaded torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

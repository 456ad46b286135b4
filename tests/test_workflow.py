"""The Snakemake workflow as users meet it: lint, a real end-to-end run with the local profile on
the synthetic dataset, and a dry run proving that an evaluation-only change never retrains.

The pipeline runs once per session in a temporary copy of the workflow (Snakefile, workflow/,
config/, profiles/), so the checkout's own results/ is never touched.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
COPIED = ["Snakefile", "workflow", "config", "profiles"]


def _env() -> dict:
    env = dict(os.environ)
    # Rules call `viewfusion` and `torchrun`: put this interpreter's bin first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*SNAKEMAKE, "--profile", "profiles/local", *args],
        cwd=workdir, env=_env(), capture_output=True, text=True,
    )
    if check and proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(workdir.glob("results/logs/**/*.log")))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def overlay(work: Path, name: str, text: str) -> str:
    """A small config file merged over config/config.yaml (dicts merge, lists replace)."""
    path = work / "config" / name
    path.write_text(text)
    return str(path.relative_to(work))


def test_schema_rejects_unknown_key(tmp_path):
    work = _copy_workflow(tmp_path)
    bad = overlay(work, "bad.yaml", "evaluation:\n  speling: 1\n")
    proc = snakemake(work, "-n", "--configfile", bad, check=False)
    assert proc.returncode != 0
    assert "speling" in proc.stdout + proc.stderr


def _copy_workflow(dest: Path) -> Path:
    for name in COPIED:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    return dest


# The default pipeline with its budgets cut so that CI on 2 cores takes minutes: fewer objects,
# training steps, evaluation targets and sampling steps. Every rule and every stage still runs.
QUICK = """
dataset: {synth_objects: 52}
experiments:
  tiny:
    config: config/experiments/tiny.yaml
    shard_set: all
    set: ["train.max_steps=40", "train.snapshot_steps=[]", "train.checkpoint_every=20"]
evaluation: {max_objects: 6, samplers: [{name: ddim, steps: 10}, {name: nearest}], chunks: 2, batch_size: 16}
figures: {sampler: {name: ddim, steps: 5}}
"""


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """Run the default pipeline (config/config.yaml, budgets cut by QUICK) end to end, once."""
    work = _copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = work / "config/config.yaml"
    config.write_text(yaml.safe_dump(_merge(yaml.safe_load(config.read_text()), yaml.safe_load(QUICK))))
    snakemake(work)
    snakemake(work, "--report", "results/report.html")
    return work


def _merge(base: dict, top: dict) -> dict:
    """Snakemake's config-file semantics: dicts merge recursively, everything else replaces."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@pytest.mark.slow
def test_pipeline_produces_finite_tables_figures_and_report(pipeline):
    tables = pipeline / "results/tables"
    view_table = pd.read_csv(tables / "views.csv")
    measured = view_table[view_table["source"] == "measured"]
    assert set(measured["view_count"]) == {1, 2, 3}
    for column in ("psnr", "ssim", "lpips"):
        assert measured[column].map(math.isfinite).all(), view_table
    # 40 training steps learn nothing yet: the numbers must be real, not good.
    assert (measured["psnr"] > 0).all() and measured["ssim"].between(-1, 1).all()
    pngs = list((pipeline / "results/figures").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    report = (pipeline / "results/report.html").read_text(errors="replace")
    assert len(report) > 10_000


@pytest.mark.slow
def test_evaluation_change_reruns_only_evaluation(pipeline):
    """Changing the sampler steps must rerun sampling, metrics and tables, never training."""
    steps = overlay(pipeline, "steps20.yaml", "evaluation:\n  samplers: [{name: ddim, steps: 20}]\n")
    proc = snakemake(pipeline, "-n", "--configfile", steps)
    rules = _dry_run_rules(proc.stdout + proc.stderr)
    assert "sample" in rules and "metrics" in rules and "tables" in rules, rules
    assert rules <= {"sample", "metrics", "tables", "figures", "all"}, rules


@pytest.mark.slow
def test_complete_pipeline_has_nothing_to_do(pipeline):
    proc = snakemake(pipeline, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def _dry_run_rules(text: str) -> set[str]:
    """Rule names from the 'Job stats' table of a dry run."""
    stats = text.split("Job stats:", 1)
    assert len(stats) == 2, text[-3000:]
    rules = set()
    for line in stats[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+\d+\s*$", line)
        if not match:
            break
        rules.add(match.group(1))
    return rules - {"total"}

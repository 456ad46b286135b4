"""The pipeline through a real Slurm: the one-node cluster of .ci/slurm/start.sh.

    state=$(.ci/slurm/start.sh | tail -n 1)          # as root; ~1 s once installed
    VIEWFUSION_SLURM_STATE=$state pytest -m slurm tests/test_slurm.py
    .ci/slurm/stop.sh "$state"

`.ci/run` does exactly this around `make test`. Without VIEWFUSION_SLURM_STATE the Slurm test
is skipped; the dry-run test of the two Slurm profiles runs everywhere.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# What a copy of the workflow needs (the viewfusion package itself is installed in the venv).
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles")
# The default config (config/config.yaml) made smaller still: Slurm adds ~5-20 s per job on top
# of the work, and the local end-to-end test already covers the full default pipeline.
CI_OVERRIDES = {
    "dataset": {"synth_objects": 52},
    "experiments": {
        "tiny": {
            "config": "config/experiments/tiny.yaml",
            "shard_set": "all",
            "set": ["train.max_steps=20", "train.checkpoint_every=10"],
        }
    },
    "evaluation": {
        "view_counts": [1, 2],
        "max_objects": 4,
        # Two chunks per setting: the sampling jobs go in as Slurm job arrays.
        "chunks": 2,
        "samplers": [{"name": "ddim", "steps": 10, "eta": 0.0}],
        "speed_view_count": None,
    },
    "metrics": {"lpips": False},
    "figures": {"enabled": True, "sampler": {"name": "ddim", "steps": 10, "eta": 0.0}},
}
RUN_TIMEOUT_S = int(os.environ.get("VIEWFUSION_SLURM_TEST_TIMEOUT", "1800"))


def _env() -> dict[str, str]:
    """The venv's bin first on PATH: Slurm jobs inherit it (sbatch --export=ALL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _snakemake() -> list[str]:
    return [sys.executable, "-m", "snakemake"]


def _copy_workflow(dest: Path) -> Path:
    missing = [p for p in WORKFLOW_PARTS if not (REPO / p).exists()]
    if missing:
        pytest.skip(f"workflow not in the tree yet: {missing}")
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    (dest / "ci-overrides.yaml").write_text(yaml.safe_dump(CI_OVERRIDES, sort_keys=False))
    return dest


def _cluster_state() -> Path:
    state = os.environ.get("VIEWFUSION_SLURM_STATE")
    if not state:
        pytest.skip(
            "no local Slurm cluster: VIEWFUSION_SLURM_STATE is unset (as root: "
            "export VIEWFUSION_SLURM_STATE=$(.ci/slurm/start.sh | tail -n 1))"
        )
    state_dir = Path(state)
    # The variable says a cluster was started for this run: from here on, problems fail.
    assert (state_dir / "slurm.conf").is_file(), f"{state_dir} holds no slurm.conf"
    assert shutil.which("sinfo"), "VIEWFUSION_SLURM_STATE is set but sinfo is not installed"
    info = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True)
    assert info.returncode == 0, f"sinfo failed: {info.stderr.strip()}"
    assert re.search(r"^localhost (idle|mix|alloc)$", info.stdout, re.M), (
        f"node not usable: {info.stdout.strip()!r}"
    )
    return state_dir


def _job_stats(log: str) -> Counter:
    """Snakemake's 'Job stats' table -> {rule: jobs}."""
    lines = iter(log.split("Job stats:", 1)[1].splitlines())
    for line in lines:  # skip the header up to the dashes
        if line.startswith("---"):
            break
    counts: Counter = Counter()
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total" or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _run(cmd: list[str], cwd: Path, log_path: Path, timeout: int) -> tuple[int, str]:
    """Run Snakemake; on timeout interrupt it like Ctrl-C (it then scancels its jobs)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = -1
    return rc, log_path.read_text()


def test_slurm_profiles_dry_run(tmp_path):
    """Both Slurm profiles parse and map the portable resources as documented (no cluster)."""
    wf = _copy_workflow(tmp_path)
    for profile, train_gpu, sample_gpu in (("slurm", 4, 1), ("slurm-ci", 0, 1)):
        verbose = subprocess.run(
            [*_snakemake(), "--profile", f"profiles/{profile}", "-n"],
            cwd=wf, env=_env(), capture_output=True, text=True,
        )
        assert verbose.returncode == 0, verbose.stdout + verbose.stderr
        text = verbose.stdout + verbose.stderr
        train = re.search(r"^rule train:.*?^\s+resources: (.*)$", text, re.M | re.S)
        sample = re.search(r"^rule sample:.*?^\s+resources: (.*)$", text, re.M | re.S)
        assert train and sample, text[-3000:]
        assert f"gpu={train_gpu}" in train.group(1)
        assert f"gpu={sample_gpu}" in sample.group(1)
        assert "runtime=" in train.group(1) and "mem_mb=" in train.group(1)


@pytest.mark.slurm
@pytest.mark.slow
def test_pipeline_runs_as_slurm_jobs(tmp_path):
    state = _cluster_state()
    wf = _copy_workflow(tmp_path)
    cmd = [*_snakemake(), "--profile", "profiles/slurm-ci", "--configfile", "ci-overrides.yaml"]
    rc, log = _run(cmd, wf, tmp_path / "snakemake.log", RUN_TIMEOUT_S)
    run_id = re.search(r"SLURM run ID: (\S+)", log)
    if rc != 0:
        if run_id:  # leave no jobs of ours behind
            subprocess.run(["scancel", "--name", run_id.group(1)], env=_env())
        rule_logs = "\n".join(
            f"--- {p.relative_to(wf)}\n{p.read_text()[-1500:]}"
            for p in sorted((wf / "results" / "logs").rglob("*.log"))
        ) if (wf / "results" / "logs").is_dir() else ""
        pytest.fail(f"snakemake exited {rc}:\n{log[-6000:]}\n{rule_logs[-6000:]}")
    assert run_id, "the Slurm executor did not start"

    # 1. The outputs exist.
    for path in ("results/data/dataset_check.json", "results/tables", "results/figures"):
        assert (wf / path).exists(), path
    assert any((wf / "results/tables").glob("*.csv")), "no table"
    assert any((wf / "results/figures").glob("*.png")), "no figure"
    assert (wf / "results/runs/tiny/final.pt").is_file()

    # 2. Every rule but `all` ran as Slurm jobs, as many as Snakemake planned, and Slurm saw
    #    each of them complete with exit status 0.
    planned = _job_stats(log)
    planned.pop("all", None)
    assert planned and planned["sample"] == 2 * 2, planned  # 2 view counts x 2 chunks

    slurm_ids: dict[str, list[str]] = {}  # rule -> Slurm ids (array tasks as <job>_<task>)
    for rule_dir in (wf / ".snakemake" / "slurm_logs").glob("rule_*"):
        slurm_ids[rule_dir.name.removeprefix("rule_")] = sorted(
            p.stem for p in rule_dir.rglob("*.log")
        )
    ctld = (state / "slurmctld.log").read_text()
    done_ok = set()
    for m in re.finditer(r"_job_complete: JobId=(\d+(?:_\d+)?)(?:\(\d+\))? WEXITSTATUS 0", ctld):
        done_ok.add(m.group(1))
    for rule, n in planned.items():
        ids = slurm_ids.get(rule, [])
        completed = [i for i in ids if i in done_ok]
        assert len(completed) >= n, (
            f"rule {rule}: {n} jobs planned, Slurm completed {completed} (logs: {ids})"
        )
    # Sampling chunks went in as job arrays (ids <array>_<task>).
    assert any("_" in i for i in slurm_ids["sample"]), slurm_ids["sample"]
    assert "Submitted array job" in log

    # squeue still lists the run's jobs (MinJobAge=600 s) under the run id, with their rules.
    q = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--name", run_id.group(1), "--format=%i|%T|%k"],
        capture_output=True, text=True, env=_env(),
    )
    assert q.returncode == 0, q.stderr
    rows = [line.split("|", 2) for line in q.stdout.split()]
    completed_rules = {
        re.sub(r"_wildcards_.*", "", comment).removeprefix("rule_")
        for _, job_state, comment in rows
        if job_state == "COMPLETED"
    }
    # Jobs older than MinJobAge have left squeue; the last ones are surely there.
    assert {"tables", "figures"} <= completed_rules <= set(planned), q.stdout

    # 3. Nothing left to do: a second run would submit nothing.
    again = subprocess.run(
        [*_snakemake(), "--profile", "profiles/slurm-ci", "--configfile", "ci-overrides.yaml",
         "-n"],
        cwd=wf, env=_env(), capture_output=True, text=True,
    )
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]

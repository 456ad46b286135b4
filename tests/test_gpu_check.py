"""benchmarks/gpu_check.sh end to end in its --smoke mode (tiny model, CPU, seconds): the wheel
install into OUT/site, every phase, the JSON and PNG, and `viewfusion plan --rates` on its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The project's wheel, built offline from this checkout (webdataset comes from the venv)."""
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the project's wheel offline here: {proc.stderr[-500:]}")
    return out


@pytest.mark.slow
def test_smoke_runs_end_to_end_from_the_wheels(wheels, tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "VIEWFUSION_WHEELS": str(wheels), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), str(out), "--smoke"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "installed 1 wheel(s)" in proc.stdout
    result = json.loads((out / "gpu_check.json").read_text())
    # The project ran from the unpacked wheel, not from the checkout.
    assert result["env"]["viewfusion"].startswith(str(out / "site")), result["env"]
    thr = result["throughput"]
    assert set(thr["train_fwd_bwd"]) == {"fp32", "bf16", "fp16"} and set(thr["sample_forward"]) == {"fp32", "bf16"}
    assert all(r["unet_evals_per_s"] > 0 for rows in thr.values() if isinstance(rows, dict) and "fp32" in rows
               for r in rows.values())
    assert result["unet"]["flops_forward"] > 0 and result["unet"]["flops_forward_backward"] > result["unet"][
        "flops_forward"]
    assert result["compile"]["backend"] == "eager" and result["compile"]["gain"] > 0
    training = result["training"]
    assert training["steps"] >= 1 and training["curve"] and training["precision"] == "fp32"
    ev = result["evaluation"]
    assert ev["targets"] >= 1 and ev["targets_per_s"] > 0 and 0 < ev["copy_baseline_psnr"] < 100
    assert set(result["timings"]) == {"throughput", "compile", "data", "training", "evaluation"}
    assert (out / "gpu_check.png").stat().st_size > 10_000
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["json"] == str(out / "gpu_check.json")

    # Its rates feed the cost estimate.
    plan = subprocess.run([sys.executable, "-m", "viewfusion.cli", "plan", "--configfile", "config/paper_workflow.yaml",
                           "--rates", str(out / "gpu_check.json")], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert plan.returncode == 0, plan.stderr
    assert f"measured ({out / 'gpu_check.json'})" in plan.stdout and "GPU class cpu" in plan.stdout


def test_without_wheels_or_gpu_it_says_what_to_do(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "VIEWFUSION_WHEELS": str(tmp_path / "none")}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), str(tmp_path / "out"), "--smoke"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "pip wheel -c constraints.txt --no-deps -w build/wheels" in proc.stderr
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "needs a CUDA torch 2.11 or later" in proc.stderr

"""`viewfusion plan` on config/paper_workflow.yaml: the arithmetic, checked against numbers worked out by
hand, and the command (torch-free, one line per bad input)."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest
import yaml
from workflow_cases import REFUSED

from viewfusion.errors import ViewFusionError
from viewfusion.workflow import chunking
from viewfusion.workflow import plan as P

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def clean_root() -> Path:
    """The repository's config, profiles and workflow without its results/ and data/: what a clean
    checkout holds (the demo's results must not change the paper's plan; see the test below)."""
    root = Path(tempfile.mkdtemp(prefix="plan-root-"))
    for name in ("config", "profiles", "workflow"):
        (root / name).symlink_to(REPO / name)
    return root
N_TEST = 8751  # ViewFusion's NMR test.lst, the default before the dataset is verified
VIEWS = [1, 2, 3, 4, 5, 6, 8, 12]  # config/paper_workflow.yaml evaluation.view_counts: they sum to 41


def paper_config() -> dict:
    return P.load_workflow_config([REPO / "config/paper_workflow.yaml"], REPO / "config/config.yaml",
                                  REPO / "workflow/schemas/config.schema.yaml")


def make(rates: dict, profile: dict | None = None, **kw) -> P.Plan:
    profile = profile or {"profile": None, "sample": 240, "train": 2880, "warning_s": 0}
    return P.make_plan(paper_config(), rates={"gpu": "v100", "source": "test", **rates}, profile=profile,
                       root=clean_root(), **kw)


V100 = P.default_rates("v100")["sample"]  # the paper config's evaluation.sample_gpu sizes its chunks
STARTUP_MIN = P.JOB_STARTUP_SECONDS / 60


def chunks_for(evals: float, budget_min: float, rate: float = V100) -> int:
    """By hand: the fewest chunks whose share of `evals` plus the start-up fits the budget."""
    return math.ceil(evals / rate / 60 / (budget_min - STARTUP_MIN))


def test_paper_arithmetic_by_hand():
    config = paper_config()
    n_exp = len(config["active_experiments"])
    plan = make({"sample": 1000.0, "train": 100.0})
    assert sum(VIEWS) == 41
    rows = {(r.rule, r.setting): r for r in plan.rows}

    # Training, per experiment: 710 000 steps x 112 targets x 3.5 views on average (1..6).
    train = rows[("train", "paper")]
    assert train.unet_evals == 710_000 * 112 * 3.5 == 278_320_000
    assert train.gpu_hours == pytest.approx(278_320_000 / 100 / 3600)  # 773.1 GPU h
    assert train.per_job_hours == pytest.approx(773.111 / 4, rel=1e-4)  # 4 GPUs: 193.3 h wall
    assert "5 allocation(s)" in train.note  # 48 h allocations

    # Ancestral sampling: 2000 U-Net calls per view; 8751 targets; 12 views. Chunks are the
    # workflow's: sized on the config's V100 rate to fill 0.75 x 240 min each.
    v12 = rows[("sample", "paper/final/ddpm-full/v12")]
    assert v12.unet_evals == 8751 * 12 * 2000 == 210_024_000
    assert v12.jobs == chunks_for(210_024_000, 180) == 54
    # At the plan's 1000/s the longest of 54 chunks holds ceil(8751 / 54) = 163 targets, plus the start-up.
    assert v12.per_job_hours == pytest.approx(163 * 12 * 2000 / 1000 / 3600 + P.JOB_STARTUP_SECONDS / 3600)
    # DDIM-10's whole sweep (8751 x 41 x 10 at 365/s: 164 min, + 8 start-ups) fits one 180 min job.
    sweep = rows[("sample_sweep", "paper/final/ddim-10-eta1-lambda/v*")]
    assert sweep.jobs == 1 and sweep.unet_evals == 8751 * 41 * 10 == 3_587_910
    assert plan.sizing.swept == {"ddim-10-eta1-lambda"}

    anc = sum(r.unet_evals for r in plan.rows if r.rule == "sample" and "/ddpm-full/" in r.setting)
    assert anc == n_exp * 8751 * 41 * 2000 and 8751 * 41 * 2000 == 717_582_000
    chunks = {v: chunks_for(8751 * v * 2000, 180) for v in VIEWS}
    assert plan.jobs("sample") == n_exp * sum(chunks.values())
    assert plan.jobs("sample_sweep") == n_exp and plan.jobs("sample_nearest") == n_exp * 8
    assert plan.jobs("train") == n_exp and plan.jobs("metrics") == n_exp * 3 * 8
    assert plan.total("sample_nearest") == 0 and plan.total("metrics") == 0
    assert not plan.warnings

    # Files (issue 17): per setting its chunks x (marker, pack, progress) + a metrics file; per
    # manifest (shard set x view count) the manifest and its ground-truth pack.
    sets = {config["evaluation"].get("shard_set") or config["experiments"][e]["shard_set"]
            for e in config["active_experiments"]}
    per_exp = sum(c * 3 + 1 for c in chunks.values()) + 2 * 8 * (3 + 1)  # ancestral; DDIM and the copy: 1 chunk
    assert plan.files["packed"] == n_exp * per_exp + len(sets) * 8 * 2


def test_default_v100_rates_and_the_paper_dag_on_the_slurm_profile():
    rates = P.default_rates("v100")
    # Calibrated on the paper: 710 k steps x 112 x 3.5 in 6.5 days on 4 V100 = 123.9 fwd+bwd/s.
    assert rates["train"]["fp32"] == pytest.approx(710_000 * 112 * 3.5 / (6.5 * 86_400 * 4)) == pytest.approx(123.89,
                                                                                                        abs=0.01)
    # The same fraction of the fp32 peak for the forward pass: x 61.9 / 21.0 GFLOP.
    assert rates["sample"] == pytest.approx(123.89 * 61.9 / 21.0, rel=1e-4)  # 365.2 evaluations/s
    assert rates["train"]["fp16"] == pytest.approx(125e12 * 0.25 / 61.9e9)  # tensor cores, assumed 25%
    a100 = P.default_rates("a100")
    assert a100["sample"] == pytest.approx(156e12 * 0.25 / 21e9) and a100["train"]["bf16"] > a100["train"]["fp32"]
    plan = make(rates, P.profile_minutes(REPO / "profiles/slurm"))
    rows = {(r.rule, r.setting): r for r in plan.rows}
    # auto precision on a V100 trains in fp16: 278.32 M / 504.8 /s = 153.1 GPU h, 38.3 h on 4.
    assert "fp16" in rows[("train", "paper")].note
    assert rows[("train", "paper")].gpu_hours == pytest.approx(278_320_000 / (125e12 * 0.25 / 61.9e9) / 3600)
    # 720 min x 0.75: 159.7 GPU h of ancestral sampling at 12 views in 18 jobs of 8.9 h.
    assert rows[("sample", "paper/final/ddpm-full/v12")].jobs == chunks_for(210_024_000, 540) == 18
    n_exp = len(paper_config()["active_experiments"])
    assert plan.jobs("sample") == n_exp * sum(chunks_for(8751 * v * 2000, 540) for v in VIEWS) == n_exp * 63
    # Every GPU job is worth its queue wait; the whole DAG is a few hundred Slurm jobs.
    assert plan.shortest_gpu_job_minutes() >= 10 and not plan.warnings
    assert P.cluster_jobs(plan) <= 400


def test_a_chunk_over_its_limit_is_a_warning_and_a_ceiling_caps_the_chunks():
    plan = make({"sample": 100.0, "train": 100.0})  # slower than the V100 rate the chunks were sized on
    warning = next(w for w in plan.warnings if "ddpm-full/v12" in w)
    # 54 chunks of <= 163 targets: 163 x 12 x 2000 / 100 /s = 10.87 h
    assert "a chunk takes 10.87 h at these rates, over 3.00 h (0.75 x the 240 min limit)" in warning
    assert "WARNING: sample paper/final/ddpm-full/v12" in P.render(plan)
    config = paper_config()
    config["evaluation"]["chunks"] = 10
    capped = P.make_plan(config, rates={**P.default_rates("v100")}, profile=P.profile_minutes(None), root=clean_root())
    assert capped.sizing.chunks("paper", "ddpm-full", 12) == 10 and capped.sizing.chunks("paper", "ddpm-full", 1) == 5
    assert any("ddpm-full/v12" in w for w in capped.warnings)
    config["evaluation"].update(chunks="auto", sample_evals_per_second=3651.8)  # 10x the V100 rate: 10x fewer
    fast = P.make_plan(config, rates=P.default_rates("v100"), profile=P.profile_minutes(None), root=clean_root())
    assert fast.sizing.chunks("paper", "ddpm-full", 12) == chunks_for(210_024_000, 180, 3651.8) == 6


def test_profile_runtimes_and_groups_come_from_the_profile():
    minutes = P.profile_minutes(REPO / "profiles/slurm")
    assert minutes["sample"] == 720 and minutes["train"] == 48 * 60 and minutes["warning_s"] == 600
    assert minutes["groups"]["metrics"] == minutes["groups"]["sample_nearest"] == "cpu"
    assert minutes["group_components"]["cpu"] == 25


def _demo_results(root: Path) -> None:
    """What `make demo` leaves that an older plan read for any config: the synthetic data's
    dataset check and 26-target manifests of the shard set `all`."""
    (root / "results/data").mkdir(parents=True)
    (root / "results/data/dataset_check.json").write_text(json.dumps(
        {"zip": "data/synth/NMR_Dataset.zip", "per_category": {"test": {"car": 4, "chair": 22}}}))
    for v in (1, 2, 3):
        manifest = root / f"results/manifests/all/test-v{v}.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"items": [{}] * 26}))


def test_the_paper_plan_ignores_another_datasets_results(tmp_path):
    """After `make demo` the paper plan counted the demo's 26 targets (781 GPU h) without a
    word; it now reads the dataset its config names and prints the same as on a clean checkout."""
    root = tmp_path / "demo"
    root.mkdir()
    for name in ("config", "profiles", "workflow"):
        (root / name).symlink_to(REPO / name)
    _demo_results(root)
    clean, demo = (_cli("--configfile", "config/paper_workflow.yaml", cwd=r) for r in (clean_root(), root))
    assert clean.returncode == demo.returncode == 0, demo.stderr
    assert demo.stdout == clean.stdout
    assert "targets per view count: 8751 (NMR's documented test lists" in demo.stdout
    assert demo.stdout.splitlines()[1].startswith("ESTIMATE:")


def test_targets_come_from_the_configured_dataset(tmp_path, synth_zip):
    config = paper_config()
    count = chunking.setting_targets(config, "paper", tmp_path)
    assert (count.targets, count.exact) == (N_TEST, False)
    # The NMR zip at dataset.zip: its own split lists, counted (this synthetic one has 5 test objects).
    (tmp_path / "data/nmr").mkdir(parents=True)
    (tmp_path / "data/nmr/NMR_Dataset.zip").symlink_to(synth_zip)
    count = chunking.setting_targets(config, "paper", tmp_path)
    assert (count.targets, count.exact) == (5, True) and "data/nmr/NMR_Dataset.zip's split lists" in count.source
    assert chunking.setting_targets(config, "paper", tmp_path, objects=7).targets == 7


def test_the_synthetic_default_config_counts_its_split_exactly():
    config = P.load_workflow_config([], REPO / "config/config.yaml", REPO / "workflow/schemas/config.schema.yaml")
    count = chunking.setting_targets(config, "tiny", Path("/nonexistent"))
    # 260 objects, 2 of every 10 in test (synth._SPLIT_PATTERN), then max_objects 26.
    assert (count.targets, count.source, count.exact) == (26, "the synthetic dataset's split", True)
    config["evaluation"]["max_objects"] = None
    assert chunking.setting_targets(config, "tiny", Path("/nonexistent")).targets == 52


def test_figure_evaluations_match_the_figure_sampler():
    from viewfusion.evaluate import figure_samples

    per_target = len(figure_samples.FIGURE_COND_VIEWS) * len(range(0, 24, figure_samples.FIGURE_TARGET_STRIDE))
    assert P.FIGURE_EVALS_PER_STEP == per_target + sum(range(1, 8))  # + the autoregressive strip (stride 3)


# The CLI in a fresh interpreter, which must not have imported torch by the end.
_CLI = ("import sys; from viewfusion.cli import main; rc = main(); "
        "assert 'torch' not in sys.modules, 'plan imported torch'; sys.exit(rc)")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CLI, "plan", *args], cwd=cwd or clean_root(), capture_output=True,
                          text=True,
                          timeout=120, check=False)


def test_command_prints_per_rule_and_writes_json_without_torch(tmp_path):
    out = tmp_path / "plan.json"
    proc = _cli("--configfile", "config/paper_workflow.yaml", "--sample-evals-per-second", "1000",
                "--train-evals-per-second", "100", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "per rule:" in proc.stdout and "cluster jobs on this profile: " in proc.stdout
    assert "sample_nearest" in proc.stdout and "(CPU)" in proc.stdout
    data = json.loads(out.read_text())
    assert data["rates"]["sample"] == 1000.0 and data["sizing"]["swept"] == ["ddim-10-eta1-lambda"]
    v12 = next(s for s in data["sizing"]["settings"] if (s["exp"], s["tag"], s["views"]) == ("paper", "ddpm-full", 12))
    assert v12["chunks"] == 18 and data["cluster_jobs"] <= 400


def test_rates_from_a_gpu_check_json(tmp_path):
    rates = tmp_path / "gpu_check.json"
    rates.write_text(json.dumps({"plan_rates": {"gpu": "h100", "sample": 2000.0, "train": 500.0}}))
    args = Namespace(gpu="v100", rates=rates, sample_evals_per_second=None, train_evals_per_second=None)
    resolved = P.resolve_rates(args, paper_config())
    assert (resolved["sample"], resolved["train"], resolved["gpu"]) == (2000.0, 500.0, "h100")


@pytest.mark.parametrize("args, message", [
    (["--gpu", "tpu"], "GPU class 'tpu': known classes are v100"),
    (["--sample-evals-per-second", "0"], "sample rate must be a positive number"),
    (["--objects", "0"], "--objects 0: need at least 1"),
])
def test_bad_input_is_one_line(args, message):
    proc = _cli("--configfile", "config/paper_workflow.yaml", *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("text, message", REFUSED)
def test_the_plan_refuses_what_the_workflow_refuses(tmp_path, text, message):
    """Issue 30: the plan counted configs Snakemake refuses; it now runs the workflow's checks
    (viewfusion.workflow.checks; tests/test_workflow.py dry-runs Snakemake on the same cases)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = _cli("--configfile", str(bad), "--profile", "profiles/local", "--sample-evals-per-second", "1000")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("text, where", [("speling: 1\n", "top level: Additional properties are not allowed "
                                                        "('speling' was unexpected)"),
                                          ("evaluation: {chunks: 0}\n", "evaluation.chunks: 0 is less than"),
                                          ("training: {nproc: two}\n", "training.nproc: 'two' is not of type")])
def test_the_plan_validates_the_config_against_the_schema(tmp_path, text, where):
    """As Snakemake's `validate(config, schema)` does: an unknown key, a value out of range."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = _cli("--configfile", str(bad), "--profile", "none", "--sample-evals-per-second", "1000")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"config/config.yaml + {bad} against workflow/schemas/config.schema.yaml: {where}" in proc.stderr


def test_the_plan_checks_training_processes_against_the_profiles_gpus(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text("training: {nproc: 2}\n")
    proc = _cli("--configfile", "config/paper_workflow.yaml", "--configfile", str(two), "--profile", "profiles/slurm",
                "--sample-evals-per-second", "1000")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "training.nproc 2, but the profile gives each training node 4 GPUs" in proc.stderr


@pytest.mark.parametrize("runtime", ["four hours", "9**9**9", "0", "-5 * attempt", "__import__('os')"])
def test_bad_profile_runtime_is_one_line(tmp_path, runtime):
    """Parsed, never evaluated: `eval` of 9**9**9 never returned (the plan hung)."""
    profile = tmp_path / "config.yaml"
    profile.write_text(yaml.safe_dump({"set-resources": {"sample": {"runtime": runtime}}}))
    with pytest.raises(ViewFusionError, match=r"set-resources.sample.runtime .* is not a positive number"):
        P.profile_minutes(profile)


@pytest.mark.parametrize("runtime, minutes", [(240, 240), ("30 * attempt", 30), ("attempt*15", 15), (" 720 ", 720)])
def test_profile_runtimes_in_the_forms_profiles_write(runtime, minutes):
    from viewfusion.workflow.config import runtime_minutes

    assert runtime_minutes(runtime, "profile") == minutes

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

from viewfusion import plan as P
from viewfusion.errors import ViewFusionError

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def clean_root() -> Path:
    """The repository's config, profiles and workflow without its results/ and data/: a checkout
    after `make demo` has manifests there, which the plan counts (as it should) instead of NMR's."""
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

    # Ancestral sampling: 2000 U-Net calls per view; 8751 targets; 12 views.
    v12 = rows[("sample", "paper/final/ddpm-full/v12")]
    assert v12.unet_evals == 8751 * 12 * 2000 == 210_024_000
    assert v12.jobs == 64
    # The longest of 64 chunks holds ceil(8751 / 64) = 137 targets: 3 288 000 evaluations.
    assert v12.per_job_hours == pytest.approx(137 * 12 * 2000 / 1000 / 3600)  # 0.913 h
    assert "needs >= 20 chunks" in v12.note  # 58.3 h / (0.75 x 4 h)
    ddim = rows[("sample", "paper/final/ddim-10-eta1-lambda/v3")]
    assert ddim.unet_evals == 8751 * 3 * 10 == 262_530

    # Per rule, all experiments: ancestral 8751 x 41 x 2000 = 717.6 M per experiment (2.87e9 for
    # the paper's four), DDIM-10 3.59 M, the copy baseline none.
    anc = sum(r.unet_evals for r in plan.rows if r.rule == "sample" and "/ddpm-full/" in r.setting)
    assert anc == n_exp * 8751 * 41 * 2000 and 8751 * 41 * 2000 == 717_582_000
    assert sum(r.unet_evals for r in plan.rows if "/ddim-10-eta1-lambda/" in r.setting) == n_exp * 3_587_910
    assert plan.jobs("sample") == n_exp * 2 * 8 * 64 and plan.jobs("sample_nearest") == n_exp * 8 * 64
    assert plan.jobs("train") == n_exp and plan.jobs("metrics") == n_exp * 3 * 8
    assert plan.total("sample_nearest") == 0 and plan.total("metrics") == 0
    assert plan.chunks == 64 and plan.chunks_needed == 20 and not plan.warnings

    # Files (issue 17): per setting 64 chunks x (marker, pack, progress) + a metrics file; per
    # manifest (shard set x view count) the manifest and its ground-truth pack. Before packs:
    # two PNGs per target (image and ground truth), a marker and a progress file per chunk.
    settings = n_exp * 3 * 8
    sets = {config["evaluation"].get("shard_set") or config["experiments"][e]["shard_set"]
            for e in config["active_experiments"]}
    assert plan.files["packed"] == settings * (64 * 3 + 1) + len(sets) * 8 * 2
    assert plan.files["one_png_per_image"] == n_exp * 3 * 2 * 8751 * 8 + settings * (2 * 64 + 1) + len(sets) * 8


def test_default_v100_rates_and_the_chunk_count_they_need():
    rates = P.default_rates("v100")
    # Calibrated on the paper: 710 k steps x 112 x 3.5 in 6.5 days on 4 V100 = 123.9 fwd+bwd/s.
    assert rates["train"]["fp32"] == pytest.approx(710_000 * 112 * 3.5 / (6.5 * 86_400 * 4)) == pytest.approx(123.89,
                                                                                                        abs=0.01)
    # The same fraction of the fp32 peak for the forward pass: x 61.9 / 21.0 GFLOP.
    assert rates["sample"] == pytest.approx(123.89 * 61.9 / 21.0, rel=1e-4)  # 365.2 evaluations/s
    assert rates["train"]["fp16"] == pytest.approx(125e12 * 0.25 / 61.9e9)  # tensor cores, assumed 25%
    plan = make(rates)
    rows = {(r.rule, r.setting): r for r in plan.rows}
    # auto precision on a V100 trains in fp16: 278.32 M / 504.8 /s = 153.1 GPU h, 38.3 h on 4.
    assert "fp16" in rows[("train", "paper")].note
    assert rows[("train", "paper")].gpu_hours == pytest.approx(278_320_000 / (125e12 * 0.25 / 61.9e9) / 3600)
    v12 = rows[("sample", "paper/final/ddpm-full/v12")]
    assert v12.per_job_hours == pytest.approx(3_288_000 / 365.18 / 3600, rel=1e-3)  # 2.50 h: fits 0.75 x 4 h
    assert plan.chunks_needed == math.ceil(210_024_000 / 365.18 / 3600 / 3) == 54
    a100 = P.default_rates("a100")
    assert a100["sample"] == pytest.approx(156e12 * 0.25 / 21e9) and a100["train"]["bf16"] > a100["train"]["fp32"]


def test_a_chunk_over_its_limit_is_a_warning_with_the_count_that_fits():
    plan = make({"sample": 100.0, "train": 100.0})  # slow: 8751 x 12 x 2000 / 100 /s = 583 h
    assert plan.chunks_needed == math.ceil(210_024_000 / 100 / 3600 / 3) == 195
    warning = next(w for w in plan.warnings if "ddpm-full/v12" in w)
    assert "a chunk takes 9.13 h, over 0.75 x the 240 min limit; set evaluation.chunks >= 195" in warning
    assert "RAISE IT" in P.render(plan)


def test_profile_runtimes_come_from_the_profile():
    minutes = P.profile_minutes(REPO / "profiles/slurm")
    assert minutes["sample"] == 240 and minutes["train"] == 48 * 60 and minutes["warning_s"] == 600


def test_manifest_counts_win_over_estimates(tmp_path):
    config = paper_config()
    manifest = tmp_path / "results/manifests/all/test-v3.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"items": [{}] * 5}))
    assert P.targets(config, "paper", 3, tmp_path, None) == (5, str(manifest))
    assert P.targets(config, "paper", 2, tmp_path, None)[0] == N_TEST
    assert P.targets(config, "paper", 2, tmp_path, 7) == (7, "--objects")


def test_the_synthetic_default_config_counts_its_split_exactly():
    config = P.load_workflow_config([], REPO / "config/config.yaml", REPO / "workflow/schemas/config.schema.yaml")
    n, source = P.targets(config, "tiny", 1, Path("/nonexistent"), None)
    # 260 objects, 2 of every 10 in test (synth._SPLIT_PATTERN), then max_objects 26.
    assert (n, source) == (26, "the synthetic dataset's split")
    config["evaluation"]["max_objects"] = None
    assert P.targets(config, "tiny", 1, Path("/nonexistent"), None)[0] == 52


def test_figure_evaluations_match_the_figure_sampler():
    from viewfusion import figure_samples

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
    assert "per rule:" in proc.stdout and "evaluation.chunks >= 20" in proc.stdout
    assert "sample_nearest" in proc.stdout and "(CPU)" in proc.stdout
    data = json.loads(out.read_text())
    assert data["chunks_needed"] == 20 and data["rates"]["sample"] == 1000.0


def test_rates_from_a_gpu_check_json(tmp_path):
    rates = tmp_path / "gpu_check.json"
    rates.write_text(json.dumps({"plan_rates": {"gpu": "h100", "sample": 2000.0, "train": 500.0}}))
    args = Namespace(gpu="v100", rates=rates, sample_evals_per_second=None, train_evals_per_second=None)
    resolved = P.resolve_rates(args)
    assert (resolved["sample"], resolved["train"], resolved["gpu"]) == (2000.0, 500.0, "h100")


@pytest.mark.parametrize("args, message", [
    (["--gpu", "tpu"], "--gpu 'tpu': known classes are v100"),
    (["--sample-evals-per-second", "0"], "sample rate must be a positive number"),
    (["--margin", "1.5"], "--margin 1.5: need 0 < margin <= 1"),
    (["--objects", "0"], "--objects 0: need at least 1"),
])
def test_bad_input_is_one_line(args, message):
    proc = _cli("--configfile", "config/paper_workflow.yaml", *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_bad_profile_runtime_is_one_line(tmp_path):
    profile = tmp_path / "config.yaml"
    profile.write_text(yaml.safe_dump({"set-resources": {"sample": {"runtime": "four hours"}}}))
    with pytest.raises(ViewFusionError, match="set-resources.sample.runtime 'four hours' is not a number"):
        P.profile_minutes(profile)

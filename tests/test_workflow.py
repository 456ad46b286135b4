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
from sample_utils import packed_images
from workflow_cases import REFUSED

from viewfusion.workflow.config import merge

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
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
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


@pytest.mark.parametrize("text", ["evaluation:\n  speling: 1\n", "speling: 1\n"])
def test_schema_rejects_unknown_key(tmp_path, text):
    work = _copy_workflow(tmp_path)
    bad = overlay(work, "bad.yaml", text)
    proc = snakemake(work, "-n", "--configfile", bad, check=False)
    assert proc.returncode != 0
    assert "speling" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def fresh_workflow(tmp_path_factory) -> Path:
    return _copy_workflow(tmp_path_factory.mktemp("fresh"))


@pytest.mark.slow
@pytest.mark.parametrize("text, message", REFUSED)
def test_a_config_the_plan_refuses_stops_the_dag_with_one_line(fresh_workflow, text, message):
    """viewfusion.workflow.checks at DAG build (tests/test_plan.py runs the same cases through the
    plan): a duplicate setting, an eta no path can name, a bad cross-setting, one `config error:`
    line, exit 2, before any job."""
    proc = snakemake(fresh_workflow, "-n", "--configfile", overlay(fresh_workflow, "bad.yaml", text), check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]


@pytest.mark.slow
def test_a_setting_asked_for_by_file_name_is_sized_like_the_configured_ones(fresh_workflow):
    """Chunks are sized per configured setting; a file of another setting (ddim-20, not in the
    config) used to be a KeyError in the metrics rule's input function instead of a plan."""
    proc = snakemake(fresh_workflow, "-n", "results/samples/tiny/final/ddim-20/v2/metrics.parquet")
    assert {"sample", "metrics"} <= _dry_run_rules(proc.stdout + proc.stderr)


@pytest.mark.slow
@pytest.mark.parametrize(("value", "message"), [
    # 9^9 values once expanded: coerce_scalars, validate and the merges walk every one (7.2 GB before)
    ("[" + ", ".join(["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "]",
     "holds more than 1,000,000 values once its YAML aliases are expanded"),
    ("[" * 40 + "]" * 40, "nested more than 32 levels deep"),
])
def test_an_alias_bomb_or_deep_overlay_is_one_config_error(tmp_path, value, message):
    work = _copy_workflow(tmp_path)
    bomb = overlay(work, "bomb.yaml", f"evaluation:\n  view_counts: {value}\n")
    proc = snakemake(work, "-n", "--configfile", bomb, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr, proc.stderr


def _copy_workflow(dest: Path) -> Path:
    for name in COPIED:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    return dest


# The default pipeline with its budgets cut so that CI on 2 cores takes minutes: fewer objects,
# training steps, evaluation targets and sampling steps. Every rule and every stage still runs.
# A made-up slow sampling rate (0.01 U-Net evaluations/s) makes viewfusion.workflow.chunking give DDIM-10
# 1 chunk at 1 view and 2 (the ceiling) at 2 and 3 views, as a long sampler on a cluster gets;
# the demo's own config sweeps it (tests/test_slurm.py runs both kinds).
QUICK = """
dataset: {synth_objects: 52}
experiments:
  tiny:
    config: config/experiments/tiny.yaml
    shard_set: all
    set: ["train.max_steps=40", "train.snapshot_steps=[]", "train.checkpoint_every=20"]
evaluation: {max_objects: 6, samplers: [{name: ddim, steps: 10}, {name: nearest}], chunks: 2, batch_size: 16,
             sample_evals_per_second: 0.01}
figures: {sampler: {name: ddim, steps: 5}}
"""


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """Run the default pipeline (config/config.yaml, budgets cut by QUICK) end to end, once."""
    work = _copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = work / "config/config.yaml"
    config.write_text(yaml.safe_dump(merge(yaml.safe_load(config.read_text()), yaml.safe_load(QUICK))))
    snakemake(work)
    snakemake(work, "--report", "results/report.html")
    return work


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
def test_the_plan_counts_the_files_sampling_leaves(pipeline):
    """`viewfusion plan`'s file count (the README's figure for the paper DAG) is what the run
    left: per setting each chunk's marker, pack and progress record and the metrics file; per
    manifest the manifest and its ground-truth pack."""
    from viewfusion.workflow import plan as P

    config = P.load_workflow_config([], pipeline / "config/config.yaml",
                                    pipeline / "workflow/schemas/config.schema.yaml")
    planned = P.make_plan(config, rates=P.default_rates("v100"), profile=P.profile_minutes(None), root=pipeline)
    samples = [p for p in (pipeline / "results/samples").rglob("*") if p.is_file()]
    manifests = [p for p in (pipeline / "results/manifests").rglob("*") if p.is_file() and "viewlist" not in p.name]
    assert len(samples) + len(manifests) == planned.files["packed"], sorted(map(str, samples + manifests))
    assert not list((pipeline / "results/samples").rglob("*.png")), "images are packed, never loose files"


@pytest.mark.slow
def test_evaluation_change_reruns_only_evaluation(pipeline):
    """Changing the sampler steps must rerun sampling, metrics and tables, never training."""
    steps = overlay(pipeline, "steps20.yaml", "evaluation:\n  samplers: [{name: ddim, steps: 20}]\n")
    proc = snakemake(pipeline, "-n", "--configfile", steps)
    rules = _dry_run_rules(proc.stdout + proc.stderr)
    assert "sample" in rules and "metrics" in rules and "tables" in rules, rules
    assert rules <= {"sample", "metrics", "tables", "figures", "all"}, rules


@pytest.mark.slow
def test_a_spacing_reaches_the_sampler_command_and_its_own_folder(pipeline):
    text = "evaluation:\n  samplers: [{name: ddim, steps: 10, eta: 1.0, spacing: karras}]\n"
    proc = snakemake(pipeline, "-n", "-p", "--configfile", overlay(pipeline, "spacing.yaml", text))
    out = proc.stdout + proc.stderr
    assert "/ddim-10-eta1-karras/v1" in out and "--sampler ddim --steps 10 --eta 1 --spacing karras" in out, out[-3000:]


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


# ---------------------------------------------------------------- rerun triggers (issue 16)

EVALUATION = {"sample", "metrics", "tables", "figures"}
NEAREST = "sample_nearest"  # the copy baseline's own (CPU) rule
# setting changed on the finished QUICK run -> the rules `snakemake -n` reruns (beyond `all`).
RERUNS = {
    "evaluation.batch_size": ("evaluation: {batch_size: 3}\n", set()),
    "training.nproc": ("training: {nproc: 2}\n", set()),
    "sampler steps": ("evaluation: {samplers: [{name: ddim, steps: 20}, {name: nearest}]}\n", EVALUATION),
    "sampler spacing": ("evaluation: {samplers: [{name: ddim, steps: 10, spacing: lambda}, {name: nearest}]}\n",
                        EVALUATION),
    "default spacing named": ("evaluation: {samplers: [{name: ddim, steps: 10, spacing: linspace}, {name: nearest}]}\n",
                              set()),
    "view count added": ("evaluation: {view_counts: [1, 2, 3, 4]}\n", {"eval_manifest", "ground_truth", NEAREST,
                                                                      *EVALUATION}),
    "view count dropped": ("evaluation: {view_counts: [1, 2]}\n", {"tables", "figures"}),
    # 10x the rate: DDIM-10's whole sweep fits one job; its new chunk files are written from the
    # images already there (same fingerprints), then scored again.
    "chunk sizing": ("evaluation: {sample_evals_per_second: 0.1}\n", {"sample_sweep", "metrics", "tables", "figures"}),
    "experiment override": (("experiments: {tiny: {config: config/experiments/tiny.yaml, shard_set: all, set: "
                             "['train.max_steps=40', 'train.snapshot_steps=[]', 'train.checkpoint_every=20', "
                             "'train.lr=0.002']}}\n"), {"train", "sample_figures", NEAREST, *EVALUATION}),
}


def _rerun_rules(work: Path, *args: str) -> set[str]:
    proc = snakemake(work, "-n", *args)
    text = proc.stdout + proc.stderr
    return set() if "Nothing to be done" in text else _dry_run_rules(text) - {"all"}


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(RERUNS))
def test_rerun_triggers_are_exactly_what_changes_outputs(pipeline, setting):
    text, expected = RERUNS[setting]
    assert _rerun_rules(pipeline, "--configfile", overlay(pipeline, "rerun.yaml", text)) == expected


@pytest.mark.slow
def test_a_base_config_change_retrains_its_variants_and_a_resave_does_not(pipeline):
    base = pipeline / "config/experiments/paper.yaml"  # tiny.yaml's `base:`
    original = base.read_text()
    try:
        base.write_text(original)  # new mtime, same content
        assert _rerun_rules(pipeline) == set()
        base.write_text(original.replace("adam_eps: 1.0e-8", "adam_eps: 2.0e-8"))
        assert original != base.read_text()
        assert _rerun_rules(pipeline) == {"train", "sample_figures", NEAREST, *EVALUATION}
    finally:
        base.write_text(original)


@pytest.mark.slow
def test_dataset_url_is_not_a_rerun_trigger(pipeline):
    jobs = [_rerun_rules(pipeline, "--configfile", overlay(pipeline, "url.yaml", f"dataset: {{source: download, url: "
                                                                               f"http://127.0.0.1:9/{m}/NMR.zip}}\n"))
            for m in ("a", "mirror")]
    assert jobs[0] == jobs[1]


@pytest.mark.slow
def test_config_given_on_the_command_line_is_typed_by_the_schema(pipeline):
    assert _rerun_rules(pipeline, "--config", "training={nproc: 1}") == set()


@pytest.mark.slow
@pytest.mark.parametrize("text, message", [
    ("shard_sets: {all: {shards: 3}}\ntraining: {nproc: 2}\n", "not divisible"),
    ("shard_sets: {all: {shards: 2, withhold: [spaceship]}}\n", "spaceship"),
    ("evaluation: {checkpoints: [final, 17]}\n", "evaluation.checkpoints [17]"),
    ("shard_sets: {all: {shards: 2, withhold: [car]}}\n", "withholds"),
    ("evaluation: {samplers: [{name: ddpm, spacing: lambda}]}\n", "takes no spacing"),
    ("figures: {sampler: {name: ddim, spacing: leading}}\n", "spacing must be one of"),
])
def test_bad_settings_stop_the_dag_before_any_job_deletes_outputs(pipeline, text, message):
    shards = pipeline / "results/shards/all/manifest.json"
    before = shards.stat().st_mtime_ns
    proc = snakemake(pipeline, "--configfile", overlay(pipeline, "bad.yaml", text), check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "config error:" in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    assert shards.exists() and shards.stat().st_mtime_ns == before


@pytest.mark.slow
def test_more_training_steps_give_new_images_equal_to_a_fresh_folder(pipeline, tmp_path):
    """Raising train.max_steps resumes training, and every image and metric is then that of the
    new checkpoint: equal to sampling it into an empty folder (before, the step-40 images stayed
    and were labelled with the new step)."""
    work = tmp_path / "work"
    shutil.copytree(pipeline, work, symlinks=True)
    sample_dir = work / "results/samples/tiny/final/ddim-10/v2"
    old = packed_images(sample_dir)
    more = overlay(work, "more.yaml", "experiments: {tiny: {config: config/experiments/tiny.yaml, shard_set: all, set: "
                   "['train.max_steps=44', 'train.snapshot_steps=[]', 'train.checkpoint_every=20']}}\n")
    snakemake(work, "--configfile", more)
    new = packed_images(sample_dir)
    assert new.keys() == old.keys() and all(new[k] != old[k] for k in old)
    fresh = tmp_path / "fresh"
    for i in (1, 2):
        subprocess.run(["viewfusion", "sample", "--checkpoint", "results/runs/tiny/final.pt", "--manifest",
                        "results/manifests/all/test-v2.json", "--shards", "results/shards/all", "--out", str(fresh),
                        "--chunk", f"{i}/2", "--sampler", "ddim", "--steps", "10", "--batch-size", "5"],
                       cwd=work, env=_env(), check=True, capture_output=True)
    assert packed_images(fresh) == new
    metrics = pd.read_parquet(sample_dir / "metrics.parquet")
    assert set(metrics["checkpoint_step"]) == {44}
    subprocess.run(["viewfusion", "metrics", "--generated", str(fresh), "--manifest",
                    "results/manifests/all/test-v2.json", "--out", str(tmp_path / "fresh.parquet"), "--no-lpips"],
                   cwd=work, env=_env(), check=True, capture_output=True)
    pd.testing.assert_series_equal(metrics["psnr"], pd.read_parquet(tmp_path / "fresh.parquet")["psnr"])


@pytest.mark.slow
def test_pixelnerf_protocol_scores_softras_objects_without_retraining(pipeline, tmp_path):
    """evaluation.protocol pixelnerf on the finished run: a softras shard set, a seeded view list,
    every other view a target, pixelNeRF's SSIM; no retraining; published rows beside them."""
    work = tmp_path / "work"
    shutil.copytree(pipeline, work, symlinks=True)
    pn = overlay(work, "pn.yaml", "shard_sets: {all: {shards: 2}, softras: {shards: 2, lists: softras}}\n"
                 "evaluation: {protocol: pixelnerf, shard_set: softras, view_counts: [1], max_objects: 2}\n")
    assert "train" not in _rerun_rules(work, "--configfile", pn)
    snakemake(work, "--configfile", pn)
    metrics = pd.read_parquet(work / "results/samples/tiny/final/ddim-10/v1/metrics.parquet")
    assert set(metrics["protocol"]) == {"pixelnerf"} and len(metrics) == 2 * 23
    assert metrics.groupby("key")["target_view"].nunique().eq(23).all()
    views = pd.read_csv(work / "results/tables/views.csv")
    assert "published: pixelNeRF (Yu et al. 2021)" in set(views["source"])
    assert set(views.loc[views["source"] == "measured", "protocol"]) == {"pixelnerf"}


@pytest.mark.slow
def test_published_weights_are_scored_without_training(pipeline, tmp_path):
    """config/eval/official_weights.yaml's route: a paper-architecture file in the official layout
    (random weights, numpy metric scalars, DDP prefix) is imported, sampled and tabled; no train."""
    import numpy as np
    import torch

    from viewfusion.config import from_dict
    from viewfusion.model.build import build_model

    work = tmp_path / "work"
    shutil.copytree(pipeline, work, symlinks=True)
    torch.manual_seed(0)
    model = build_model(from_dict({"name": "paper"}))
    weights = work / "weights" / "best_model_all.pt"
    weights.parent.mkdir()
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}, "it": 710000, "t": 5.6e5, "run_id": "abc",
                "psnr": np.float64(23.5), "ssim": np.float32(0.88)}, weights)
    official = yaml.safe_load((REPO / "config/eval/official_weights.yaml").read_text())
    assert official["experiments"]["official"]["weights"] == "weights/best_model_all.pt"
    small = overlay(work, "small.yaml", "evaluation: {view_counts: [1], max_objects: 2, samplers: "
                    "[{name: ddim, steps: 2}, {name: nearest}]}\nfigures: {enabled: false}\n")
    args = ("--configfile", "config/eval/official_weights.yaml", small)
    assert {"import_weights", "train"} & _rerun_rules(work, *args) == {"import_weights"}
    snakemake(work, *args)
    views = pd.read_csv(work / "results/tables/views.csv")
    measured = views[views["source"] == "measured"]
    assert set(measured["experiment"]) == {"official"} and (measured["checkpoint_step"].dropna() == 710000).all()
    missing = overlay(work, "missing.yaml", "experiments: {official: {weights: nowhere.pt, shard_set: all}}\n")
    proc = snakemake(work, "-n", "--configfile", "config/eval/official_weights.yaml", missing, check=False)
    assert proc.returncode == 2 and "nowhere.pt does not exist" in proc.stderr


def test_table_roles_come_from_the_config(tmp_path):
    """Which experiments a comparison table pairs is configured (roles), not found by default names."""
    work = _copy_workflow(tmp_path)
    roles = overlay(work, "roles.yaml", "roles: {main: tiny, weighting: [tiny, mean_tiny], withheld: []}\n")
    proc = snakemake(work, "-n", "-p", "--configfile", roles)
    command = next(line for line in proc.stdout.splitlines() if "viewfusion tables" in line)
    assert ("--main-experiment tiny --weighting tiny mean_tiny --angle paper relative "
            "--withheld  --withheld-category car") in command, command

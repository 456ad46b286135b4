"""`viewfusion plan`: what a workflow config costs before it runs: per rule the jobs, the U-Net
evaluations and the GPU hours, and whether each sampling chunk fits its job's time limit.

    viewfusion plan --configfile config/paper_workflow.yaml                  # V100 defaults, profiles/slurm
    viewfusion plan --configfile config/paper_workflow.yaml --gpu a100
    viewfusion plan --configfile config/paper_workflow.yaml --rates gpu_check.json   # measured on that GPU
    viewfusion plan --configfile config/paper_workflow.yaml --sample-evals-per-second 2400 --json plan.json

Run it from the workflow's folder, as snakemake: the config is read as Snakemake reads it,
config/config.yaml (--base) with each --configfile merged over it (mappings merge, lists
replace), schema defaults filled in; experiment configs and results/ are relative to it.

Arithmetic (per experiment, checkpoint, sampler and view count v, a "setting"):
* targets T: the evaluation manifest's items when results/manifests/... exists; else the test
  objects (results/data/dataset_check.json when the dataset was verified, else the synthetic
  dataset's exact split, else NMR_TEST_OBJECTS for the real data), after the shard set's
  `percent` and evaluation.max_objects, times evaluation.targets_per_object (pixelnerf: 23 views);
* U-Net evaluations = T x v x calls, calls = viewfusion.samplers.unet_calls (the ancestral
  sampler: the experiment's diffusion.n_timestep, 2000 for the paper; ddim: its steps; Heun
  2 steps - 1; the copy baseline `nearest`: 0, a CPU job);
* a chunk holds at most ceil(T / evaluation.chunks) targets: its hours on one GPU are
  ceil(T / chunks) x v x calls / rate / 3600, against `--margin` x the sample rule's runtime in
  the profile (attempt 1); the chunk count each setting needs is ceil(T x v x calls / (rate x
  budget)), and evaluation.chunks must be at least the largest of them;
* training: train.max_steps x train.global_batch_size x (data.max_views + 1) / 2 U-Net
  forward + backward evaluations (view counts are drawn uniformly in 1..max_views), at the
  training rate of the precision train.precision resolves to on that GPU; wall hours = GPU
  hours / (training.nodes x training.nproc); allocations = wall hours / (the profile's train
  runtime - its early warning).

Rates: a GPU class's default = dense peak TFLOP/s of the dtype x UTILISATION / FLOPs per U-Net
evaluation of the paper model (FLOPS_FORWARD, FLOPS_TRAIN). UTILISATION["fp32"] is calibrated
on the paper's own run (710 k steps of 112 targets in ~6.5 days on 4 V100 in fp32: 124 forward +
backward evaluations/s per V100, 49% of its fp32 peak); UTILISATION["tensor"] (bf16/fp16/TF32
on tensor cores) is an assumption until benchmarks/gpu_check.sh measures it on that GPU (its
JSON's "plan_rates" feed --rates). Sampling runs in fp32, on Ampere and later through cuDNN's
TF32 convolutions. The rates are the paper U-Net's (64 px, 33.9 M parameters): for another model
size pass measured rates.

Torch-free: it reads configs and files only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from viewfusion import samplers, samplestore
from viewfusion.config import ExperimentConfig, select_precision
from viewfusion.configfile import load_config
from viewfusion.data.manifest import workflow_manifest
from viewfusion.errors import ViewFusionError
from viewfusion.workflowconfig import load_workflow_config, profile_minutes

# FLOPs of one U-Net evaluation of the paper model (64 px, batch row of one view):
# forward (benchmarks/model.py, docs/NOTES.md: 21.0 GFLOP) and forward + backward
# (benchmarks/train.py: 61.9 GFLOP).
FLOPS_FORWARD = 21.0e9
FLOPS_TRAIN = 61.9e9
# Dense peak TFLOP/s (no sparsity) per dtype: data sheets. fp32 on CUDA cores; tf32, bf16 and
# fp16 on tensor cores (the V100's tensor cores take fp16 only).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "v100": {"fp32": 15.7, "fp16": 125.0},
    "a100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "l40s": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0},
    "h100": {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0, "fp16": 989.0},
    "h200": {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0, "fp16": 989.0},
}
# Achieved fraction of peak: fp32 from the paper's V100 run (see the module doc), tensor-core
# dtypes assumed (small 64 px convolutions keep tensor cores far from their peak).
PAPER_V100_TRAIN_EVALS_PER_S = 710_000 * 112 * 3.5 / (6.5 * 86_400 * 4)
UTILISATION = {"fp32": PAPER_V100_TRAIN_EVALS_PER_S * FLOPS_TRAIN / (PEAK_TFLOPS["v100"]["fp32"] * 1e12),
               "tensor": 0.25}
# Test objects of the real NMR data when nothing better is known: ViewFusion's test.lst lists
# (the NMR release's per-category test.lst files: 8751) and the SoftRas lists pixelNeRF scores (8762).
NMR_TEST_OBJECTS = {"viewfusion": 8751, "softras": 8762}
PIXELNERF_TARGETS_PER_OBJECT = 23  # one source view, every other view a target
FIGURE_EVALS_PER_STEP = 12 * 6 + sum(range(1, 8))  # figure_samples: 12 targets x 6 views + 7 autoregressive
DEFAULT_MARGIN = 0.75  # a chunk may take this fraction of its job's runtime


def default_rates(gpu: str) -> dict[str, Any]:
    """U-Net evaluations per second of one GPU of class `gpu`: sampling (forward, fp32/TF32)
    and training (forward + backward) per precision, from PEAK_TFLOPS and UTILISATION."""
    if gpu not in PEAK_TFLOPS:
        raise ViewFusionError(f"--gpu {gpu!r}: known classes are {', '.join(PEAK_TFLOPS)}; "
                              "or give measured rates (--rates, --sample-evals-per-second)")
    peaks = PEAK_TFLOPS[gpu]

    def rate(dtype: str, flops: float) -> float:
        kind = "fp32" if dtype == "fp32" else "tensor"
        return peaks[dtype] * 1e12 * UTILISATION[kind] / flops

    sample_dtype = "tf32" if "tf32" in peaks else "fp32"
    return {"gpu": gpu, "source": "default (module viewfusion.plan: peak x utilisation / FLOPs)",
            "sample": rate(sample_dtype, FLOPS_FORWARD),
            "train": {p: rate(p if p in peaks else "fp32", FLOPS_TRAIN) for p in ("fp32", "fp16", "bf16")}}


def bf16_tensor_cores(gpu: str) -> bool:
    return "bf16" in PEAK_TFLOPS.get(gpu, {})


# ---------------------------------------------------------------- targets


def _split_objects(config: dict, shard_set: dict, split: str, root: Path) -> tuple[int, str]:
    """Objects of `split` in a shard set (after percent), and where the number comes from."""
    lists, percent = shard_set.get("lists", "viewfusion"), shard_set.get("percent", 100)
    key = f"{'softras_' if lists == 'softras' else ''}{split}"
    check = root / "results/data/dataset_check.json"
    if check.exists():
        per_category = json.loads(check.read_text()).get("per_category", {}).get(key)
        if per_category:
            return sum(math.ceil(n * percent / 100) for n in per_category.values()), str(check)
    dataset = config.get("dataset", {})
    if dataset.get("source", "synth") == "synth":
        from viewfusion.data.shapes import object_synset
        from viewfusion.data.synth import object_split

        per: dict[str, int] = {}
        for i in range(dataset.get("synth_objects", 260)):
            if object_split(i, lists=lists) == split:
                per[object_synset(i)] = per.get(object_synset(i), 0) + 1
        return sum(math.ceil(n * percent / 100) for n in per.values()), "the synthetic dataset's split"
    if split != "test":
        raise ViewFusionError(f"the size of the NMR {split} split is unknown before the dataset is verified "
                              "(results/data/dataset_check.json); pass --objects")
    total = NMR_TEST_OBJECTS[lists]
    return math.ceil(total * percent / 100), f"NMR {key} ({total} objects, before verification)"


def targets(config: dict, exp: str, views: int, root: Path, objects: int | None) -> tuple[int, str]:
    """Evaluation targets of one experiment and view count, and where the number comes from."""
    ev = config["evaluation"]
    shard_set = ev.get("shard_set") or config["experiments"][exp]["shard_set"]
    pixelnerf = ev["protocol"] == "pixelnerf"
    manifest = root / workflow_manifest(ev["protocol"], shard_set=shard_set, split=ev["split"], views=views)
    if objects is None and manifest.exists():
        return len(json.loads(manifest.read_text())["items"]), str(manifest)
    if objects is not None:
        n, source = objects, "--objects"
    else:
        n, source = _split_objects(config, config["shard_sets"][shard_set], ev["split"], root)
    if ev.get("max_objects"):
        n = min(n, ev["max_objects"])
    per = PIXELNERF_TARGETS_PER_OBJECT if pixelnerf else ev.get("targets_per_object", 1)
    return n * per, source


# ---------------------------------------------------------------- the plan


@dataclass
class Row:
    rule: str
    setting: str
    jobs: int
    unet_evals: float
    gpu_hours: float
    per_job_hours: float | None = None  # the longest job, on one GPU
    limit_hours: float | None = None
    note: str = ""


@dataclass
class Plan:
    config: list[str]
    rates: dict[str, Any]
    profile: dict[str, Any]
    margin: float
    targets: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    chunks: int = 1
    chunks_needed: int = 1
    warnings: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    manifests: set = field(default_factory=set)

    def total(self, rule: str | None = None) -> float:
        return sum(r.gpu_hours for r in self.rows if rule is None or r.rule == rule)

    def jobs(self, rule: str) -> int:
        return sum(r.jobs for r in self.rows if r.rule == rule)


def make_plan(config: dict, *, rates: dict[str, Any], profile: dict[str, Any], margin: float = DEFAULT_MARGIN,
              root: Path = Path("."), objects: int | None = None, sources: list[str] | None = None) -> Plan:
    if not 0 < margin <= 1:
        raise ViewFusionError(f"--margin {margin}: need 0 < margin <= 1")
    ev, training = config["evaluation"], config.get("training", {})
    plan = Plan(config=sources or [], rates=rates, profile=profile, margin=margin, chunks=ev.get("chunks", 1))
    chunk_budget_h = margin * profile["sample"] / 60
    gpus_per_job = training.get("nproc", 1) * training.get("nodes", 1)
    alloc_h = max(profile["train"] - profile["warning_s"] / 60, 1) / 60
    needed = 1
    for exp in config["active_experiments"]:
        spec = config["experiments"][exp]
        cfg: ExperimentConfig = load_config(root / spec["config"], spec.get("set", []))
        # Training: forward + backward per view row, view counts uniform in 1..max_views.
        precision, _ = select_precision(cfg.train.precision, device_type="cuda",
                                        bf16_tensor_cores=bf16_tensor_cores(rates.get("gpu", "")))
        train_rate = rates["train"][precision] if isinstance(rates["train"], dict) else rates["train"]
        evals = cfg.train.max_steps * cfg.train.global_batch_size * (cfg.data.max_views + 1) / 2
        hours = evals / train_rate / 3600
        wall = hours / gpus_per_job
        note = f"{precision}, {gpus_per_job} GPU(s): {wall:.1f} h wall, {math.ceil(wall / alloc_h)} allocation(s)"
        plan.rows.append(Row("train", exp, 1, evals, hours, wall, alloc_h, note))
        if wall > training.get("max_hours", math.inf):
            plan.warnings.append(f"train {exp}: {wall:.0f} h of training exceed training.max_hours "
                                 f"{training['max_hours']}: requeueing stops before final.pt")
        for ckpt in ev["checkpoints"]:
            for sampler in ev["samplers"]:
                tag = samplers.tag_of(sampler)
                calls = 0 if sampler["name"] == samplers.BASELINE else samplers.unet_calls(
                    sampler["name"], sampler.get("steps"), cfg.diffusion.n_timestep)
                for views in ev["view_counts"]:
                    n, source = targets(config, exp, views, root, objects)
                    plan.targets[f"{exp} v{views}"] = {"targets": n, "source": source}
                    setting = f"{exp}/{ckpt}/{tag}/v{views}"
                    _count_files(plan, n, manifest=(ev.get("shard_set") or spec["shard_set"], views))
                    if calls == 0:
                        plan.rows.append(Row("sample_nearest", setting, plan.chunks, 0, 0.0, note="CPU"))
                        continue
                    evals = n * views * calls
                    per_chunk = math.ceil(n / plan.chunks) * views * calls / rates["sample"] / 3600
                    need = math.ceil(evals / rates["sample"] / 3600 / chunk_budget_h)
                    needed = max(needed, need)
                    row = Row("sample", setting, plan.chunks, evals, evals / rates["sample"] / 3600, per_chunk,
                              profile["sample"] / 60, f"needs >= {need} chunks")
                    plan.rows.append(row)
                    if per_chunk > chunk_budget_h:
                        plan.warnings.append(
                            f"sample {setting}: a chunk takes {per_chunk:.2f} h, over {margin:g} x the "
                            f"{profile['sample']} min limit; set evaluation.chunks >= {need}")
        if config.get("figures", {}).get("enabled", True):
            fig = config["figures"]["sampler"]
            calls = samplers.unet_calls(fig["name"], fig.get("steps"), cfg.diffusion.n_timestep)
            evals = FIGURE_EVALS_PER_STEP * calls
            plan.rows.append(Row("sample_figures", exp, 1, evals, evals / rates["sample"] / 3600))
    for exp in config["active_experiments"]:
        for ckpt in ev["checkpoints"]:
            for sampler in ev["samplers"]:
                for views in ev["view_counts"]:
                    plan.rows.append(Row("metrics", f"{exp}/{ckpt}/{samplers.tag_of(sampler)}/v{views}", 1, 0, 0.0,
                                         note="CPU"))
    plan.chunks_needed = needed
    return plan


def _count_files(plan: Plan, targets: int, *, manifest: tuple) -> None:
    """Files one sampling setting leaves (samplestore's packed layout: per chunk its marker,
    pack and progress; the metrics file), against one PNG per image and its ground truth
    copied into every sample directory (the layout before packs); a manifest and its
    ground-truth pack once per (shard set, view count)."""
    files = plan.files
    files["packed"] = files.get("packed", 0) + plan.chunks * samplestore.FILES_PER_CHUNK + 1
    files["one_png_per_image"] = files.get("one_png_per_image", 0) + 2 * targets + 2 * plan.chunks + 1
    if manifest not in plan.manifests:
        plan.manifests.add(manifest)
        files["packed"] += 2
        files["one_png_per_image"] += 1


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 1e4 else f"{x:.3e}"


def render(plan: Plan) -> str:
    r = plan.rates
    train = (", ".join(f"{k} {v:.0f}" for k, v in r["train"].items()) if isinstance(r["train"], dict)
             else f"{r['train']:.0f}")
    lines = [f"viewfusion plan: {' + '.join(plan.config)}",
             (f"rates: {r['source']}, GPU class {r.get('gpu', '?')}: sampling {r['sample']:.0f} U-Net evaluations/s; "
             f"training {train} forward+backward/s"),
             (f"profile: {plan.profile['profile'] or 'none'} (sample {plan.profile['sample']} min, train "
             f"{plan.profile['train']} min, warning {plan.profile['warning_s']} s)")]
    sources = sorted({t["source"] for t in plan.targets.values()})
    counts = sorted({t["targets"] for t in plan.targets.values()})
    lines.append(f"targets per setting: {', '.join(map(str, counts))} ({'; '.join(sources)})")
    lines.append("")
    header = (f"{'rule':<15} {'setting':<34} {'jobs':>6} {'U-Net evals':>12} {'GPU h':>9} {'h/job':>7} "
              f"{'limit h':>7}  note")
    lines += [header, "-" * len(header)]
    for row in plan.rows:
        if row.rule == "metrics":
            continue
        per = "" if row.per_job_hours is None else f"{row.per_job_hours:.2f}"
        limit = "" if row.limit_hours is None else f"{row.limit_hours:.1f}"
        lines.append(f"{row.rule:<15} {row.setting:<34} {row.jobs:>6} {_fmt(row.unet_evals):>12} "
                     f"{row.gpu_hours:>9.1f} {per:>7} {limit:>7}  {row.note}")
    lines.append("")
    lines.append("per rule:")
    for rule in ("train", "sample", "sample_nearest", "sample_figures", "metrics"):
        rows = [x for x in plan.rows if x.rule == rule]
        if rows:
            lines.append(f"  {rule:<15} {sum(x.jobs for x in rows):>6} jobs  "
                         f"{_fmt(sum(x.unet_evals for x in rows)):>10}"
                         f" U-Net evaluations  {plan.total(rule):>9.1f} GPU h" + ("  (CPU)" if rule in (
                             "sample_nearest", "metrics") else ""))
    lines.append(f"  {'these rules':<15} {sum(x.jobs for x in plan.rows):>6} jobs  {'':>10}"
                 f"                    {plan.total():>9.1f} GPU h")
    fits = plan.chunks >= plan.chunks_needed
    lines.append("")
    lines.append(f"sampling chunks: evaluation.chunks {plan.chunks}; every chunk fits {plan.margin:g} x "
                 f"{plan.profile['sample']} min with evaluation.chunks >= {plan.chunks_needed}"
                 + ("" if fits else "  <- RAISE IT"))
    if plan.files:
        lines.append(f"files of sampling and metrics: {plan.files['packed']:,} (packed chunks, ground truth once per "
                     f"manifest); {plan.files['one_png_per_image']:,} with one PNG per image and ground truth per "
                     "sample directory")
    lines += [f"WARNING: {w}" for w in plan.warnings]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", action="append", type=Path, default=[], required=True,
                        help="workflow config merged over --base, as `snakemake --configfile` (repeatable)")
    parser.add_argument("--base", type=Path, default=Path("config/config.yaml"),
                        help="the Snakefile's configfile (default config/config.yaml); 'none' for no base")
    parser.add_argument("--schema", type=Path, default=Path("workflow/schemas/config.schema.yaml"),
                        help="schema whose defaults fill missing keys")
    parser.add_argument("--profile", type=Path, default=None,
                        help="Snakemake profile whose sample/train runtimes bound a job (default profiles/slurm "
                             "when it exists); 'none' for the module's defaults")
    parser.add_argument("--gpu", default="v100", help=f"GPU class for default rates: {', '.join(PEAK_TFLOPS)} "
                                                      "(default v100, the paper's)")
    parser.add_argument("--rates", type=Path, help="JSON with measured rates: benchmarks/gpu_check.sh's output "
                                                   "(its plan_rates) or {\"sample\": evals/s, \"train\": evals/s}")
    parser.add_argument("--sample-evals-per-second", type=float, help="measured sampling rate of one GPU")
    parser.add_argument("--train-evals-per-second", type=float,
                        help="measured forward+backward rate of one GPU in the training precision")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help=f"fraction of the sample runtime a chunk may use (default {DEFAULT_MARGIN})")
    parser.add_argument("--objects", type=int, help="test objects per setting instead of the known/estimated count")
    parser.add_argument("--json", type=Path, help="also write the plan as JSON here")


def resolve_rates(args: argparse.Namespace) -> dict[str, Any]:
    rates = default_rates(args.gpu)
    if args.rates is not None:
        try:
            data = json.loads(args.rates.read_text())
        except (OSError, ValueError) as err:
            raise ViewFusionError(f"--rates {args.rates}: {err}") from None
        data = data.get("plan_rates", data)
        if "sample" not in data or "train" not in data:
            raise ViewFusionError(f"--rates {args.rates}: needs 'sample' and 'train' (or 'plan_rates' holding them)")
        rates = {**rates, **data, "source": f"measured ({args.rates})"}
    if args.sample_evals_per_second is not None:
        rates = {**rates, "sample": args.sample_evals_per_second, "source": "given"}
    if args.train_evals_per_second is not None:
        rates = {**rates, "train": args.train_evals_per_second, "source": "given"}
    for key in ("sample", "train"):
        values = rates[key].values() if isinstance(rates[key], dict) else [rates[key]]
        if not all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in values):
            raise ViewFusionError(f"{key} rate must be a positive number of U-Net evaluations/s, got {rates[key]!r}")
    return rates


def run(args: argparse.Namespace) -> int:
    base = None if str(args.base) == "none" else args.base
    config = load_workflow_config(args.configfile, base, args.schema)
    if args.objects is not None and args.objects < 1:
        raise ViewFusionError(f"--objects {args.objects}: need at least 1")
    if args.profile is None:
        args.profile = Path("profiles/slurm") if Path("profiles/slurm").exists() else Path("none")
    profile = profile_minutes(None if str(args.profile) == "none" else args.profile)
    plan = make_plan(config, rates=resolve_rates(args), profile=profile, margin=args.margin, root=Path(os.getcwd()),
                     objects=args.objects, sources=[str(p) for p in ([base] if base else []) + args.configfile])
    print(render(plan))
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(plan), "manifests": sorted(map(list, plan.manifests))}, indent=1))
    return 0

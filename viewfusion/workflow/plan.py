"""`viewfusion plan`: what a workflow config costs before it runs: per rule the jobs, the U-Net
evaluations and the GPU hours, the chunks of every sampling setting and whether each job fits.

    viewfusion plan --configfile config/paper_workflow.yaml                  # V100 defaults, profiles/slurm
    viewfusion plan --configfile config/paper_workflow.yaml --gpu a100
    viewfusion plan --configfile config/paper_workflow.yaml --rates gpu_check.json   # measured on that GPU
    viewfusion plan --configfile config/paper_workflow.yaml --sample-evals-per-second 2400 --json plan.json

Run it from the workflow's folder, as snakemake: the config is read as Snakemake reads it,
config/config.yaml (--base) with each --configfile merged over it (mappings merge, lists
replace), schema defaults filled in, validated against the schema and checked as the Snakefile
checks it (viewfusion.workflow.checks, with the profile's training GPUs); experiment configs and
the dataset are relative to it.

Arithmetic (per experiment, checkpoint, sampler and view count v, a "setting"):
* targets T of the dataset the config names (viewfusion.workflow.chunking: the synthetic split exactly,
  the NMR zip's lists, or NMR's documented sizes, said so on the first lines), after the shard
  set's `percent` and evaluation.max_objects, times evaluation.targets_per_object (pixelnerf: 23);
* U-Net evaluations = T x v x calls, calls = viewfusion.model.samplers.unet_calls (the ancestral
  sampler: the experiment's diffusion.n_timestep, 2000 for the paper; ddim: its steps; Heun
  2 steps - 1; the copy baseline `nearest`: 0, a CPU job);
* chunks: the workflow's own (viewfusion.workflow.chunking.size_chunks, on the config's sampling rate and
  the profile's sample runtime); each sampling job also pays rates.JOB_STARTUP_SECONDS; a job's
  hours at the plan's rates are checked against evaluation.chunk_share x the runtime, and against
  chunking.MIN_GPU_JOB_MINUTES from below;
* training: train.max_steps x train.global_batch_size x (data.max_views + 1) / 2 U-Net
  forward + backward evaluations (view counts are drawn uniformly in 1..max_views), at the
  training rate of the precision train.precision resolves to on that GPU; wall hours = GPU
  hours / (training.nodes x training.nproc); allocations = wall hours / (the profile's train
  runtime - its early warning).

Rates: viewfusion.workflow.rates (peak x utilisation / FLOPs per GPU class, or measured). Torch-free: it
reads configs and files only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from viewfusion.bounded import load_json
from viewfusion.config import ExperimentConfig, select_precision
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate import samplestore
from viewfusion.model import samplers
from viewfusion.workflow import chunking
from viewfusion.workflow.checks import check_workflow_config, profile_train_gpus
from viewfusion.workflow.config import load_workflow_config, profile_minutes
from viewfusion.workflow.rates import JOB_STARTUP_SECONDS, PEAK_TFLOPS, bf16_tensor_cores, default_rates

FIGURE_EVALS_PER_STEP = 12 * 6 + sum(range(1, 8))  # figure_samples: 12 targets x 6 views + 7 autoregressive

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
    min_job_hours: float | None = None  # the shortest job, on one GPU


@dataclass
class Plan:
    config: list[str]
    rates: dict[str, Any]
    profile: dict[str, Any]
    sizing: chunking.Sizing
    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    manifests: set = field(default_factory=set)

    def total(self, rule: str | None = None) -> float:
        return sum(r.gpu_hours for r in self.rows if rule is None or r.rule == rule)

    def jobs(self, rule: str) -> int:
        return sum(r.jobs for r in self.rows if r.rule == rule)

    def shortest_gpu_job_minutes(self) -> float | None:
        """Minutes of the shortest GPU job (the last chunk of a setting may hold fewer targets)."""
        times = [r.min_job_hours * 60 for r in self.rows if r.rule in GPU_RULES and r.min_job_hours is not None]
        return min(times, default=None)


GPU_RULES = ("train", "sample", "sample_sweep")


def _train_row(plan: Plan, exp: str, cfg: ExperimentConfig, training: dict) -> None:
    """Training: forward + backward per view row, view counts uniform in 1..max_views."""
    rates, profile = plan.rates, plan.profile
    precision, _ = select_precision(cfg.train.precision, device_type="cuda",
                                    bf16_tensor_cores=bf16_tensor_cores(rates.get("gpu", "")))
    train_rate = rates["train"][precision] if isinstance(rates["train"], dict) else rates["train"]
    gpus_per_job = training.get("nproc", 1) * training.get("nodes", 1)
    alloc_h = max(profile["train"] - profile["warning_s"] / 60, 1) / 60
    evals = cfg.train.max_steps * cfg.train.global_batch_size * (cfg.data.max_views + 1) / 2
    hours = evals / train_rate / 3600
    wall = hours / gpus_per_job
    note = f"{precision}, {gpus_per_job} GPU(s): {wall:.1f} h wall, {math.ceil(wall / alloc_h)} allocation(s)"
    plan.rows.append(Row("train", exp, 1, evals, hours, wall, alloc_h, note, min_job_hours=wall))
    if wall > training.get("max_hours", math.inf):
        plan.warnings.append(f"train {exp}: {wall:.0f} h of training exceed training.max_hours "
                             f"{training['max_hours']}: requeueing stops before final.pt")


def _sample_rows(plan: Plan, exp: str, ckpt: str, sampler: dict, views_list: list[int], shard_set: str) -> None:
    """One row per setting (`sample`, `sample_nearest`), or one per sweep (`sample_sweep`)."""
    sizing, rate, startup_h = plan.sizing, plan.rates["sample"], JOB_STARTUP_SECONDS / 3600
    tag = samplers.tag_of(sampler)
    limit_h = plan.profile["sample"] / 60
    budget_h = sizing.budget_minutes / 60
    sweep = Row("sample_sweep", f"{exp}/{ckpt}/{tag}/v*", 1, 0, 0.0, 0.0, limit_h,
                f"one job, view counts {','.join(map(str, views_list))}")
    for views in views_list:
        s = sizing.settings[(exp, tag, views)]
        setting = f"{exp}/{ckpt}/{tag}/v{views}"
        _count_files(plan, s.chunks, s.targets, manifest=(shard_set, views))
        if s.calls == 0:
            plan.rows.append(Row("sample_nearest", setting, 1, 0, 0.0, note="CPU"))
            continue
        evals = s.targets * views * s.calls
        if tag in sizing.swept:
            sweep.unet_evals += evals
            sweep.gpu_hours += evals / rate / 3600 + startup_h
            continue
        longest = math.ceil(s.targets / s.chunks) * views * s.calls / rate / 3600 + startup_h
        shortest = (s.targets // s.chunks) * views * s.calls / rate / 3600 + startup_h
        row = Row("sample", setting, s.chunks, evals, evals / rate / 3600 + s.chunks * startup_h, longest, limit_h,
                  f"{s.chunks} chunk(s)", min_job_hours=shortest)
        plan.rows.append(row)
        if longest > budget_h:
            plan.warnings.append(f"sample {setting}: a chunk takes {longest:.2f} h at these rates, over "
                                 f"{budget_h:.2f} h ({sizing.share:g} x the {plan.profile['sample']} min limit); "
                                 "measure the rate (evaluation.sample_evals_per_second) or raise the runtime")
    if tag in sizing.swept:
        sweep.per_job_hours = sweep.min_job_hours = sweep.gpu_hours
        plan.rows.append(sweep)


def make_plan(config: dict, *, rates: dict[str, Any], profile: dict[str, Any], root: Path = Path("."),
              objects: int | None = None, sources: list[str] | None = None) -> Plan:
    ev, training = config["evaluation"], config.get("training", {})
    sizing = chunking.size_chunks(config, root=root, sample_minutes=profile["sample"], objects=objects)
    plan = Plan(config=sources or [], rates=rates, profile=profile, sizing=sizing)
    for exp in config["active_experiments"]:
        spec = config["experiments"][exp]
        cfg = chunking.experiment_config(spec, root)
        if "weights" not in spec:
            _train_row(plan, exp, cfg, training)
        for ckpt in ev["checkpoints"]:
            for sampler in ev["samplers"]:
                _sample_rows(plan, exp, ckpt, sampler, ev["view_counts"], ev.get("shard_set") or spec["shard_set"])
        if config.get("figures", {}).get("enabled", True):
            fig = config["figures"]["sampler"]
            calls = samplers.unet_calls(fig["name"], fig.get("steps"), cfg.diffusion.n_timestep)
            evals = FIGURE_EVALS_PER_STEP * calls
            plan.rows.append(Row("sample_figures", exp, 1, evals, evals / rates["sample"] / 3600,
                                 note="a CPU job (profiles/slurm)"))
    for exp in config["active_experiments"]:
        for ckpt in ev["checkpoints"]:
            for sampler in ev["samplers"]:
                for views in ev["view_counts"]:
                    plan.rows.append(Row("metrics", f"{exp}/{ckpt}/{samplers.tag_of(sampler)}/v{views}", 1, 0, 0.0,
                                         note="CPU"))
    sets = {shard_set for shard_set, _ in plan.manifests}
    plan.rows.append(Row("shard", ", ".join(sorted(sets)), len(sets), 0, 0.0, note="CPU"))
    for rule in ("eval_manifest", "ground_truth"):
        plan.rows.append(Row(rule, f"{len(sets)} shard set(s) x {len(ev['view_counts'])} view counts",
                             len(plan.manifests), 0, 0.0, note="CPU"))
    shortest = plan.shortest_gpu_job_minutes()
    if shortest is not None and shortest < chunking.MIN_GPU_JOB_MINUTES:
        plan.warnings.append(f"the shortest GPU job takes {shortest:.1f} min, under the "
                             f"{chunking.MIN_GPU_JOB_MINUTES} min a GPU job is worth")
    return plan


def _count_files(plan: Plan, chunks: int, targets: int, *, manifest: tuple) -> None:
    """Files one sampling setting leaves (samplestore's packed layout: per chunk its marker,
    pack and progress; the metrics file), against one PNG per image and its ground truth
    copied into every sample directory (the layout before packs); a manifest and its
    ground-truth pack once per (shard set, view count)."""
    files = plan.files
    files["packed"] = files.get("packed", 0) + chunks * samplestore.FILES_PER_CHUNK + 1
    files["one_png_per_image"] = files.get("one_png_per_image", 0) + 2 * targets + 2 * chunks + 1
    if manifest not in plan.manifests:
        plan.manifests.add(manifest)
        files["packed"] += 2
        files["one_png_per_image"] += 1


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 1e4 else f"{x:.3e}"


def cluster_jobs(plan: Plan) -> int:
    """Slurm submissions of the planned rules: one per job, but the rules the profile groups go
    `group-components` connected components to a submission (a copy-baseline chunk joins the
    component of its metrics job when both are in one group)."""
    groups, per = plan.profile.get("groups", {}), plan.profile.get("group_components", {})
    total, components = 0, {}
    for rule in dict.fromkeys(r.rule for r in plan.rows):
        jobs = plan.jobs(rule)
        group = groups.get(rule)
        if group is None:
            total += jobs
        elif not (rule == "sample_nearest" and groups.get("metrics") == group) and not (
                rule == "eval_manifest" and groups.get("ground_truth") == group):
            components[group] = components.get(group, 0) + jobs
    return total + sum(math.ceil(n / per.get(group, 1)) for group, n in components.items())


def render(plan: Plan) -> str:
    r, sizing = plan.rates, plan.sizing
    train = (", ".join(f"{k} {v:.0f}" for k, v in r["train"].items()) if isinstance(r["train"], dict)
             else f"{r['train']:.0f}")
    counts = sizing.counts.values()
    lines = [f"viewfusion plan: {' + '.join(plan.config)}"]
    if not all(c.exact for c in counts):
        lines.append("ESTIMATE: the target counts are estimated, not counted (see 'targets' below)")
    lines += [f"targets per view count: {', '.join(sorted({str(c.targets) for c in counts}))} "
              f"({'; '.join(sorted({c.source for c in counts}))})",
              (f"rates: {r['source']}, GPU class {r.get('gpu', '?')}: sampling {r['sample']:.0f} U-Net evaluations/s; "
               f"training {train} forward+backward/s; {JOB_STARTUP_SECONDS:g} s start-up per sampling job"),
              (f"profile: {plan.profile['profile'] or 'none'} (sample {plan.profile['sample']} min, train "
               f"{plan.profile['train']} min, warning {plan.profile['warning_s']} s)"),
              (f"chunks: sized on {sizing.rate:.0f} U-Net evaluations/s ({sizing.rate_source}) to fill at most "
               f"{sizing.share:g} x {plan.profile['sample']} min = {sizing.budget_minutes:.0f} min per job"
               + (f"; swept (one job for all view counts): {', '.join(sorted(sizing.swept))}" if sizing.swept else "")),
              ""]
    header = (f"{'rule':<15} {'setting':<34} {'jobs':>6} {'U-Net evals':>12} {'GPU h':>9} {'h/job':>7} "
              f"{'limit h':>7}  note")
    lines += [header, "-" * len(header)]
    for row in plan.rows:
        if row.rule in ("metrics", "shard", "eval_manifest", "ground_truth"):
            continue
        per = "" if row.per_job_hours is None else f"{row.per_job_hours:.2f}"
        limit = "" if row.limit_hours is None else f"{row.limit_hours:.1f}"
        lines.append(f"{row.rule:<15} {row.setting:<34} {row.jobs:>6} {_fmt(row.unet_evals):>12} "
                     f"{row.gpu_hours:>9.1f} {per:>7} {limit:>7}  {row.note}")
    lines += ["", "per rule:"]
    for rule in dict.fromkeys(x.rule for x in plan.rows):
        evals = sum(x.unet_evals for x in plan.rows if x.rule == rule)
        lines.append(f"  {rule:<15} {plan.jobs(rule):>6} jobs  {_fmt(evals):>10} U-Net evaluations  "
                     f"{plan.total(rule):>9.1f} GPU h" + ("" if rule in GPU_RULES else "  (CPU)"))
    lines.append(f"  {'these rules':<15} {sum(x.jobs for x in plan.rows):>6} jobs  {'':>10}"
                 f"                    {plan.total():>9.1f} GPU h")
    shortest = plan.shortest_gpu_job_minutes()
    lines += ["", f"cluster jobs on this profile: {cluster_jobs(plan)} (the profile's groups bundle CPU jobs; "
              "local rules not counted); shortest GPU job "
              + ("none" if shortest is None else f"{shortest:.0f} min")]
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
    parser.add_argument("--gpu", default=None, help=f"GPU class for default rates: {', '.join(PEAK_TFLOPS)} "
                                                    "(default: the config's evaluation.sample_gpu, v100 as the paper)")
    parser.add_argument("--rates", type=Path, help="JSON with measured rates: benchmarks/gpu_check.sh's output "
                                                   "(its plan_rates) or {\"sample\": evals/s, \"train\": evals/s}")
    parser.add_argument("--sample-evals-per-second", type=float, help="measured sampling rate of one GPU")
    parser.add_argument("--train-evals-per-second", type=float,
                        help="measured forward+backward rate of one GPU in the training precision")
    parser.add_argument("--objects", type=int, help="test objects per setting instead of the known/estimated count")
    parser.add_argument("--json", type=Path, help="also write the plan as JSON here")


def resolve_rates(args: argparse.Namespace, config: dict) -> dict[str, Any]:
    rates = default_rates(args.gpu or config["evaluation"].get("sample_gpu", "v100"))
    if args.rates is not None:
        try:
            data = load_json(args.rates)
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
    # What Snakemake refuses when it builds the DAG, refused here too (the profile's training GPUs included).
    check_workflow_config(config, train_gpus=profile_train_gpus(None if str(args.profile) == "none" else args.profile),
                          root=Path(os.getcwd()))
    profile = profile_minutes(None if str(args.profile) == "none" else args.profile)
    plan = make_plan(config, rates=resolve_rates(args, config), profile=profile, root=Path(os.getcwd()),
                     objects=args.objects, sources=[str(p) for p in ([base] if base else []) + args.configfile])
    print(render(plan))
    if args.json is not None:
        sizing = {**asdict(plan.sizing), "settings": [asdict(x) for x in plan.sizing.settings.values()],
                  "swept": sorted(plan.sizing.swept)}
        args.json.write_text(json.dumps({**asdict(plan), "sizing": sizing, "cluster_jobs": cluster_jobs(plan),
                                         "manifests": sorted(map(list, plan.manifests))}, indent=1))
    return 0

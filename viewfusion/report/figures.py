"""The paper's figures as PNG (and GIF) files, with matplotlib's Agg backend and Pillow.

    viewfusion figures --metrics results/samples/*/*/*/v*/metrics.parquet \
        --figure-samples results/figure_samples/paper --out results/figures
    viewfusion figures --grid-samples s/v1 s/v3 s/v6 s/v8 --grid-objects 5 --out figures
    viewfusion figures --figure-samples fig/ --weight-stat average --out figures

- `metrics_vs_views.png` (from `--metrics`): PSNR, SSIM and LPIPS against the number of
  conditioning views, mean and 95% CI as `viewfusion tables` computes them, one line per
  experiment, checkpoint and sampler; view counts above the views the experiments trained with
  (recorded in the metrics; `--max-train-views` where not) are shaded as extrapolation; the
  published pixelNeRF one-view numbers as a labelled marker (`--no-reference` drops it).
- `view_weights_{exp}.png`, `weight_maps_{exp}.png`, `weight_maps_{exp}.gif` (paper Fig. 2) and
  `autoregressive_{exp}.png`, `autoregressive_{exp}.gif` (paper Fig. 3) from each
  `--figure-samples DIR` (drawn by viewfusion.report.weightfigs).
- `extrapolation_grid_{exp}_step{N}_{sampler}-{steps}.png` (sampler e.g. ddim-eta1): rows = view
  counts, columns = objects, from sample directories (`--grid-samples`, else the sample
  directories that hold the `--metrics` files).

Input layouts: docs/FORMATS.md, "Samples" and "Figure inputs". Every file is written
atomically; an input that is absent skips its figure with a printed note.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import pandas as pd

from viewfusion.errors import ViewFusionError
from viewfusion.model.samplers import BASELINE, sampler_name
from viewfusion.model.samplers import label as sampler_label
from viewfusion.report.plotting import open_sample_dir, plt, sample_image, save_figure, show, truth_image
from viewfusion.report.speedtable import speed_selection
from viewfusion.report.tablefiles import summarize
from viewfusion.report.tables import (
    CONFIG,
    PIXELNERF_NUMBERS,
    baseline_once,
    load_metrics,
    trained_views,
)
from viewfusion.report.weightfigs import figure_sample_figures

METRIC_LABELS = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}


# ---------------------------------------------------------------- metrics against view count

def metrics_vs_views(frame: pd.DataFrame, out: Path, *, max_train_views: int = 6, reference: bool = True) -> Path:
    """One panel per metric; error bars are the tables' 95% confidence intervals. View counts
    above the fewest views any shown experiment trained with are shaded as extrapolation."""
    summary = summarize(baseline_once(frame), [*CONFIG, "view_count"])
    limit = min(trained_views(frame, default=max_train_views).values())
    metrics = [m for m in METRIC_LABELS if summary[m].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for config, group in summary.groupby(CONFIG, dropna=False, sort=True):
            protocol, experiment, step, weights, sampler, steps = config
            at = "" if pd.isna(step) else f" @{step} ({weights[:7]})"  # the baseline: one per experiment
            label = f"{experiment}{at} {sampler_label(sampler, steps)} [{protocol}]"
            ax.errorbar(group["view_count"].astype(float), group[metric], yerr=group[f"{metric}_ci95"].fillna(0),
                        marker="o", capsize=3, label=label)
        if summary["view_count"].max() > limit:
            ax.axvspan(limit + 0.5, summary["view_count"].max() + 0.5, color="0.9", label="extrapolation")
        if reference:
            ax.plot([1], [PIXELNERF_NUMBERS["overall"][list(METRIC_LABELS).index(metric)]], marker="*",
                    markersize=11, linestyle="none", markerfacecolor="none", color="k",
                    label="published: pixelNeRF (1 view)")
        ax.set_xlabel("conditioning views")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels)))
    fig.suptitle("Quality against the number of conditioning views (mean, 95% CI)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / "metrics_vs_views.png")


def series_styles(names: list[str]) -> dict[str, tuple]:
    """A (colour, marker) per name, distinct for up to 20 names: matplotlib's default 10-colour
    cycle repeats beyond 10 series, and the samplers overlay draws 13."""
    return {name: (plt.cm.tab20(i % 20), "osD^vPX*<>"[i % 10]) for i, name in enumerate(names)}


def quality_vs_cost(frame: pd.DataFrame, out: Path) -> Path | None:
    """PSNR and LPIPS against U-Net calls per target (log x), one point per sampler setting, on
    the targets every sampler scored (the speed table's selection); None with < 2 settings."""
    selected = speed_selection(frame, preferred=None)
    model = selected[(selected["sampler"] != BASELINE)] if not selected.empty else selected
    if (model.empty or "unet_evals_per_target" not in model
            or model[["sampler", "steps"]].drop_duplicates().shape[0] < 2):
        return None
    summary = summarize(model, ["sampler", "steps"], means=("unet_evals_per_target",))
    metrics = [m for m in ("psnr", "lpips") if summary[m].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    style = series_styles(sorted(summary["sampler"].unique()))
    for ax, metric in zip(axes[0], metrics):
        for sampler, group in summary.groupby("sampler", sort=True):
            group = group.sort_values("unet_evals_per_target")
            color, marker = style[sampler]
            ax.errorbar(group["unet_evals_per_target"], group[metric], yerr=group[f"{metric}_ci95"].fillna(0),
                        color=color, marker=marker, capsize=3, label=sampler)
        base = selected[selected["sampler"] == BASELINE]
        if not base.empty:
            ax.axhline(base[metric].mean(), color="0.5", linestyle="--", label="nearest view copied")
        ax.set_xscale("log")
        ax.set_xlabel("U-Net calls per target")
        ax.set_ylabel(METRIC_LABELS[metric])
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Quality against sampling cost (mean, 95% CI; same targets)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / "quality_vs_unet_calls.png")


# ---------------------------------------------------------------- extrapolation grid

def sample_dir_info(sample_dir: Path) -> dict:
    """Settings (from the chunk markers) and items by object key (from the manifest entries) of a
    finished sample directory; every image shown is checked against its chunk's fingerprint."""
    opened = open_sample_dir(sample_dir)
    items: dict[str, list[tuple[int, str]]] = {}
    for it in opened["entries"].values():
        items.setdefault(it["key"], []).append((int(it["target_view"]), it["item"]))
    views = {len(it["cond_views"]) for it in opened["entries"].values()}
    if len(views) != 1:
        raise ViewFusionError(f"{sample_dir}: expected items of one view count, found {sorted(views) or 'none'}")
    marker = opened["marker"]
    setting = (marker.get("experiment") or "", marker.get("checkpoint_step"), sampler_name(marker), marker.get("steps"))
    return {**opened, "views": views.pop(), "setting": setting, "items": items,
            "max_train_views": marker.get("max_train_views")}


def grid_cells(infos: list[dict], *, objects: int) -> tuple[list[str], dict]:
    """Shared object keys (first `objects` sorted) and, per (row, key), the item to show: the same
    target as in the first row where that row has it."""
    keys = sorted(set.intersection(*(set(info["items"]) for info in infos)))[:objects]
    cells = {}
    for key in keys:
        target, _ = min(infos[0]["items"][key])
        for r, info in enumerate(infos):
            choices = dict(info["items"][key])
            cells[r, key] = (target, choices[target]) if target in choices else min(info["items"][key])
    return keys, cells


def extrapolation_grid(infos: list[dict], out: Path, *, objects: int, max_train_views: int) -> Path | None:
    infos = sorted(infos, key=lambda info: info["views"])
    keys, cells = grid_cells(infos, objects=objects)
    if not keys:
        return None
    fig, axes = plt.subplots(len(infos) + 1, len(keys), figsize=(1.3 * len(keys), 1.35 * (len(infos) + 1)),
                             squeeze=False)
    for c, key in enumerate(keys):
        target, item = cells[0, key]
        show(axes[0][c], truth_image(infos[0], item), f"{key[:14]}\nview {target}")
        for r, info in enumerate(infos, start=1):
            row_target, row_item = cells[r - 1, key]
            show(axes[r][c], sample_image(info, row_item),
                 "" if row_target == target else f"view {row_target}")
    axes[0][0].set_ylabel("ground truth", fontsize=8)
    for r, info in enumerate(infos, start=1):
        extra = " (extrap.)" if info["views"] > (info["max_train_views"] or max_train_views) else ""
        axes[r][0].set_ylabel(f"{info['views']} view{'s' if info['views'] > 1 else ''}{extra}", fontsize=8)
    experiment, step, sampler, steps = infos[0]["setting"]
    fig.suptitle(f"{experiment} @{step}, {sampler}-{steps or 'full'}: generated target by number of views", fontsize=9)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{experiment}_step{step}_{sampler}-{steps or 'full'}")
    return save_figure(fig, out / f"extrapolation_grid_{tag}.png")


# ---------------------------------------------------------------- command

def grid_figures(sample_dirs: list[Path], out: Path, *, objects: int = 6, max_train_views: int = 6) -> list[str]:
    """One extrapolation grid per experiment, checkpoint and sampler with at least two view counts."""
    groups: dict[tuple, dict[int, dict]] = {}
    for sample_dir in sample_dirs:
        info = sample_dir_info(sample_dir)
        groups.setdefault(info["setting"], {}).setdefault(info["views"], info)
    notes = []
    for setting, by_views in groups.items():
        if setting[2] == BASELINE:
            notes.append(f"{setting}: the copy baseline, no extrapolation grid")
        elif len(by_views) < 2:
            notes.append(f"{setting}: one view count only, no extrapolation grid")
        elif extrapolation_grid(list(by_views.values()), out, objects=objects,
                                max_train_views=max_train_views) is None:
            notes.append(f"{setting}: no object shared by all view counts, no extrapolation grid")
    return notes


def default_grid_dirs(metrics_files: list[str]) -> list[Path]:
    """Sample directories holding the metrics files (as the workflow writes them), if any."""
    dirs = [Path(f).parent for f in metrics_files]
    return [d for d in dict.fromkeys(dirs) if (d / "chunks").is_dir()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--metrics", nargs="+", default=[], help="per-image metrics files: metrics_vs_views.png")
    parser.add_argument("--figure-samples", nargs="+", default=[], type=Path,
                        help="`viewfusion sample-figures` directories: weight (Fig. 2) and autoregressive "
                             "(Fig. 3) figures")
    parser.add_argument("--grid-samples", nargs="+", default=None, type=Path,
                        help="sample directories for the extrapolation grid (default: those holding --metrics files)")
    parser.add_argument("--grid-objects", type=int, default=6, help="objects (columns) in the extrapolation grid")
    parser.add_argument("--weight-stat", choices=["final", "average"], default="final",
                        help="Fig. 2 curves: mean weight at the last recorded step, or averaged over steps")
    parser.add_argument("--weight-every", type=int, default=3, help="Fig. 2 grid: show every k-th target view")
    parser.add_argument("--max-train-views", type=int, default=6,
                        help="view counts above it are extrapolation where the metrics do not record the "
                             "checkpoint's own max_views")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="mark the published pixelNeRF one-view numbers (default: on)")


FIGURE_PREFIXES = ("metrics_vs_views", "quality_vs_unet_calls", "view_weights_", "weight_maps_", "autoregressive_",
                   "extrapolation_grid_")


def _earlier_figures(out: Path, *, before: int) -> list[Path]:
    """This command's figure files in `out` older than `before` (ns): not redrawn by this run."""
    return [p for p in out.iterdir() if p.suffix in {".png", ".gif"} and p.name.startswith(FIGURE_PREFIXES)
            and p.stat().st_mtime_ns < before]


def run(args: argparse.Namespace) -> int:
    grid_dirs = args.grid_samples if args.grid_samples is not None else default_grid_dirs(args.metrics)
    if not (args.metrics or args.figure_samples or grid_dirs):
        raise ViewFusionError("nothing to draw: give --metrics, --figure-samples and/or --grid-samples")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time_ns()
    notes = []
    if args.metrics:
        frame = load_metrics(args.metrics)
        metrics_vs_views(frame, out, max_train_views=args.max_train_views, reference=args.reference)
        if quality_vs_cost(frame, out) is None:
            notes.append("quality_vs_unet_calls.png skipped: fewer than two model samplers on common targets")
    for figure_dir in args.figure_samples:
        notes += figure_sample_figures(figure_dir, out, weight_stat=args.weight_stat, weight_every=args.weight_every)
    notes += grid_figures(grid_dirs, out, objects=args.grid_objects, max_train_views=args.max_train_views)
    for stale in _earlier_figures(out, before=started):  # from a run with other inputs: would mislead
        stale.unlink()
        notes.append(f"removed {stale.name}, drawn by an earlier run and not by this one")
    for note in notes:
        print(f"note: {note}")
    print(f"figures in {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.suffix in {'.png', '.gif'}))}")
    return 0

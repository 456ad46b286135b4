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
- `view_weights_{exp}.png`, `weight_maps_{exp}.png`, `weight_maps_{exp}.gif` (paper Fig. 2, from
  the sample directory `DIR/weights/` of each `--figure-samples DIR`): how the weight of each of the six input views
  shifts as the target azimuth turns: the mean weight per view against the target angle, and the
  per-pixel weight maps of the last step next to the generated and true target.
- `autoregressive_{exp}.png`, `autoregressive_{exp}.gif` (paper Fig. 3, from
  `DIR/autoregressive/`): generation from one input view, each generated view joining the
  conditioning set; generated row above the ground truth.
- `extrapolation_grid_{exp}_step{N}_{sampler}-{steps}.png` (sampler e.g. ddim-eta1): rows = view
  counts, columns = objects, from sample directories (`--grid-samples`, else the sample
  directories that hold the `--metrics` files).

Input layouts: docs/FORMATS.md, "Samples" and "Figure inputs". Every file is written
atomically; an input that is absent skips its figure with a printed note.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from viewfusion.data.manifest import read_manifest  # noqa: E402
from viewfusion.data.nmr import NUM_VIEWS  # noqa: E402
from viewfusion.errors import ViewFusionError  # noqa: E402
from viewfusion.fsutil import atomic_path, atomic_write_bytes, plain_name  # noqa: E402
from viewfusion.markers import sampler_name  # noqa: E402
from viewfusion.samplestore import (  # noqa: E402
    WEIGHTS,
    FinishedSamples,
    GroundTruth,
    ground_truth_path,
)
from viewfusion.tables import (  # noqa: E402
    BASELINE,
    CONFIG,
    PIXELNERF_NUMBERS,
    baseline_once,
    load_metrics,
    sampler_label,
    speed_selection,
    summarize,
    trained_views,
)

DEGREES_PER_VIEW = 360 / NUM_VIEWS
METRIC_LABELS = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}


# ---------------------------------------------------------------- helpers

def save_figure(fig: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def render(fig: plt.Figure) -> Image.Image:
    """One GIF frame: the figure rasterised by Agg, as a palette image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def save_gif(frames: list[Image.Image], path: Path, *, ms_per_frame: int = 400) -> Path:
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return path


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as err:
        raise ViewFusionError(f"{path}: not a readable image ({err})") from None


def decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as err:
        raise ViewFusionError(f"{where}: not a readable image ({err})") from None


def open_sample_dir(sample_dir: Path, manifest=None) -> dict:
    """A finished sample directory for plotting: its verified samples, the manifest entries of its
    items and the manifest's ground truth (manifest: as the chunk markers record it, unless given)."""
    samples = FinishedSamples(sample_dir)
    marker = next(iter(samples.chunks.values()))
    manifest = manifest or marker.get("manifest")
    if not manifest or not Path(manifest).is_file():
        raise ViewFusionError(f"{sample_dir}: its chunk markers name no manifest file that exists here "
                              f"({manifest!r}); rerun `viewfusion sample` for it")
    entries = {it["item"]: it for it in read_manifest(manifest)["items"] if it["item"] in samples.owner}
    truth = GroundTruth(ground_truth_path(manifest), marker.get("data_sha256"))
    return {"dir": sample_dir, "samples": samples, "entries": entries, "truth": truth, "marker": marker}


def sample_image(opened: dict, item: str) -> np.ndarray:
    return decode_image(opened["samples"].read(opened["entries"][item]), f"{opened['dir']}: {item}")


def truth_image(opened: dict, item: str) -> np.ndarray:
    return decode_image(opened["truth"].read(opened["entries"][item]), f"{opened['truth'].path}: {item}")


def show(ax: plt.Axes, image: np.ndarray, title: str = "", **kwargs) -> None:
    ax.imshow(image, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ViewFusionError(f"{path}: unreadable ({err})") from None


def experiment_name(figure_dir: Path) -> str:
    done = figure_dir / "done.json"
    name = read_json(done).get("experiment") if done.exists() else None
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name or figure_dir.name)


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


def quality_vs_cost(frame: pd.DataFrame, out: Path) -> Path | None:
    """PSNR and LPIPS against U-Net calls per target (log x), one point per sampler setting, on
    the targets every sampler scored (the speed table's selection); None with < 2 settings."""
    selected = speed_selection(frame, preferred=None)
    model = selected[(selected["sampler"] != BASELINE)] if not selected.empty else selected
    if model.empty or "unet_evals_per_target" not in model or model[["sampler", "steps"]].drop_duplicates().shape[0] < 2:
        return None
    summary = summarize(model, ["sampler", "steps"], means=("unet_evals_per_target",))
    metrics = [m for m in ("psnr", "lpips") if summary[m].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for sampler, group in summary.groupby("sampler", sort=True):
            group = group.sort_values("unet_evals_per_target")
            ax.errorbar(group["unet_evals_per_target"], group[metric], yerr=group[f"{metric}_ci95"].fillna(0),
                        marker="o", capsize=3, label=sampler)
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


# ---------------------------------------------------------------- Figure 2: view weights

def read_weight_samples(weights_dir: Path, *, stat: str = "final") -> tuple[list[int], pd.DataFrame]:
    """(cond views, one row per target: target_view, item, weights (N,), maps (N, H, W), image, gt)."""
    opened = open_sample_dir(weights_dir, weights_dir / "manifest.json")
    items = list(opened["entries"].values())
    keys = {(it["key"], tuple(it["cond_views"])) for it in items}
    if len(keys) != 1:
        raise ViewFusionError(f"{weights_dir}/manifest.json: items must share one object and one set of "
                              f"conditioning views for the weight figure, found {len(keys)}")
    rows = []
    for it in sorted(items, key=lambda it: it["target_view"]):
        with np.load(io.BytesIO(opened["samples"].read(it, WEIGHTS))) as npz:
            mean, final = npz["mean"].astype(np.float64), npz["final"].astype(np.float32)
        rows.append({"target_view": int(it["target_view"]), "item": it["item"], "maps": final,
                     "weights": mean[-1] if stat == "final" else mean.mean(axis=0),
                     "image": sample_image(opened, it["item"]), "gt": truth_image(opened, it["item"])})
    return list(next(iter(keys))[1]), pd.DataFrame(rows)


def view_weight_curves(cond: list[int], samples: pd.DataFrame, path: Path, *, stat: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    azimuth = samples["target_view"] * DEGREES_PER_VIEW
    weights = np.stack(samples["weights"])
    for n, view in enumerate(cond):
        label = f"input view {view} ({view * DEGREES_PER_VIEW:.0f}°)"
        line, = ax.plot(azimuth, weights[:, n], marker="o", markersize=3, label=label)
        ax.axvline(view * DEGREES_PER_VIEW, color=line.get_color(), linestyle=":", linewidth=1)
    ax.axhline(1 / len(cond), color="0.5", linewidth=0.8, label="uniform (mean composition)")
    ax.set_xlabel("target azimuth (degrees)")
    ax.set_ylabel(f"mean weight ({'last step' if stat == 'final' else 'averaged over steps'})")
    ax.set_xlim(-5, 360)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def input_images(samples: pd.DataFrame, cond: list[int]) -> dict[int, np.ndarray]:
    """Pictures of the input views: the ground truth of the target at the same view, if sampled."""
    by_view = dict(zip(samples["target_view"], samples["gt"]))
    return {v: by_view[v] for v in cond if v in by_view}


def weight_map_panel(axes, row: pd.Series, cond: list[int], *, vmax: float) -> None:
    show(axes[0], row["image"], f"generated, view {row['target_view']}")
    show(axes[1], row["gt"], "ground truth")
    for n, view in enumerate(cond):
        show(axes[2 + n], row["maps"][n], f"view {view}: {row['weights'][n]:.2f}", cmap="magma", vmin=0, vmax=vmax)


def weight_maps(cond: list[int], samples: pd.DataFrame, out: Path, *, name: str, every: int) -> tuple[Path, Path]:
    """A grid (inputs on top, one row per shown target) and a GIF over every target."""
    inputs = input_images(samples, cond)
    shown = samples[samples["target_view"] % every == 0]
    # One colour scale for every map (0 to the largest weight), so maps compare across targets.
    vmax = float(max(m.max() for m in samples["maps"]))
    fig, axes = plt.subplots(len(shown) + 1, 2 + len(cond), figsize=(1.3 * (2 + len(cond)), 1.45 * (len(shown) + 1)),
                             squeeze=False)
    for n, view in enumerate(cond):
        show(axes[0][2 + n], inputs.get(view, np.zeros((2, 2, 3), np.uint8)), f"input view {view}")
    for ax in axes[0][:2]:
        ax.axis("off")
    for r, (_, row) in enumerate(shown.iterrows(), start=1):
        weight_map_panel(axes[r], row, cond, vmax=vmax)
    fig.colorbar(axes[-1][-1].images[0], ax=axes[:, 2:].ravel().tolist(), shrink=0.6, label="per-pixel weight")
    fig.suptitle("View weights of the last step (Fig. 2)", fontsize=10)
    png = save_figure(fig, out / f"weight_maps_{name}.png")
    frames = []
    for _, row in samples.iterrows():
        fig, axes = plt.subplots(1, 2 + len(cond), figsize=(1.5 * (2 + len(cond)), 1.9))
        weight_map_panel(axes, row, cond, vmax=vmax)
        fig.suptitle(f"target azimuth {row['target_view'] * DEGREES_PER_VIEW:.0f}°", fontsize=9)
        frames.append(render(fig))
    return png, save_gif(frames, out / f"weight_maps_{name}.gif")


# ---------------------------------------------------------------- Figure 3: autoregressive generation

def autoregressive_columns(figure_dir: Path) -> list[dict]:
    """Columns of the strip: the real input view (when its picture is found), then each step."""
    seq_dir = figure_dir / "autoregressive"
    sequence = read_json(seq_dir / "sequence.json")
    columns = []
    start = sequence.get("start_view")
    weights_dir = figure_dir / "weights"
    if start is not None and (weights_dir / "manifest.json").exists():
        picture = input_images(read_weight_samples(weights_dir)[1], [start]).get(start)
        if picture is not None:
            columns.append({"title": f"input: view {start}", "generated": picture, "gt": picture})
    for step in sequence["steps"]:
        columns.append({
            "title": f"view {step['target_view']} ({len(step['cond'])} in)",
            "generated": read_image(seq_dir / plain_name(step["file"], f"{seq_dir}/sequence.json file")),
            "gt": read_image(seq_dir / plain_name(step["gt"], f"{seq_dir}/sequence.json gt")) if step.get("gt") else None,
        })
    if not columns:
        raise ViewFusionError(f"{seq_dir}/sequence.json lists no steps")
    return columns


def autoregressive_strip(figure_dir: Path, out: Path, *, name: str) -> tuple[Path, Path]:
    columns = autoregressive_columns(figure_dir)
    fig, axes = plt.subplots(2, len(columns), figsize=(1.3 * len(columns), 3.0), squeeze=False)
    for c, column in enumerate(columns):
        show(axes[0][c], column["generated"], column["title"])
        if column["gt"] is not None:
            show(axes[1][c], column["gt"])
        else:
            axes[1][c].axis("off")
    axes[0][0].set_ylabel("generated", fontsize=8)
    axes[1][0].set_ylabel("ground truth", fontsize=8)
    fig.suptitle("Autoregressive generation from one view (Fig. 3): each new view joins the inputs", fontsize=10)
    png = save_figure(fig, out / f"autoregressive_{name}.png")
    frames = []
    for column in columns:
        fig, axes = plt.subplots(1, 2, figsize=(3.2, 1.9))
        show(axes[0], column["generated"], column["title"])
        show(axes[1], column["gt"] if column["gt"] is not None else np.zeros_like(column["generated"]), "ground truth")
        frames.append(render(fig))
    return png, save_gif(frames, out / f"autoregressive_{name}.gif", ms_per_frame=600)


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
    fig, axes = plt.subplots(len(infos) + 1, len(keys), figsize=(1.3 * len(keys), 1.35 * (len(infos) + 1)), squeeze=False)
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

def figure_sample_figures(figure_dir: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """Figures 2 and 3 of one `viewfusion sample-figures` directory; returns notes on what is missing."""
    name, notes = experiment_name(figure_dir), []
    weights_dir = figure_dir / "weights"
    if (weights_dir / "manifest.json").exists():
        cond, samples = read_weight_samples(weights_dir, stat=args.weight_stat)
        view_weight_curves(cond, samples, out / f"view_weights_{name}.png", stat=args.weight_stat,
                           title=f"{name}: view weights as the target turns (Fig. 2)")
        weight_maps(cond, samples, out, name=name, every=args.weight_every)
    else:
        notes.append(f"{weights_dir}/manifest.json missing: no weight figure for {name}")
    if (figure_dir / "autoregressive" / "sequence.json").exists():
        autoregressive_strip(figure_dir, out, name=name)
    else:
        notes.append(f"{figure_dir}/autoregressive/sequence.json missing: no autoregressive figure for {name}")
    return notes


def grid_figures(sample_dirs: list[Path], out: Path, args: argparse.Namespace) -> list[str]:
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
        elif extrapolation_grid(list(by_views.values()), out, objects=args.grid_objects,
                                max_train_views=args.max_train_views) is None:
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
                        help="`viewfusion sample-figures` directories: weight (Fig. 2) and autoregressive (Fig. 3) figures")
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
        notes += figure_sample_figures(figure_dir, out, args)
    notes += grid_figures(grid_dirs, out, args)
    for stale in _earlier_figures(out, before=started):  # from a run with other inputs: would mislead
        stale.unlink()
        notes.append(f"removed {stale.name}, drawn by an earlier run and not by this one")
    for note in notes:
        print(f"note: {note}")
    print(f"figures in {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.suffix in {'.png', '.gif'}))}")
    return 0

"""Figures 2 and 3 of the paper from one `viewfusion sample-figures` directory: how the view
weights shift as the target turns (curves, maps, GIF), and autoregressive generation from one
view (strip, GIF). Inputs: docs/FORMATS.md, "Figure inputs"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from viewfusion.bounded import load_npz
from viewfusion.data.nmr import NUM_VIEWS
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate.samplestore import MAX_WEIGHTS_ARRAY_BYTES, WEIGHTS
from viewfusion.fsutil import plain_name
from viewfusion.report.plotting import (
    experiment_name,
    open_sample_dir,
    plt,
    read_image,
    read_json,
    render,
    sample_image,
    save_figure,
    save_gif,
    show,
    truth_image,
)

DEGREES_PER_VIEW = 360 / NUM_VIEWS


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
        name = f"{weights_dir}: {it['item']}{WEIGHTS}"
        npz = load_npz(opened["samples"].read(it, WEIGHTS), name, max_array_bytes=MAX_WEIGHTS_ARRAY_BYTES)
        if "mean" not in npz or "final" not in npz:
            raise ViewFusionError(f"{name}: no mean or final view weights; sample the weights again")
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

def autoregressive_columns(figure_dir: Path, pictures: dict[int, np.ndarray]) -> list[dict]:
    """Columns of the strip: the real input view (when `pictures`, true views by view index, has
    it), then each step."""
    seq_dir = figure_dir / "autoregressive"
    sequence = read_json(seq_dir / "sequence.json")
    columns = []
    start = sequence.get("start_view")
    if start is not None:
        picture = pictures.get(start)
        if picture is not None:
            columns.append({"title": f"input: view {start}", "generated": picture, "gt": picture})
    for step in sequence["steps"]:
        columns.append({
            "title": f"view {step['target_view']} ({len(step['cond'])} in)",
            "generated": read_image(seq_dir / plain_name(step["file"], f"{seq_dir}/sequence.json file")),
            "gt": (read_image(seq_dir / plain_name(step["gt"], f"{seq_dir}/sequence.json gt"))
                   if step.get("gt") else None),
        })
    if not columns:
        raise ViewFusionError(f"{seq_dir}/sequence.json lists no steps")
    return columns


def autoregressive_strip(figure_dir: Path, out: Path, *, name: str,
                         pictures: dict[int, np.ndarray]) -> tuple[Path, Path]:
    columns = autoregressive_columns(figure_dir, pictures)
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


def figure_sample_figures(figure_dir: Path, out: Path, *, weight_stat: str = "final",
                          weight_every: int = 3) -> list[str]:
    """Figures 2 and 3 of one `viewfusion sample-figures` directory; returns notes on what is missing."""
    name, notes, pictures = experiment_name(figure_dir), [], {}
    weights_dir = figure_dir / "weights"
    if (weights_dir / "manifest.json").exists():
        cond, samples = read_weight_samples(weights_dir, stat=weight_stat)
        pictures = input_images(samples, list(samples["target_view"]))  # read once, for both figures
        view_weight_curves(cond, samples, out / f"view_weights_{name}.png", stat=weight_stat,
                           title=f"{name}: view weights as the target turns (Fig. 2)")
        weight_maps(cond, samples, out, name=name, every=weight_every)
    else:
        notes.append(f"{weights_dir}/manifest.json missing: no weight figure for {name}")
    if (figure_dir / "autoregressive" / "sequence.json").exists():
        autoregressive_strip(figure_dir, out, name=name, pictures=pictures)
    else:
        notes.append(f"{figure_dir}/autoregressive/sequence.json missing: no autoregressive figure for {name}")
    return notes

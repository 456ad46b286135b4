"""Plotting helpers the figures share: matplotlib's Agg backend, figures and GIFs saved
atomically, and images read from files or, verified, from packed sample directories."""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from viewfusion.bounded import load_json  # noqa: E402
from viewfusion.data.manifest import read_manifest  # noqa: E402
from viewfusion.errors import ViewFusionError  # noqa: E402
from viewfusion.evaluate.samplestore import FinishedSamples, ground_truth_path  # noqa: E402
from viewfusion.fsutil import atomic_path, atomic_write_bytes, sha256_file  # noqa: E402

__all__ = ["plt"]  # the pyplot module, imported after the backend is chosen


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
    if marker.get("manifest_sha256") not in (None, sha256_file(manifest)):
        raise ViewFusionError(f"{sample_dir}: {manifest} is not the manifest its chunks were sampled from "
                              "(its sha256 differs from the markers' manifest_sha256); rerun `viewfusion sample`")
    entries = {it["item"]: it for it in read_manifest(manifest)["items"] if it["item"] in samples.owner}
    truth = samples.ground_truth(ground_truth_path(manifest))
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
        return load_json(path)
    except (OSError, ValueError) as err:
        raise ViewFusionError(f"{path}: unreadable ({err})") from None


def experiment_name(figure_dir: Path) -> str:
    done = figure_dir / "done.json"
    name = read_json(done).get("experiment") if done.exists() else None
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name or figure_dir.name)

"""Fingerprints of samples: what made each image, written into the image and its chunk marker.

A sample directory is reused only where its fingerprint matches (docs/FORMATS.md, Samples):

    settings     {format, sampler, steps, eta, [spacing], row_batch, weights, weights_sha256,
                  config_sha256, data_sha256}: everything that changes an image's bytes; spacing
                  only where it is not the sampler's default (viewfusion.model.samplers.DEFAULT_SPACING),
                  so fingerprints made before it was a setting still hold; the copy baseline
                  (`nearest`) runs no network, so its settings leave out weights and config
    fingerprint  sha256 of the settings' canonical JSON
    item tag     sha256 of the manifest entry (item, key, target_view, cond_views, seed)
    made_by      "<fingerprint> <item tag>", stored as the PNG text chunk `viewfusion:made-by`
                 of each image X.png (and key `made_by` of X.npz view weights) in a chunk's pack;
                 ground truth carries the fingerprint of `ground_truth_settings` (its data)

`viewfusion sample` counts an item as done only when its files carry the `made_by` of the
current settings, and `viewfusion metrics` refuses any image whose `made_by` differs from its
chunk marker's: an old image can never be reported under a new label.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

from viewfusion.fsutil import sha256_json
from viewfusion.model.samplers import chosen_spacing

# Bumped whenever the sampling code changes an image's bytes for the same settings, so that
# images of the old code are regenerated, not reused (2: angles exactly as in training).
FORMAT = 2
PNG_KEY = "viewfusion:made-by"
ITEM_FIELDS = ("item", "key", "target_view", "cond_views", "seed")
NETWORK_FIELDS = ("weights", "weights_sha256", "config_sha256")  # absent for the copy baseline


def sample_settings(*, sampler: str, steps: int, eta: float, row_batch: int | None, weights: str,
                    weights_sha256: str | None, config_sha256: str | None, data_sha256: str,
                    spacing: str | None = None) -> dict:
    """The settings that decide an image's bytes (see the module docstring)."""
    settings = {"format": FORMAT, "sampler": sampler, "steps": steps, "eta": eta, "row_batch": row_batch,
                "weights": weights, "weights_sha256": weights_sha256, "config_sha256": config_sha256,
                "data_sha256": data_sha256}
    if chosen_spacing(sampler, spacing):
        settings["spacing"] = spacing
    if sampler == "nearest":  # a copied view depends on the data and the manifest only
        settings = {k: v for k, v in settings.items() if k not in (*NETWORK_FIELDS, "row_batch")}
    return settings


def ground_truth_settings(data_sha256: str) -> dict:
    """Ground truth depends on the data (and, through the item tag, the manifest entry) only."""
    return {"format": FORMAT, "kind": "ground-truth", "data_sha256": data_sha256}


def fingerprint(settings: dict) -> str:
    return sha256_json(settings)


def item_tag(item: dict) -> str:
    """sha256 of the manifest entry that defines a target (its name, object, views and seed)."""
    return sha256_json({k: item.get(k) for k in ITEM_FIELDS})


def made_by(fp: str, item: dict) -> str:
    return f"{fp} {item_tag(item)}"


def png_info(tag: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, tag)
    return info


def png_made_by(path: Path | BinaryIO) -> str | None:
    """The `made_by` text of a PNG file or stream (None if missing, unreadable or written without one)."""
    try:
        with Image.open(path) as image:
            return image.text.get(PNG_KEY)  # tEXt chunks sit before the pixel data: cheap to read
    except (OSError, ValueError):
        return None

"""Hand-made sample directories in the packed layout (viewfusion.evaluate.samplestore), for tests of the
stages that read them (metrics, figures, export) without running a sampler."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from viewfusion.evaluate import provenance, samplestore

DATA = "d" * 64  # the data fingerprint of hand-made ground truth


def marker_settings(*, sampler: str = "ddim", steps: int = 50, eta: float = 0.0, spacing: str | None = None,
                    data: str = DATA) -> dict:
    """What a chunk marker records of its settings, as `viewfusion sample` writes it: the
    settings, their fingerprint and the fields it repeats of them (samplestore.check_marker_settings)."""
    settings = provenance.sample_settings(sampler=sampler, steps=steps, eta=eta, spacing=spacing, row_batch=8,
                                          weights="ema", weights_sha256="a" * 64, config_sha256="c" * 64,
                                          data_sha256=data)
    repeated = {name: settings[name] for name in samplestore.MARKER_SETTINGS if name in settings}
    return {**repeated, "spacing": spacing, "settings": settings, "fingerprint": provenance.fingerprint(settings)}


def png_bytes(array: np.ndarray, made_by: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", pnginfo=None if made_by is None else provenance.png_info(made_by))
    return buffer.getvalue()


def write_chunk(root: Path, stem: str, items: list[dict], images: dict[str, np.ndarray], fp: str,
                weights: dict[str, bytes] | None = None) -> Path:
    """The pack of chunk `stem`: each item's image (and weights npz) tagged with `fp`."""
    members = []
    for it in items:
        members.append((it["item"] + samplestore.IMAGE, png_bytes(images[it["item"]], provenance.made_by(fp, it))))
        if weights is not None:
            members.append((it["item"] + samplestore.WEIGHTS, weights[it["item"]]))
    path = samplestore.pack_path(root, stem)
    samplestore.write_pack(path, members)
    return path


def write_ground_truth(manifest: Path, items: list[dict], gts: dict[str, np.ndarray], data: str = DATA) -> Path:
    """The manifest's ground-truth pack, tagged as `viewfusion ground-truth` tags it."""
    fp = provenance.fingerprint(provenance.ground_truth_settings(data))
    path = samplestore.ground_truth_path(manifest)
    samplestore.write_pack(path, [(it["item"] + samplestore.IMAGE,
                                   png_bytes(gts[it["item"]], provenance.made_by(fp, it))) for it in items])
    return path


def packed_images(root: Path) -> dict[str, bytes]:
    """Every generated image of a sample directory's chunk packs, by member name."""
    found = {}
    for path in sorted((Path(root) / "chunks").glob(f"*{samplestore.PACK}")):
        with samplestore.Pack(path) as pack:
            found |= {name: pack.read(name) for name in pack.members if name.endswith(samplestore.IMAGE)}
    return found

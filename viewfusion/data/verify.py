"""`viewfusion data verify`: an NMR-format zip's structure, and a decoded sample of its objects.

    viewfusion data verify --zip data/nmr/NMR_Dataset.zip            # structure + a decoded sample
    viewfusion data verify --zip data/synth/NMR_Dataset.zip --full   # decode every member

Every object of every split list (both list styles) must have its 24 images and its camera file;
the sampled objects are also read, CRC-checked, decoded, and their camera matrices checked
against their inverses. The layout itself is `viewfusion.data.nmr`'s.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from viewfusion.data.nmr import (
    IMAGE_SIZE,
    LIST_PREFIXES,
    MAX_IMAGE_SIZE,
    NUM_VIEWS,
    SPLITS,
    SYNSETS,
    NMRZip,
    cameras_member,
    check_count,
    decode_png,
    image_member,
    load_cameras,
)
from viewfusion.errors import ViewFusionError


def verify_zip(path, *, image_size: int = IMAGE_SIZE, sample: int = 32, full: bool = False,
               seed: int = 0) -> dict:
    """Check an NMR zip's structure; return a summary dict or raise ViewFusionError.

    Every object of every split list (both list styles) must have its 24 images and its camera
    file; `sample` objects (all with `full`) are also read, CRC-checked, decoded and their
    camera matrices checked against their inverses.
    """
    check_count(image_size, "--image-size", maximum=MAX_IMAGE_SIZE)
    check_count(sample, "--sample", minimum=0)
    with NMRZip(path, image_size=image_size) as nmr:
        counts: dict[str, dict[str, int]] = {}
        objects: set[tuple[str, str]] = set()
        for lists, prefix in LIST_PREFIXES.items():
            for split in SPLITS:
                for synset, name in SYNSETS.items():
                    ids = nmr.split_list(synset, split, lists=lists)
                    counts.setdefault(f"{prefix}{split}", {})[name] = len(ids)
                    objects.update((synset, object_id) for object_id in ids)
        ordered = sorted(objects)
        for synset, object_id in ordered:
            _check_object_members(nmr, synset, object_id)
        rng = np.random.default_rng(seed)
        chosen = ordered if full else [ordered[i] for i in sorted(
            rng.choice(len(ordered), size=min(sample, len(ordered)), replace=False))]
        for synset, object_id in chosen:
            _decode_object(nmr, synset, object_id)
    totals = {split: sum(per.values()) for split, per in counts.items()}
    return {"zip": str(path), "objects": len(ordered), "decoded_objects": len(chosen),
            "splits": totals, "per_category": counts}


def _check_object_members(nmr: NMRZip, synset: str, object_id: str) -> None:
    for member in [image_member(synset, object_id, v) for v in range(NUM_VIEWS)] + [
            cameras_member(synset, object_id)]:
        if not nmr.has(member):
            raise ViewFusionError(f"{nmr.path}: object {synset}/{object_id}: member {member} missing")


def _decode_object(nmr: NMRZip, synset: str, object_id: str) -> None:
    raw = nmr.read_object(synset, object_id)
    for view, data in enumerate(raw.pngs):
        decode_png(data, member=f"{nmr.path}: {image_member(synset, object_id, view)}",
                   image_size=nmr.image_size)
    member = f"{nmr.path}: {cameras_member(synset, object_id)}"
    cameras = load_cameras(raw.cameras, member=member)
    for view in range(NUM_VIEWS):
        for name in ("world_mat", "camera_mat"):
            mat, inv = _as_4x4(cameras[f"{name}_{view}"]), _as_4x4(cameras[f"{name}_inv_{view}"])
            if not np.allclose(mat @ inv, np.eye(4), atol=1e-4):
                raise ViewFusionError(f"{member}: {name}_inv_{view} is not the inverse of {name}_{view}")


def _as_4x4(matrix: np.ndarray) -> np.ndarray:
    if matrix.shape == (4, 4):
        return matrix.astype(np.float64)
    return np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zip", required=True, help="NMR_Dataset.zip (real or synthetic)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="expected image size")
    parser.add_argument("--sample", type=int, default=32, help="objects to decode fully")
    parser.add_argument("--full", action="store_true", help="decode every object (slow on NMR)")
    parser.add_argument("--report", default=None, help="also write the full summary (per category) as JSON")


def run(args: argparse.Namespace) -> int:
    summary = verify_zip(args.zip, image_size=args.image_size, sample=args.sample, full=args.full)
    if args.report:
        from viewfusion.fsutil import atomic_write_json

        atomic_write_json(args.report, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_category"}))
    return 0

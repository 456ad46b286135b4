"""A synthetic dataset in the exact NMR layout: the embedded default of the whole pipeline.

    viewfusion data synth --objects 260 --out data/synth/NMR_Dataset.zip --seed 0
    viewfusion data verify --zip data/synth/NMR_Dataset.zip --full

Each object is a real 3D shape composed of analytic primitives (boxes, ellipsoids, cylinders and
cones; `viewfusion.data.primitives`) by a per-category generator of `viewfusion.data.shapes`:
several shape variants per category for all 13 NMR synsets, with per-part colours. It is
normalised like ShapeNet v1 (bounding-box diagonal 1, centred) and rendered from the 24 NMR
cameras by `viewfusion.data.render`; `cameras.npz` holds the matrices the rays were cast from, in
the NMR convention documented in `viewfusion.data.nmr`.

Object j has category j % 13 and split pattern `_SPLIT_PATTERN[j % 10]` (70% train, 10% val,
20% test; the softras lists use a shifted pattern, so they differ as in the real dataset). Its
shape and id come from `numpy.random.default_rng([seed, j])`, so the output does not depend on
`--workers`, and the zip has fixed timestamps and member order: the same seed gives a
byte-identical zip.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from viewfusion.data import nmr
from viewfusion.data.primitives import Primitive, SynthObject
from viewfusion.data.render import camera_matrices, projection, render
from viewfusion.data.shapes import draw_object, object_id, object_synset
from viewfusion.fsutil import atomic_path
from viewfusion.limits import MAX_PROCESSES

_SPLIT_PATTERN = ("train", "test", "train", "val", "train", "train", "test", "train", "train", "train")
_SOFTRAS_SHIFT = 3
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SUPERSAMPLE = 2
_VIEW_CHUNK = 4
_FILL = 0.9
MAX_OBJECTS = 1_000_000  # NMR has 43,783


def cameras_npz() -> bytes:
    """cameras.npz bytes (same for every object), written with fixed zip timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for view in range(nmr.NUM_VIEWS):
            world_mat, camera_mat = camera_matrices(view)
            arrays = {"world_mat": world_mat, "camera_mat": camera_mat,
                      "world_mat_inv": np.linalg.inv(world_mat), "camera_mat_inv": np.linalg.inv(camera_mat)}
            for name, array in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, array.astype(np.float32), allow_pickle=False)
                _zip_write(zf, f"{name}_{view}.npy", member.getvalue(), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _extent(prim: Primitive) -> np.ndarray:
    """Half-size of the world-axis bounding box of one primitive (conservative for frusta)."""
    if prim.kind == "ellipsoid":
        return np.sqrt(((prim.rotation * prim.half) ** 2).sum(1))
    half = prim.half * ([max(1.0, prim.taper), 1.0, max(1.0, prim.taper)] if prim.kind == "frustum" else 1.0)
    return np.abs(prim.rotation) @ half


def _normalize(parts: list[Primitive]) -> tuple[Primitive, ...]:
    """Centre the bounding box, then scale the object as large as the frame allows: the box's
    corners project within `_FILL` of the image half-width in every view (NMR objects, unit
    size at distance 2.732, fill their frames about this much)."""
    lo = np.min([p.center - _extent(p) for p in parts], axis=0)
    hi = np.max([p.center + _extent(p) for p in parts], axis=0)
    mid = (lo + hi) / 2
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    corners = np.vstack([(signs * (hi - lo) / 2).T, np.ones(8)])
    small, large = 0.0, 2.0 / np.linalg.norm(hi - lo)
    for _ in range(30):  # bisection: the projected size grows monotonically with the scale
        scale = (small + large) / 2
        proj = projection() @ (corners * [[scale], [scale], [scale], [1.0]])
        fits = proj[:, 2].min() > 0 and np.abs(proj[:, :2] / proj[:, 2:3]).max() <= _FILL
        small, large = (scale, large) if fits else (small, scale)
    return tuple(Primitive(p.kind, (p.center - mid) * small, p.rotation, p.half * small,
                           np.clip(p.color, 0.0, 0.85), p.taper) for p in parts)


def object_split(index: int, *, lists: str = "viewfusion") -> str:
    shift = _SOFTRAS_SHIFT if lists == "softras" else 0
    return _SPLIT_PATTERN[(index + shift) % len(_SPLIT_PATTERN)]


def make_object(index: int, *, seed: int = 0) -> SynthObject:
    """Object `index` of the dataset with `seed`: its id, category and normalised primitives."""
    synset, oid, parts = draw_object(index, seed=seed)
    return SynthObject(synset, oid, _normalize(parts))

def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _render_job(job: tuple[int, int, int]) -> tuple[str, str, list[bytes]]:
    index, seed, image_size = job
    obj = make_object(index, seed=seed)
    return obj.synset, obj.object_id, [_png(view) for view in render(obj, image_size=image_size)]


def _zip_write(zf: zipfile.ZipFile, name: str, data: bytes, compress: int) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)  # fixed time: byte-identical output
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _write_index(zf: zipfile.ZipFile, *, objects: int, seed: int) -> None:
    metadata = {s: {"id": s, "name": name} for s, name in nmr.SYNSET_NAMES.items()}
    _zip_write(zf, nmr.ROOT + "metadata.yaml", json.dumps(metadata, indent=2).encode(), zipfile.ZIP_DEFLATED)
    all_ids = [object_id(i, seed=seed) for i in range(objects)]
    for synset in nmr.SYNSETS:
        for lists in nmr.LIST_PREFIXES:
            for split in nmr.SPLITS:
                ids = [all_ids[i] for i in range(objects)
                       if object_synset(i) == synset and object_split(i, lists=lists) == split]
                text = "".join(f"{oid}\n" for oid in ids)
                _zip_write(zf, nmr.list_member(synset, split, lists=lists), text.encode(), zipfile.ZIP_DEFLATED)


def write_synth_zip(out, *, objects: int, seed: int = 0, image_size: int = nmr.IMAGE_SIZE,
                    workers: int = 1) -> dict:
    """Render `objects` objects into an NMR-layout zip at `out` (atomic); return timing stats."""
    # Ranges first: each render allocates image_size^2 x supersampling, the job list and the pool grow
    # with --objects and --workers, so an absurd value would fill memory before any error.
    nmr.check_count(objects, "--objects", maximum=MAX_OBJECTS)
    nmr.check_count(seed, "--seed", minimum=0, maximum=nmr.MAX_SEED)  # numpy refuses negative seeds
    nmr.check_count(image_size, "--image-size", minimum=8, maximum=nmr.MAX_IMAGE_SIZE)
    nmr.check_count(workers, "--workers", maximum=MAX_PROCESSES)
    out = Path(out)
    start = time.perf_counter()
    cameras = cameras_npz()
    jobs = [(index, seed, image_size) for index in range(objects)]
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        _write_index(zf, objects=objects, seed=seed)
        for synset, oid, pngs in _rendered(jobs, workers=workers):
            for view, png in enumerate(pngs):
                # PNGs are compressed already: store them, deflating again gains nothing.
                _zip_write(zf, nmr.image_member(synset, oid, view), png, zipfile.ZIP_STORED)
            _zip_write(zf, nmr.cameras_member(synset, oid), cameras, zipfile.ZIP_DEFLATED)
    seconds = time.perf_counter() - start
    return {"zip": str(out), "objects": objects, "seed": seed, "image_size": image_size,
            "bytes": out.stat().st_size, "seconds": round(seconds, 3),
            "objects_per_s": round(objects / seconds, 1)}


def _rendered(jobs, *, workers: int):
    """Rendered objects in job order; with workers > 1 they come from a process pool."""
    from tqdm import tqdm

    if workers <= 1:
        yield from tqdm(map(_render_job, jobs), total=len(jobs), desc="synth", disable=None)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from tqdm(pool.imap(_render_job, jobs, chunksize=4), total=len(jobs), desc="synth", disable=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objects", type=int, required=True, help="number of objects (category = index %% 13)")
    parser.add_argument("--out", default="data/synth/NMR_Dataset.zip", help="output zip")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical zip")
    parser.add_argument("--image-size", type=int, default=nmr.IMAGE_SIZE, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="rendering processes (the output does not depend on it)")


def run(args: argparse.Namespace) -> int:
    stats = write_synth_zip(args.out, objects=args.objects, seed=args.seed,
                            image_size=args.image_size, workers=args.workers)
    print(json.dumps(stats))
    return 0

"""A synthetic dataset in the exact NMR layout: the embedded default of the whole pipeline.

    viewfusion data synth --objects 260 --out data/synth/NMR_Dataset.zip --seed 0
    viewfusion data verify --zip data/synth/NMR_Dataset.zip --full

Each object is a real 3D shape composed of analytic primitives (boxes, ellipsoids, cylinders and
cones) by a per-category generator of `viewfusion.data.shapes`: several shape variants per category
for all 13 NMR synsets, with per-part colours. It is normalised like ShapeNet v1 (bounding-box
diagonal 1, centred) and ray cast, vectorised in numpy over all 24 views at once, from the NMR
cameras (azimuth 15*i degrees, elevation 30, distance 2.732, field of view 30), with a z-buffer
(nearest hit), Lambertian shading under world-fixed lights (so a surface looks the same from every
view, as in a real render), 2x2 supersampling, on a white background. `cameras.npz` holds the
matrices the rays were cast from, in the NMR convention documented in `viewfusion.data.nmr`.

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
import math
import multiprocessing
import os
import time
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from viewfusion.data import nmr
from viewfusion.data.shapes import (
    Primitive,
    SynthObject,
    draw_object,
    object_id,
    object_synset,
)
from viewfusion.fsutil import atomic_path

_SPLIT_PATTERN = ("train", "test", "train", "val", "train", "train", "test", "train", "train", "train")
_SOFTRAS_SHIFT = 3
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SUPERSAMPLE = 2
_VIEW_CHUNK = 4
_FILL = 0.9
# World-fixed lights: (direction, intensity); plus ambient. Max albedo 0.85 keeps every lit
# surface visibly darker than the white background (the silhouette stays recoverable).
_AMBIENT = 0.35
_LIGHTS = (((0.45, 1.0, 0.6), 0.55), ((-0.6, 0.25, -0.5), 0.2))


# ---------------------------------------------------------------------------------- cameras


def camera_matrices(view: int) -> tuple[np.ndarray, np.ndarray]:
    """(world_mat, camera_mat) of NMR view `view`, float64 4x4 (see `viewfusion.data.nmr`)."""
    az, el = nmr.view_angle(view), math.radians(nmr.ELEVATION_DEG)
    d = nmr.CAMERA_DISTANCE
    # The Kato et al. (NMR) placement: azimuth 0 looks from -z, azimuth grows toward +x.
    eye = np.array([d * math.cos(el) * math.sin(az), d * math.sin(el), -d * math.cos(el) * math.cos(az)])
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    world_mat = np.eye(4)
    world_mat[:3, :3] = np.stack([right, down, forward])
    world_mat[:3, 3] = -world_mat[:3, :3] @ eye
    camera_mat = np.diag([nmr.FOCAL_NDC, nmr.FOCAL_NDC, 1.0, 1.0])
    return world_mat, camera_mat


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


@lru_cache(maxsize=4)
def _rays(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera centres (3, 24) and unit ray directions (3, 24*R*R) of all views at the
    supersampled resolution R (view-major, then row-major), cast from the inverse of the
    matrices that go into cameras.npz. Arrays are (3, N): numpy multiplies (3,3) @ (3,N)
    through BLAS, while (N,3) @ (3,3) takes a slow generic loop (~400x slower here)."""
    res = image_size * _SUPERSAMPLE
    ndc = (2 * np.arange(res) + 1) / res - 1
    v, u = np.meshgrid(ndc, ndc, indexing="ij")
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(res * res), np.zeros(res * res)])
    centres, dirs = [], []
    for view in range(nmr.NUM_VIEWS):
        world_mat, camera_mat = camera_matrices(view)
        cam = np.linalg.inv(camera_mat) @ pixels
        cam[3] = 0.0
        world = (np.linalg.inv(world_mat) @ cam)[:3]
        dirs.append(world / np.linalg.norm(world, axis=0))
        centres.append(np.linalg.inv(world_mat)[:3, 3])
    return np.stack(centres, 1).astype(np.float32), np.concatenate(dirs, 1).astype(np.float32)


@lru_cache(maxsize=1)
def _projection() -> np.ndarray:
    """camera_mat @ world_mat of all views, (24, 4, 4)."""
    return np.stack([c @ w for w, c in (camera_matrices(v) for v in range(nmr.NUM_VIEWS))])


# -------------------------------------------------------------------------------- ray casting
# Each intersector takes ray origins and directions in the part's unit frame, (3, M) each, and
# returns the hit distance (M,) (inf on a miss; distances are invariant under the affine map)
# and an unnormalised normal (3, M) in that frame.


def _intersect_box(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (-1.0 - o) * inv, (1.0 - o) * inv
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_in = np.maximum(np.maximum(near[0], near[1]), near[2])
    t_out = np.minimum(np.minimum(far[0], far[1]), far[2])
    t = np.where((t_in <= t_out) & (t_in > 0), t_in, np.inf)
    # The entry face is the slab whose near distance is the entry distance.
    normal = np.where(near == t_in, -np.sign(d), 0.0).astype(o.dtype)
    return t, normal


def _intersect_sphere(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = (d * d).sum(0), (o * d).sum(0)
    disc = b * b - a * ((o * o).sum(0) - 1.0)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc >= 0) & (t > 0), t, np.inf)
    return t, o + np.where(np.isfinite(t), t, 0.0) * d


def _intersect_frustum(o: np.ndarray, d: np.ndarray, taper: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = (1.0 + taper) / 2, (taper - 1.0) / 2  # radius(y) = a + b*y
    (ox, oy, oz), (dx, dy, dz) = o, d
    k = a + b * oy
    qa = dx * dx + dz * dz - b * b * dy * dy
    qb = ox * dx + oz * dz - b * k * dy
    disc = qb * qb - qa * (ox * ox + oz * oz - k * k)
    best = np.full(o.shape[1], np.inf, dtype=o.dtype)
    cap = np.zeros(o.shape[1], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        roots = [(-qb - np.sqrt(disc)) / qa, (-qb + np.sqrt(disc)) / qa]
        caps = [((-1.0 - oy) / dy, 1.0), ((1.0 - oy) / dy, taper)]
        for t in roots:
            y = oy + t * dy
            ok = (disc >= 0) & (t > 0) & (np.abs(y) <= 1) & (a + b * y >= 0) & (t < best)
            best = np.where(ok, t, best)
        for t, radius in caps:
            x, z = ox + t * dx, oz + t * dz
            ok = (t > 0) & (x * x + z * z <= radius * radius) & (t < best)
            best, cap = np.where(ok, t, best), cap | ok
    p = o + np.where(np.isfinite(best), best, 0.0) * d
    side_normal = np.stack([p[0], -b * (a + b * p[1]), p[2]])
    cap_normal = np.stack([np.zeros_like(best), np.sign(p[1]), np.zeros_like(best)])
    return best, np.where(cap, cap_normal, side_normal)


def _intersect(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if prim.kind == "box":
        return _intersect_box(o, d)
    if prim.kind == "ellipsoid":
        return _intersect_sphere(o, d)
    return _intersect_frustum(o, d, prim.taper)


def _screen_rects(prim: Primitive, *, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last (column, row) of the supersampled pixels, per view (24, 2) each, inside
    the rectangle that the part's local bounding box projects to: only those rays can hit it."""
    radial = max(1.0, prim.taper) if prim.kind == "frustum" else 1.0
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    corners = prim.center + (signs * prim.half * [radial, 1.0, radial]) @ prim.rotation.T
    proj = _projection() @ np.vstack([corners.T, np.ones(8)])  # (24, 4, 8)
    ndc = proj[:, :2] / proj[:, 2:3]  # corners sit in front of every camera
    res = image_size * _SUPERSAMPLE
    low = np.clip(np.ceil(((ndc.min(2) + 1) * res - 1) / 2), 0, res).astype(int)
    high = np.clip(np.floor(((ndc.max(2) + 1) * res - 1) / 2), -1, res - 1).astype(int)
    return low, high


def _candidate_rays(low: np.ndarray, high: np.ndarray, views: range, res: int) -> np.ndarray:
    """Indices, relative to the first of `views`, of the rays inside each view's rectangle."""
    blocks = []
    for offset, view in enumerate(views):
        (col0, row0), (col1, row1) = low[view], high[view]
        if col1 >= col0 and row1 >= row0:
            rows = np.arange(row0, row1 + 1) * res + offset * res * res
            blocks.append((rows[:, None] + np.arange(col0, col1 + 1)).ravel())
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=int)


def render(obj: SynthObject, *, image_size: int = nmr.IMAGE_SIZE) -> np.ndarray:
    """All 24 views of `obj` as (24, H, W, 3) uint8: z-buffered, Lambertian, white background.

    Views are cast `_VIEW_CHUNK` at a time: the per-ray buffers then stay in the CPU cache,
    which makes the whole render ~3x faster than one pass over all 24 views."""
    centres, dirs = _rays(image_size)
    res = image_size * _SUPERSAMPLE
    rects = [_screen_rects(prim, image_size=image_size) for prim in obj.primitives]
    chunks = []
    for first in range(0, nmr.NUM_VIEWS, _VIEW_CHUNK):
        views = range(first, min(first + _VIEW_CHUNK, nmr.NUM_VIEWS))
        chunk_dirs = dirs[:, first * res * res : views.stop * res * res]
        normal, part = _cast(obj, rects, views, centres[:, views.start : views.stop], chunk_dirs, res)
        chunks.append(_shade(obj, normal, part, chunk_dirs, image_size))
    return np.concatenate(chunks)


def _cast(obj, rects, views: range, centres, dirs, res) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffered ray casting of `views`: per ray the hit part's index (-1 = none) and normal."""
    depth = np.full(dirs.shape[1], np.inf, dtype=np.float32)
    normal = np.zeros_like(dirs)
    part = np.full(dirs.shape[1], -1, dtype=np.int16)
    for index, (prim, (low, high)) in enumerate(zip(obj.primitives, rects)):
        rays = _candidate_rays(low, high, views, res)
        if not len(rays):
            continue
        # World -> unit frame of the part: x_local = diag(1/half) R^T (x - centre).
        to_local = (prim.rotation.T / prim.half[:, None]).astype(np.float32)
        o_views = to_local @ (centres - prim.center[:, None].astype(np.float32))
        t, n_local = _intersect(prim, o_views[:, rays // (res * res)], to_local @ dirs[:, rays])
        closer = t < depth[rays]
        rays = rays[closer]
        depth[rays] = t[closer]
        normal[:, rays] = to_local.T @ n_local[:, closer]  # normals map by the inverse transpose
        part[rays] = index
    return normal, part


def _shade(obj, normal, part, dirs, image_size) -> np.ndarray:
    hit = np.flatnonzero(part >= 0)
    n = normal[:, hit]
    n /= np.sqrt(np.maximum((n * n).sum(0), 1e-24))
    # Rays always hit outer faces; flip any normal that points away from the viewer anyway.
    n *= -np.sign((n * dirs[:, hit]).sum(0) + 1e-12)
    units = np.array([np.asarray(v) / np.linalg.norm(v) for v, _ in _LIGHTS], np.float32)
    intensity = np.array([i for _, i in _LIGHTS], np.float32)
    light = _AMBIENT + intensity @ np.maximum(units @ n, 0.0)
    colors = np.stack([p.color for p in obj.primitives]).astype(np.float32)
    rgb = np.ones((dirs.shape[1], 3), dtype=np.float32)
    rgb[hit] = colors[part[hit]] * light[:, None]
    s = _SUPERSAMPLE
    blocks = rgb.reshape(-1, image_size, s, image_size, s, 3)
    # Box filter as a sum of strided slices (a mean over inner axes is a slow reduce).
    total = sum(blocks[:, :, i, :, j] for i in range(s) for j in range(s))
    return np.clip(np.rint(total * (255 / s**2)), 0, 255).astype(np.uint8)


def surface_points(obj: SynthObject, *, per_primitive: int = 200, seed: int = 0) -> np.ndarray:
    """Points on every primitive's surface (P, 3), world coordinates; for projection tests."""
    rng = np.random.default_rng(seed)
    points = []
    for prim in obj.primitives:
        if prim.kind == "box":
            local = rng.uniform(-1, 1, (per_primitive, 3))
            axis = rng.integers(0, 3, per_primitive)
            local[np.arange(per_primitive), axis] = rng.choice([-1.0, 1.0], per_primitive)
        elif prim.kind == "ellipsoid":
            local = rng.normal(size=(per_primitive, 3))
            local /= np.linalg.norm(local, axis=1, keepdims=True)
        else:
            y = rng.uniform(-1, 1, per_primitive)
            angle = rng.uniform(0, 2 * np.pi, per_primitive)
            radius = (1 + prim.taper) / 2 + (prim.taper - 1) / 2 * y
            local = np.stack([radius * np.cos(angle), y, radius * np.sin(angle)], 1)
        points.append(prim.center + (local * prim.half) @ prim.rotation.T)
    return np.concatenate(points)


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
        proj = _projection() @ (corners * [[scale], [scale], [scale], [1.0]])
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
    nmr.check_count(objects, "--objects")
    nmr.check_count(seed, "--seed", minimum=0)  # numpy refuses negative seeds
    nmr.check_count(image_size, "--image-size", minimum=8)
    nmr.check_count(workers, "--workers")
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

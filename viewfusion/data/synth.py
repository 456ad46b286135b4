"""A synthetic dataset in the exact NMR layout: the embedded default of the whole pipeline.

    viewfusion data synth --objects 260 --out data/synth/NMR_Dataset.zip --seed 0
    viewfusion data verify --zip data/synth/NMR_Dataset.zip --full

Each object is a real 3D shape composed of analytic primitives (boxes, ellipsoids, cylinders and
cones) by a per-category generator: several shape variants per category for all 13 NMR synsets,
with per-part colours. It is normalised like ShapeNet v1 (bounding-box diagonal 1, centred) and
ray cast, vectorised in numpy over all 24 views at once, from the NMR cameras (azimuth 15*i
degrees, elevation 30, distance 2.732, field of view 30), with a z-buffer (nearest hit), Lambertian
shading under world-fixed lights (so a surface looks the same from every view, as in a real
render), 2x2 supersampling, on a white background. `cameras.npz` holds the matrices the rays
were cast from, in the NMR convention documented in `viewfusion.data.nmr`.

Object j has category j % 13 and split pattern `_SPLIT_PATTERN[j % 10]` (70% train, 10% val,
20% test; the softras lists use a shifted pattern, so they differ as in the real dataset). Its
shape and id come from `numpy.random.default_rng([seed, j])`, so the output does not depend on
`--workers`, and the zip has fixed timestamps and member order: the same seed gives a
byte-identical zip.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import math
import multiprocessing
import os
import time
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from viewfusion.data import nmr
from viewfusion.errors import ViewFusionError
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


@dataclass(frozen=True)
class Primitive:
    """A solid in its local frame scaled by `half`: box [-1,1]^3, unit sphere, or a frustum
    around local y (radius 1 at y=-1, `taper` at y=+1); `rotation` maps local to world axes."""

    kind: str
    center: np.ndarray
    rotation: np.ndarray
    half: np.ndarray
    color: np.ndarray
    taper: float = 1.0


@dataclass(frozen=True)
class SynthObject:
    synset: str
    object_id: str
    primitives: tuple[Primitive, ...]


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


def _intersect(prim: "Primitive", o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------- shape generators


def _rot(*, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """R_y(yaw) @ R_z(pitch) @ R_x(roll): yaw turns about the up axis."""
    cy, sy, cz, sz, cx, sx = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return r_y @ r_z @ r_x


# Rotations taking a cylinder's local y axis onto world x, y or z.
_AXES = {"x": _rot(pitch=-math.pi / 2), "y": np.eye(3), "z": _rot(roll=math.pi / 2)}


class _Parts:
    """Collects primitives while a category generator builds one object."""

    def __init__(self):
        self.items: list[Primitive] = []

    def box(self, center, half, color, **angles) -> None:
        self.items.append(Primitive("box", np.asarray(center, float), _rot(**angles),
                                    np.asarray(half, float), np.asarray(color, float)))

    def ellipsoid(self, center, half, color, **angles) -> None:
        self.items.append(Primitive("ellipsoid", np.asarray(center, float), _rot(**angles),
                                    np.asarray(half, float), np.asarray(color, float)))

    def cylinder(self, center, radius, half_height, color, *, axis="y", taper=1.0, radius2=None,
                 **angles) -> None:
        """A cylinder (taper 1) or cone frustum (top radius = taper * radius) along `axis`."""
        half = np.array([radius, half_height, radius if radius2 is None else radius2], float)
        self.items.append(Primitive("frustum", np.asarray(center, float), _rot(**angles) @ _AXES[axis],
                                    half, np.asarray(color, float), float(taper)))


def _hue(rng, *, sat=(0.35, 0.85), val=(0.35, 0.85)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)))


def _gray(rng, lo=0.12, hi=0.8) -> np.ndarray:
    return np.full(3, rng.uniform(lo, hi))


def _wood(rng) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.11), rng.uniform(0.45, 0.75),
                                        rng.uniform(0.3, 0.75)))


def _material(rng) -> np.ndarray:
    pick = rng.integers(3)
    return _hue(rng) if pick == 0 else _gray(rng) if pick == 1 else _wood(rng)


def _airplane(rng, p: _Parts) -> None:
    length, radius = rng.uniform(0.9, 1.2), rng.uniform(0.045, 0.08)
    body = _gray(rng, 0.55, 0.85) if rng.random() < 0.6 else _hue(rng)
    accent = _hue(rng)
    p.ellipsoid((0, 0, 0), (length / 2, radius, radius), body)
    span, chord, sweep = rng.uniform(0.35, 0.6), rng.uniform(0.1, 0.2), rng.uniform(0.0, 0.6)
    wing_x, wing_y = rng.uniform(-0.1, 0.08), rng.uniform(-0.7, 0.5) * radius
    wing = body if rng.random() < 0.5 else accent
    for side in (-1, 1):
        # A swept wing: the box's long axis leans back by `sweep`, root at the fuselage.
        p.box((wing_x - math.sin(sweep) * span / 2, wing_y, side * math.cos(sweep) * span / 2),
              (chord / 2, 0.012, span / 2), wing, yaw=-side * sweep)
        tail_span = span * rng.uniform(0.25, 0.4)
        p.box((-length / 2 + chord * 0.4 - math.sin(sweep) * tail_span / 2, radius * 0.3,
               side * tail_span / 2), (chord * 0.3, 0.008, tail_span / 2), wing, yaw=-side * sweep)
    fin_h = rng.uniform(0.1, 0.2)
    p.box((-length / 2 + chord * 0.35, radius + fin_h / 2 - 0.01, 0), (chord * 0.35, fin_h / 2, 0.008),
          accent, pitch=rng.uniform(-0.4, 0.0))
    if rng.random() < 0.6:
        engines = rng.integers(1, 3)
        for side in (-1, 1):
            for k in range(engines):
                z = side * span * (0.3 + 0.3 * k)
                p.cylinder((wing_x + 0.05 - math.sin(sweep) * abs(z), wing_y - 0.045, z), 0.03, 0.07,
                           _gray(rng, 0.2, 0.6), axis="x", taper=0.8)


def _bench(rng, p: _Parts) -> None:
    length, depth, height = rng.uniform(0.9, 1.3), rng.uniform(0.28, 0.42), rng.uniform(0.35, 0.5)
    seat, frame = _material(rng), _gray(rng, 0.1, 0.5) if rng.random() < 0.5 else _wood(rng)
    slats = rng.integers(1, 5)
    for k in range(slats):
        width = depth / slats
        p.box((0, height, -depth / 2 + width * (k + 0.5)), (length / 2, 0.018, width / 2 - 0.006 * (slats > 1)), seat)
    if rng.random() < 0.5:
        for x in (-1, 1):
            for z in (-1, 1):
                p.box((x * (length / 2 - 0.07), height / 2, z * (depth / 2 - 0.04)), (0.025, height / 2, 0.025), frame)
    else:
        for x in (-1, 1):
            p.box((x * (length / 2 - 0.1), height / 2, 0), (0.02, height / 2, depth / 2 - 0.01), frame)
    if rng.random() < 0.6:
        back_h, tilt = rng.uniform(0.2, 0.35), rng.uniform(0.0, 0.3)
        p.box((0, height + 0.03 + back_h / 2 * math.cos(tilt), depth / 2 + back_h / 2 * math.sin(tilt)),
              (length / 2, back_h / 2, 0.02), seat, roll=tilt)


def _cabinet(rng, p: _Parts) -> None:
    width, height, depth = rng.uniform(0.45, 0.9), rng.uniform(0.5, 1.1), rng.uniform(0.3, 0.5)
    lift = rng.uniform(0.04, 0.1) if rng.random() < 0.3 else 0.0
    body, front, handle = _material(rng), _material(rng), _gray(rng, 0.1, 0.7)
    p.box((0, lift + height / 2, 0), (width / 2, height / 2, depth / 2), body)
    drawers = rng.random() < 0.4
    count = rng.integers(2, 5) if drawers else rng.integers(1, 3)
    for k in range(count):
        if drawers:
            center, half = (0, lift + height * (k + 0.5) / count, -depth / 2 - 0.01), (width / 2 - 0.03, height / (2 * count) - 0.015, 0.01)
            handle_at = (0, center[1], -depth / 2 - 0.03)
        else:
            center, half = (width * ((k + 0.5) / count - 0.5), lift + height / 2, -depth / 2 - 0.01), (width / (2 * count) - 0.02, height / 2 - 0.03, 0.01)
            handle_at = (center[0] + half[0] * 0.7 * (1 if k == 0 and count == 2 else -1), center[1], -depth / 2 - 0.03)
        p.box(center, half, front)
        p.box(handle_at, (0.012, 0.04, 0.012) if not drawers else (0.05, 0.012, 0.012), handle)
    if rng.random() < 0.5:
        p.box((0, lift + height + 0.015, 0), (width / 2 + 0.03, 0.015, depth / 2 + 0.03), _material(rng))
    if lift:
        for x in (-1, 1):
            for z in (-1, 1):
                p.cylinder((x * (width / 2 - 0.05), lift / 2, z * (depth / 2 - 0.05)), 0.025, lift / 2, handle)


def _car(rng, p: _Parts) -> None:
    length, width = 1.0, rng.uniform(0.4, 0.5)
    body_h, wheel_r = rng.uniform(0.15, 0.24), rng.uniform(0.09, 0.13)
    paint, glass, tyre = _hue(rng, sat=(0.2, 0.9), val=(0.25, 0.85)), _hue(rng, sat=(0.1, 0.4), val=(0.15, 0.35)), _gray(rng, 0.06, 0.18)
    bottom = wheel_r * rng.uniform(0.7, 0.9)
    p.box((0, bottom + body_h / 2, 0), (length / 2, body_h / 2, width / 2), paint)
    style = rng.choice(["sedan", "van", "pickup", "hatch"], p=[0.45, 0.2, 0.15, 0.2])
    cabin_len = {"sedan": 0.5, "van": 0.8, "pickup": 0.3, "hatch": 0.55}[style] * rng.uniform(0.85, 1.1)
    cabin_x = {"sedan": -0.05, "van": -0.08, "pickup": 0.12, "hatch": -0.15}[style] + rng.uniform(-0.05, 0.05)
    cabin_h = rng.uniform(0.12, 0.2) * (1.4 if style == "van" else 1.0)
    top = bottom + body_h
    p.box((cabin_x, top + cabin_h / 2, 0), (cabin_len / 2, cabin_h / 2, width / 2 * 0.88), glass)
    p.box((cabin_x, top + cabin_h + 0.01, 0), (cabin_len / 2 * 0.92, 0.012, width / 2 * 0.86), paint)
    axle = length / 2 - rng.uniform(0.14, 0.2)
    for x in (-axle, axle):
        for z in (-1, 1):
            p.cylinder((x, wheel_r, z * (width / 2 - 0.02)), wheel_r, rng.uniform(0.035, 0.05), tyre, axis="z")
            p.cylinder((x, wheel_r, z * (width / 2 + 0.03)), wheel_r * 0.5, 0.006, _gray(rng, 0.5, 0.8), axis="z")
    light = np.array([0.85, 0.82, 0.55])
    for z in (-1, 1):
        p.box((length / 2 + 0.005, top - 0.04, z * width * 0.32), (0.008, 0.02, 0.04), light)


def _chair(rng, p: _Parts) -> None:
    height, width, depth = rng.uniform(0.4, 0.5), rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.5)
    thick = rng.uniform(0.03, 0.07)
    fabric, frame = _material(rng), _material(rng)
    p.box((0, height, 0), (width / 2, thick / 2, depth / 2), fabric)
    if rng.random() < 0.7:
        round_legs = rng.random() < 0.5
        for x in (-1, 1):
            for z in (-1, 1):
                at = (x * (width / 2 - 0.04), height / 2, z * (depth / 2 - 0.04))
                if round_legs:
                    p.cylinder(at, 0.022, height / 2, frame, taper=rng.uniform(0.6, 1.0))
                else:
                    p.box(at, (0.02, height / 2, 0.02), frame)
    else:
        p.cylinder((0, height / 2, 0), 0.03, height / 2, frame)
        for k in range(5):
            angle = 2 * math.pi * k / 5
            p.box((0.14 * math.cos(angle), 0.03, 0.14 * math.sin(angle)), (0.14, 0.02, 0.02), frame, yaw=-angle)
    back_h, tilt = rng.uniform(0.35, 0.6), rng.uniform(0.0, 0.3)
    base = np.array([0, height + back_h / 2 * math.cos(tilt), depth / 2 + back_h / 2 * math.sin(tilt)])
    if rng.random() < 0.7:
        p.box(base, (width / 2, back_h / 2, 0.025), fabric, roll=tilt)
    else:
        slats = rng.integers(3, 6)
        for k in range(slats):
            p.box(base + [width * ((k + 0.5) / slats - 0.5), 0, 0], (0.015, back_h / 2, 0.018), frame, roll=tilt)
        p.box(base + [0, back_h / 2 * math.cos(tilt), back_h / 2 * math.sin(tilt)], (width / 2, 0.03, 0.025), fabric, roll=tilt)
    if rng.random() < 0.35:
        for x in (-1, 1):
            p.box((x * width / 2, height + 0.2, 0), (0.025, 0.02, depth / 2), frame)
            p.box((x * width / 2, height + 0.1, -depth / 2 + 0.04), (0.02, 0.1, 0.02), frame)


def _display(rng, p: _Parts) -> None:
    width = rng.uniform(0.75, 1.0)
    height, depth = width * rng.uniform(0.55, 0.8), rng.uniform(0.03, 0.06)
    bezel, screen, stand = _gray(rng, 0.08, 0.6), _hue(rng, sat=(0.2, 0.7), val=(0.15, 0.5)), _gray(rng, 0.1, 0.7)
    neck = rng.uniform(0.1, 0.25)
    mid = 0.02 + neck + height / 2
    p.box((0, mid, 0), (width / 2, height / 2, depth / 2), bezel)
    margin = rng.uniform(0.015, 0.05)
    p.box((0, mid, -depth / 2 - 0.004), (width / 2 - margin, height / 2 - margin, 0.004), screen)
    if rng.random() < 0.2:  # an old CRT: a deep back housing
        p.box((0, mid, depth / 2 + height * 0.3), (width * 0.35, height * 0.35, height * 0.3), bezel)
    p.box((0, 0.02 + neck / 2, depth / 2 + 0.02), (0.03, neck / 2, 0.02), stand)
    if rng.random() < 0.5:
        p.box((0, 0.01, 0.05), (width * rng.uniform(0.2, 0.35), 0.012, rng.uniform(0.1, 0.18)), stand)
    else:
        p.ellipsoid((0, 0.01, 0.05), (width * 0.25, 0.015, 0.14), stand)


def _lamp(rng, p: _Parts) -> None:
    metal, shade = _gray(rng, 0.1, 0.7), _hue(rng, sat=(0.1, 0.7), val=(0.55, 0.85))
    base_r = rng.uniform(0.1, 0.2)
    p.cylinder((0, 0.025, 0), base_r, 0.025, metal, taper=rng.uniform(0.5, 1.0))
    if rng.random() < 0.35:  # a desk lamp: two arm segments and a tilted shade
        tip = np.array([0.0, 0.05, 0.0])
        for angle, length in ((rng.uniform(0.2, 0.6), rng.uniform(0.35, 0.5)), (rng.uniform(-1.6, -0.9), rng.uniform(0.3, 0.45))):
            direction = np.array([-math.sin(angle), math.cos(angle), 0.0])
            p.cylinder(tip + direction * length / 2, 0.014, length / 2, metal, pitch=angle)
            tip = tip + direction * length
        p.cylinder(tip + [0.03, -0.06, 0], rng.uniform(0.08, 0.13), 0.07, shade, taper=0.45, pitch=rng.uniform(0.3, 0.8))
        return
    pole = rng.uniform(0.5, 1.0)
    p.cylinder((0, 0.05 + pole / 2, 0), 0.015, pole / 2, metal)
    top = 0.05 + pole
    if rng.random() < 0.25:
        radius = rng.uniform(0.1, 0.18)
        p.ellipsoid((0, top + radius * 0.8, 0), (radius, radius, radius), shade)
    else:
        half = rng.uniform(0.07, 0.15)
        p.cylinder((0, top - half * 0.4, 0), rng.uniform(0.13, 0.25), half, shade, taper=rng.uniform(0.4, 0.85))


def _loudspeaker(rng, p: _Parts) -> None:
    width, height, depth = rng.uniform(0.35, 0.6), rng.uniform(0.55, 1.1), rng.uniform(0.35, 0.6)
    body, cone = _material(rng), _gray(rng, 0.05, 0.3)
    lift = 0.04 if rng.random() < 0.3 else 0.0
    p.box((0, lift + height / 2, 0), (width / 2, height / 2, depth / 2), body)
    if lift:
        for x in (-1, 1):
            for z in (-1, 1):
                p.box((x * (width / 2 - 0.04), lift / 2, z * (depth / 2 - 0.04)), (0.02, lift / 2, 0.02), cone)
    if rng.random() < 0.25:  # a fabric grille hides the drivers
        p.box((0, lift + height / 2, -depth / 2 - 0.008), (width / 2 - 0.01, height / 2 - 0.01, 0.008), _hue(rng, val=(0.1, 0.4)))
        return
    drivers = rng.integers(1, 4)
    slot = height / drivers
    for k in range(drivers):
        radius = min(width * 0.42, slot * 0.42) * (0.55 if k == drivers - 1 and drivers > 1 else 1.0)
        y = lift + height - slot * (k + 0.5)
        p.cylinder((0, y, -depth / 2 - 0.008), radius, 0.008, cone, axis="z")
        p.ellipsoid((0, y, -depth / 2 - 0.016), (radius * 0.3, radius * 0.3, 0.012), _gray(rng, 0.3, 0.8))


def _rifle(rng, p: _Parts) -> None:
    metal, stock = _gray(rng, 0.06, 0.35), _wood(rng) if rng.random() < 0.5 else _gray(rng, 0.05, 0.3)
    barrel_len = rng.uniform(0.35, 0.5)
    recv_half = rng.uniform(0.12, 0.18)
    p.box((0, 0, 0), (recv_half, rng.uniform(0.035, 0.05), 0.022), metal)
    p.cylinder((recv_half + barrel_len / 2, 0.01, 0), rng.uniform(0.01, 0.018), barrel_len / 2, metal, axis="x")
    if rng.random() < 0.5:
        p.box((recv_half + barrel_len * 0.25, 0.0, 0), (barrel_len * 0.25, 0.03, 0.025), stock)
    stock_len, drop = rng.uniform(0.15, 0.22), rng.uniform(0.0, 0.25)
    p.box((-recv_half - stock_len * math.cos(drop), -stock_len * math.sin(drop) - 0.01, 0),
          (stock_len, rng.uniform(0.04, 0.06), 0.02), stock, pitch=drop)
    p.box((-recv_half * 0.4, -0.07, 0), (0.02, 0.05, 0.018), stock, pitch=-0.35)
    if rng.random() < 0.6:
        p.box((recv_half * 0.4, -0.08, 0), (0.025, rng.uniform(0.04, 0.08), 0.015), metal, pitch=rng.uniform(-0.4, 0.0))
    if rng.random() < 0.5:
        scope = rng.uniform(0.08, 0.14)
        p.cylinder((0, 0.075, 0), 0.022, scope, metal, axis="x", taper=rng.uniform(1.0, 1.5))


def _sofa(rng, p: _Parts) -> None:
    length, depth = rng.uniform(1.0, 1.5), rng.uniform(0.5, 0.7)
    seat_h, legs = rng.uniform(0.18, 0.28), rng.uniform(0.03, 0.08) if rng.random() < 0.5 else 0.0
    fabric, cushion, foot = _hue(rng), _hue(rng) if rng.random() < 0.3 else None, _wood(rng)
    cushion = fabric if cushion is None else cushion
    arms = rng.random() < 0.8
    arm_w = 0.08 if arms else 0.0
    p.box((0, legs + seat_h / 2, 0), (length / 2, seat_h / 2, depth / 2), fabric)
    count = rng.integers(1, 4)
    inner = length - 2 * arm_w
    for k in range(count):
        p.box((-inner / 2 + inner * (k + 0.5) / count, legs + seat_h + 0.05, -0.03), (inner / (2 * count) - 0.008, 0.05, depth / 2 - 0.08), cushion)
    back_h = rng.uniform(0.25, 0.45)
    p.box((0, legs + seat_h + back_h / 2, depth / 2 - 0.07), (length / 2, back_h / 2, 0.07), fabric, roll=rng.uniform(0.0, 0.2))
    if arms:
        arm_h = rng.uniform(0.12, 0.25)
        for x in (-1, 1):
            p.box((x * (length / 2 - arm_w / 2), legs + seat_h + arm_h / 2, 0), (arm_w / 2, arm_h / 2, depth / 2), fabric)
    if rng.random() < 0.15:  # an L-shaped chaise on one side
        p.box((length / 2 - 0.25, legs + seat_h / 2, -depth / 2 - 0.25), (0.25, seat_h / 2, 0.25), fabric)
    if legs:
        for x in (-1, 1):
            for z in (-1, 1):
                p.box((x * (length / 2 - 0.05), legs / 2, z * (depth / 2 - 0.05)), (0.02, legs / 2, 0.02), foot)


def _table(rng, p: _Parts) -> None:
    height, top_color = rng.uniform(0.5, 0.8), _material(rng)
    legs = top_color if rng.random() < 0.5 else _material(rng)
    thick = rng.uniform(0.03, 0.06)
    if rng.random() < 0.7:
        length, width = rng.uniform(0.8, 1.4), rng.uniform(0.5, 0.9)
        p.box((0, height - thick / 2, 0), (length / 2, thick / 2, width / 2), top_color)
        reach = (length / 2 - 0.06, width / 2 - 0.06)
    else:
        radius = rng.uniform(0.35, 0.6)
        p.cylinder((0, height - thick / 2, 0), radius, thick / 2, top_color)
        reach = (radius * 0.6, radius * 0.6)
    style = rng.integers(3)
    leg_h = height - thick
    if style == 0:
        for x in (-1, 1):
            for z in (-1, 1):
                p.box((x * reach[0], leg_h / 2, z * reach[1]), (0.025, leg_h / 2, 0.025), legs)
        if rng.random() < 0.4:
            p.box((0, leg_h * 0.25, 0), (reach[0], 0.012, reach[1]), legs)
    elif style == 1:
        p.cylinder((0, leg_h / 2, 0), 0.04, leg_h / 2, legs)
        p.cylinder((0, 0.015, 0), min(reach) * 0.9, 0.015, legs, taper=0.8)
    else:
        for x in (-1, 1):
            p.box((x * reach[0], leg_h / 2, 0), (0.02, leg_h / 2, reach[1]), legs)


def _telephone(rng, p: _Parts) -> None:
    shell, glass = _gray(rng, 0.08, 0.8) if rng.random() < 0.6 else _hue(rng), _hue(rng, sat=(0.1, 0.5), val=(0.08, 0.3))
    style = rng.choice(["smartphone", "desk", "feature"], p=[0.55, 0.25, 0.2])
    if style == "desk":
        width, depth = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.55)
        p.box((0, 0.08, 0), (width / 2, 0.08, depth / 2), shell, roll=-0.15)
        p.box((0, 0.2, 0.08), (width / 2 * 0.9, 0.025, 0.05), shell)
        for x in (-1, 1):
            p.ellipsoid((x * width * 0.38, 0.2, 0.08), (0.07, 0.05, 0.06), shell)
        for row in range(4):
            for col in range(3):
                p.box(((col - 1) * 0.07, 0.14 + 0.025 * row, -0.12 + 0.055 * row), (0.025, 0.01, 0.02), glass, roll=-0.15)
        return
    width, height, thick = rng.uniform(0.3, 0.42), rng.uniform(0.6, 0.85), rng.uniform(0.03, 0.06)
    p.box((0, height / 2, 0), (width / 2, height / 2, thick / 2), shell)
    if style == "smartphone":
        margin = rng.uniform(0.01, 0.04)
        p.box((0, height / 2, -thick / 2 - 0.003), (width / 2 - margin, height / 2 - margin * 2, 0.003), glass)
        if rng.random() < 0.5:
            p.box((width * 0.25, height * 0.85, thick / 2 + 0.006), (0.05, 0.05, 0.006), _gray(rng, 0.05, 0.4))
    else:
        p.box((0, height * 0.72, -thick / 2 - 0.003), (width / 2 - 0.03, height * 0.2, 0.003), glass)
        for row in range(4):
            for col in range(3):
                p.box(((col - 1) * width * 0.28, height * (0.1 + 0.09 * row), -thick / 2 - 0.005), (width * 0.1, height * 0.03, 0.005), _gray(rng, 0.3, 0.8))
        if rng.random() < 0.5:
            p.cylinder((width * 0.35, height + 0.08, 0), 0.012, 0.08, shell)


def _vessel(rng, p: _Parts) -> None:
    length, width, hull_h = 1.0, rng.uniform(0.18, 0.3), rng.uniform(0.08, 0.16)
    hull, deck = _hue(rng, val=(0.2, 0.7)) if rng.random() < 0.6 else _gray(rng, 0.1, 0.5), _gray(rng, 0.55, 0.85)
    bow = rng.uniform(0.18, 0.3) * length
    p.box((-bow / 2, hull_h / 2, 0), ((length - bow) / 2, hull_h / 2, width / 2), hull)
    # The bow: an elliptic cone along +x whose base matches the hull's cross-section.
    p.cylinder((length / 2 - bow / 2, hull_h / 2, 0), width / 2, bow / 2, hull, axis="x", radius2=hull_h / 2,
               taper=rng.uniform(0.05, 0.25))
    if rng.random() < 0.3:  # a sailboat: mast and sail
        mast = rng.uniform(0.5, 0.8)
        p.cylinder((0.05, hull_h + mast / 2, 0), 0.01, mast / 2, deck)
        p.box((-0.12, hull_h + mast * 0.5, 0), (0.16, mast * 0.4, 0.004), _gray(rng, 0.7, 0.85), pitch=0.15)
        return
    x, levels = rng.uniform(-0.25, 0.0), rng.integers(1, 4)
    half = np.array([rng.uniform(0.08, 0.15), rng.uniform(0.025, 0.045), width * 0.4])
    y = hull_h
    for _ in range(levels):  # stacked superstructure, each level smaller
        p.box((x, y + half[1], 0), half, deck)
        y += 2 * half[1]
        half = half * [0.7, 0.9, 0.85]
    if rng.random() < 0.6:
        p.cylinder((x - 0.1, y + 0.05, 0), 0.035, 0.07, _hue(rng), taper=0.85)
    if rng.random() < 0.5:
        p.cylinder((x + 0.12, y + 0.1, 0), 0.008, 0.15, _gray(rng, 0.1, 0.5))


_GENERATORS = {
    "airplane": _airplane, "bench": _bench, "cabinet": _cabinet, "car": _car, "chair": _chair,
    "display": _display, "lamp": _lamp, "loudspeaker": _loudspeaker, "rifle": _rifle,
    "sofa": _sofa, "table": _table, "telephone": _telephone, "vessel": _vessel,
}


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


def object_synset(index: int) -> str:
    return list(nmr.SYNSETS)[index % len(nmr.SYNSETS)]


def object_split(index: int, *, lists: str = "viewfusion") -> str:
    shift = _SOFTRAS_SHIFT if lists == "softras" else 0
    return _SPLIT_PATTERN[(index + shift) % len(_SPLIT_PATTERN)]


def make_object(index: int, *, seed: int = 0) -> SynthObject:
    """Object `index` of the dataset with `seed`: its id, category and primitives."""
    rng = np.random.default_rng([seed, index])
    object_id = rng.bytes(16).hex()  # drawn first, so ids never depend on the shape code
    synset = object_synset(index)
    parts = _Parts()
    _GENERATORS[nmr.SYNSETS[synset]](rng, parts)
    return SynthObject(synset, object_id, _normalize(parts.items))


def _object_id(index: int, *, seed: int) -> str:
    return np.random.default_rng([seed, index]).bytes(16).hex()


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
    all_ids = [_object_id(i, seed=seed) for i in range(objects)]
    for synset in nmr.SYNSETS:
        for lists in nmr.LIST_PREFIXES:
            for split in nmr.SPLITS:
                ids = [all_ids[i] for i in range(objects)
                       if object_synset(i) == synset and object_split(i, lists=lists) == split]
                text = "".join(f"{object_id}\n" for object_id in ids)
                _zip_write(zf, nmr.list_member(synset, split, lists=lists), text.encode(), zipfile.ZIP_DEFLATED)


def write_synth_zip(out, *, objects: int, seed: int = 0, image_size: int = nmr.IMAGE_SIZE,
                    workers: int = 1) -> dict:
    """Render `objects` objects into an NMR-layout zip at `out` (atomic); return timing stats."""
    if objects < 1:
        raise ViewFusionError(f"--objects must be at least 1, got {objects}")
    if image_size < 8:
        raise ViewFusionError(f"--image-size must be at least 8, got {image_size}")
    out = Path(out)
    start = time.perf_counter()
    cameras = cameras_npz()
    jobs = [(index, seed, image_size) for index in range(objects)]
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        _write_index(zf, objects=objects, seed=seed)
        for synset, object_id, pngs in _rendered(jobs, workers=workers):
            for view, png in enumerate(pngs):
                # PNGs are compressed already: store them, deflating again gains nothing.
                _zip_write(zf, nmr.image_member(synset, object_id, view), png, zipfile.ZIP_STORED)
            _zip_write(zf, nmr.cameras_member(synset, object_id), cameras, zipfile.ZIP_DEFLATED)
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

"""Ray-cast renderer of the synthetic objects: the NMR cameras, rays, z-buffer, Lambertian light.

    images = render(make_object(0), image_size=64)   # (24, 64, 64, 3) uint8, NMR views 0..23

Vectorised in numpy over all 24 views at once, from the NMR cameras (azimuth 15*i degrees,
elevation 30, distance 2.732, field of view 30; `camera_matrices`, written to cameras.npz by
`viewfusion.data.synth`): z-buffer (nearest hit), Lambertian shading under world-fixed lights (a
surface looks the same from every view, as in a real render), 2x2 supersampling, white background.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from viewfusion.data import nmr
from viewfusion.data.primitives import Primitive, SynthObject

_SUPERSAMPLE = 2
_VIEW_CHUNK = 4
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
def projection() -> np.ndarray:
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
    proj = projection() @ np.vstack([corners.T, np.ones(8)])  # (24, 4, 8)
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

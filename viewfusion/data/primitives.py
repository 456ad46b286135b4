"""Solids of the synthetic objects: the Primitive and SynthObject types and the builder that
`viewfusion.data.shapes`' category generators fill.

    parts = Parts(); parts.box((0, 0.1, 0), (0.3, 0.05, 0.2), colour, yaw=0.4); parts.items
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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



def rotation(*, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """R_y(yaw) @ R_z(pitch) @ R_x(roll): yaw turns about the up axis."""
    cy, sy, cz, sz, cx, sx = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return r_y @ r_z @ r_x


# Rotations taking a cylinder's local y axis onto world x, y or z.
_AXES = {"x": rotation(pitch=-math.pi / 2), "y": np.eye(3), "z": rotation(roll=math.pi / 2)}


class Parts:
    """Collects primitives while a category generator builds one object."""

    def __init__(self):
        self.items: list[Primitive] = []

    def box(self, center, half, color, **angles) -> None:
        self.items.append(Primitive("box", np.asarray(center, float), rotation(**angles),
                                    np.asarray(half, float), np.asarray(color, float)))

    def ellipsoid(self, center, half, color, **angles) -> None:
        self.items.append(Primitive("ellipsoid", np.asarray(center, float), rotation(**angles),
                                    np.asarray(half, float), np.asarray(color, float)))

    def cylinder(self, center, radius, half_height, color, *, axis="y", taper=1.0, radius2=None,
                 **angles) -> None:
        """A cylinder (taper 1) or cone frustum (top radius = taper * radius) along `axis`."""
        half = np.array([radius, half_height, radius if radius2 is None else radius2], float)
        self.items.append(Primitive("frustum", np.asarray(center, float), rotation(**angles) @ _AXES[axis],
                                    half, np.asarray(color, float), float(taper)))



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

"""The shapes of the synthetic dataset: 13 per-category generators of composed primitives.

Each generator builds one object of its NMR category from analytic solids (boxes, ellipsoids,
cylinders and cone frusta), with several shape variants and per-part colours drawn from the
object's own `numpy.random.Generator`; `draw_object(index, seed=...)` gives object `index`'s
synset, id and primitives in its local frame. `viewfusion.data.synth` normalises and renders them.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from viewfusion.data import nmr
from viewfusion.data.primitives import Parts, Primitive


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


def _airplane(rng, p: Parts) -> None:
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


def _bench(rng, p: Parts) -> None:
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


def _cabinet(rng, p: Parts) -> None:
    width, height, depth = rng.uniform(0.45, 0.9), rng.uniform(0.5, 1.1), rng.uniform(0.3, 0.5)
    lift = rng.uniform(0.04, 0.1) if rng.random() < 0.3 else 0.0
    body, front, handle = _material(rng), _material(rng), _gray(rng, 0.1, 0.7)
    p.box((0, lift + height / 2, 0), (width / 2, height / 2, depth / 2), body)
    drawers = rng.random() < 0.4
    count = rng.integers(2, 5) if drawers else rng.integers(1, 3)
    for k in range(count):
        if drawers:
            center = (0, lift + height * (k + 0.5) / count, -depth / 2 - 0.01)
            half = (width / 2 - 0.03, height / (2 * count) - 0.015, 0.01)
            handle_at = (0, center[1], -depth / 2 - 0.03)
        else:
            center = (width * ((k + 0.5) / count - 0.5), lift + height / 2, -depth / 2 - 0.01)
            half = (width / (2 * count) - 0.02, height / 2 - 0.03, 0.01)
            handle_at = (center[0] + half[0] * 0.7 * (1 if k == 0 and count == 2 else -1), center[1], -depth / 2 - 0.03)
        p.box(center, half, front)
        p.box(handle_at, (0.012, 0.04, 0.012) if not drawers else (0.05, 0.012, 0.012), handle)
    if rng.random() < 0.5:
        p.box((0, lift + height + 0.015, 0), (width / 2 + 0.03, 0.015, depth / 2 + 0.03), _material(rng))
    if lift:
        for x in (-1, 1):
            for z in (-1, 1):
                p.cylinder((x * (width / 2 - 0.05), lift / 2, z * (depth / 2 - 0.05)), 0.025, lift / 2, handle)


def _car(rng, p: Parts) -> None:
    length, width = 1.0, rng.uniform(0.4, 0.5)
    body_h, wheel_r = rng.uniform(0.15, 0.24), rng.uniform(0.09, 0.13)
    paint, glass, tyre = (_hue(rng, sat=(0.2, 0.9), val=(0.25, 0.85)), _hue(rng, sat=(0.1, 0.4), val=(0.15, 0.35)),
                          _gray(rng, 0.06, 0.18))
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


def _chair(rng, p: Parts) -> None:
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
        p.box(base + [0, back_h / 2 * math.cos(tilt), back_h / 2 * math.sin(tilt)], (width / 2, 0.03, 0.025), fabric,
              roll=tilt)
    if rng.random() < 0.35:
        for x in (-1, 1):
            p.box((x * width / 2, height + 0.2, 0), (0.025, 0.02, depth / 2), frame)
            p.box((x * width / 2, height + 0.1, -depth / 2 + 0.04), (0.02, 0.1, 0.02), frame)


def _display(rng, p: Parts) -> None:
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


def _lamp(rng, p: Parts) -> None:
    metal, shade = _gray(rng, 0.1, 0.7), _hue(rng, sat=(0.1, 0.7), val=(0.55, 0.85))
    base_r = rng.uniform(0.1, 0.2)
    p.cylinder((0, 0.025, 0), base_r, 0.025, metal, taper=rng.uniform(0.5, 1.0))
    if rng.random() < 0.35:  # a desk lamp: two arm segments and a tilted shade
        tip = np.array([0.0, 0.05, 0.0])
        for angle, length in ((rng.uniform(0.2, 0.6), rng.uniform(0.35, 0.5)),
                              (rng.uniform(-1.6, -0.9), rng.uniform(0.3, 0.45))):
            direction = np.array([-math.sin(angle), math.cos(angle), 0.0])
            p.cylinder(tip + direction * length / 2, 0.014, length / 2, metal, pitch=angle)
            tip = tip + direction * length
        p.cylinder(tip + [0.03, -0.06, 0], rng.uniform(0.08, 0.13), 0.07, shade, taper=0.45,
                   pitch=rng.uniform(0.3, 0.8))
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


def _loudspeaker(rng, p: Parts) -> None:
    width, height, depth = rng.uniform(0.35, 0.6), rng.uniform(0.55, 1.1), rng.uniform(0.35, 0.6)
    body, cone = _material(rng), _gray(rng, 0.05, 0.3)
    lift = 0.04 if rng.random() < 0.3 else 0.0
    p.box((0, lift + height / 2, 0), (width / 2, height / 2, depth / 2), body)
    if lift:
        for x in (-1, 1):
            for z in (-1, 1):
                p.box((x * (width / 2 - 0.04), lift / 2, z * (depth / 2 - 0.04)), (0.02, lift / 2, 0.02), cone)
    if rng.random() < 0.25:  # a fabric grille hides the drivers
        p.box((0, lift + height / 2, -depth / 2 - 0.008), (width / 2 - 0.01, height / 2 - 0.01, 0.008),
              _hue(rng, val=(0.1, 0.4)))
        return
    drivers = rng.integers(1, 4)
    slot = height / drivers
    for k in range(drivers):
        radius = min(width * 0.42, slot * 0.42) * (0.55 if k == drivers - 1 and drivers > 1 else 1.0)
        y = lift + height - slot * (k + 0.5)
        p.cylinder((0, y, -depth / 2 - 0.008), radius, 0.008, cone, axis="z")
        p.ellipsoid((0, y, -depth / 2 - 0.016), (radius * 0.3, radius * 0.3, 0.012), _gray(rng, 0.3, 0.8))


def _rifle(rng, p: Parts) -> None:
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


def _sofa(rng, p: Parts) -> None:
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
        p.box((-inner / 2 + inner * (k + 0.5) / count, legs + seat_h + 0.05, -0.03),
              (inner / (2 * count) - 0.008, 0.05, depth / 2 - 0.08), cushion)
    back_h = rng.uniform(0.25, 0.45)
    p.box((0, legs + seat_h + back_h / 2, depth / 2 - 0.07), (length / 2, back_h / 2, 0.07), fabric,
          roll=rng.uniform(0.0, 0.2))
    if arms:
        arm_h = rng.uniform(0.12, 0.25)
        for x in (-1, 1):
            p.box((x * (length / 2 - arm_w / 2), legs + seat_h + arm_h / 2, 0), (arm_w / 2, arm_h / 2, depth / 2),
                  fabric)
    if rng.random() < 0.15:  # an L-shaped chaise on one side
        p.box((length / 2 - 0.25, legs + seat_h / 2, -depth / 2 - 0.25), (0.25, seat_h / 2, 0.25), fabric)
    if legs:
        for x in (-1, 1):
            for z in (-1, 1):
                p.box((x * (length / 2 - 0.05), legs / 2, z * (depth / 2 - 0.05)), (0.02, legs / 2, 0.02), foot)


def _table(rng, p: Parts) -> None:
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


def _telephone(rng, p: Parts) -> None:
    shell, glass = (_gray(rng, 0.08, 0.8) if rng.random() < 0.6 else _hue(rng),
                    _hue(rng, sat=(0.1, 0.5), val=(0.08, 0.3)))
    style = rng.choice(["smartphone", "desk", "feature"], p=[0.55, 0.25, 0.2])
    if style == "desk":
        width, depth = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.55)
        p.box((0, 0.08, 0), (width / 2, 0.08, depth / 2), shell, roll=-0.15)
        p.box((0, 0.2, 0.08), (width / 2 * 0.9, 0.025, 0.05), shell)
        for x in (-1, 1):
            p.ellipsoid((x * width * 0.38, 0.2, 0.08), (0.07, 0.05, 0.06), shell)
        for row in range(4):
            for col in range(3):
                p.box(((col - 1) * 0.07, 0.14 + 0.025 * row, -0.12 + 0.055 * row), (0.025, 0.01, 0.02), glass,
                      roll=-0.15)
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
                p.box(((col - 1) * width * 0.28, height * (0.1 + 0.09 * row), -thick / 2 - 0.005),
                      (width * 0.1, height * 0.03, 0.005), _gray(rng, 0.3, 0.8))
        if rng.random() < 0.5:
            p.cylinder((width * 0.35, height + 0.08, 0), 0.012, 0.08, shell)


def _vessel(rng, p: Parts) -> None:
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


GENERATORS = {
    "airplane": _airplane, "bench": _bench, "cabinet": _cabinet, "car": _car, "chair": _chair,
    "display": _display, "lamp": _lamp, "loudspeaker": _loudspeaker, "rifle": _rifle,
    "sofa": _sofa, "table": _table, "telephone": _telephone, "vessel": _vessel,
}


def object_synset(index: int) -> str:
    """Object j has category j % 13 (all 13 NMR synsets, equally often)."""
    return list(nmr.SYNSETS)[index % len(nmr.SYNSETS)]


def object_id(index: int, *, seed: int) -> str:
    return np.random.default_rng([seed, index]).bytes(16).hex()


def draw_object(index: int, *, seed: int = 0) -> tuple[str, str, list[Primitive]]:
    """(synset, object id, primitives) of object `index` with `seed`, before normalisation."""
    rng = np.random.default_rng([seed, index])
    oid = rng.bytes(16).hex()  # drawn first (as object_id does), so ids never depend on the shape code
    synset = object_synset(index)
    parts = Parts()
    GENERATORS[nmr.SYNSETS[synset]](rng, parts)
    return synset, oid, parts.items

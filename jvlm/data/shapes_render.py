"""Numpy rasteriser for the procedural shapes dataset (see `jvlm.data.shapes`).

A scene is described in resolution-independent unit coordinates (x to the right, y downwards,
both in [0, 1]), so the same scene renders consistently at any image size. `render` draws no
random numbers; all randomness lives in the samplers, which take an explicit generator.

Objects are anti-aliased analytically: every shape has a signed distance function (negative
inside) and pixel coverage is `clip(0.5 - distance_in_pixels, 0, 1)`. Shapes are evaluated only
on the pixels of their bounding box, so rendering cost is dominated by the background.
"""

from __future__ import annotations

import math

import numpy as np

BACKGROUND_KINDS = ("gradient", "stripes", "noise")

# Shape geometry relative to the object's half extent r (the bounding square is about 2r wide).
_SQUARE_HALF = 0.82
_TRI_CIRCUMRADIUS = 1.15  # equilateral, pointing up; height 1.5*R ~ 1.72r, width sqrt(3)*R ~ 1.99r
_STAR_OUTER, _STAR_INNER = 1.05, 0.45  # five points, tip up; inner radius relative to outer
_CROSS_LONG, _CROSS_WIDE = 0.95, 0.32

_STAR_SECTOR = 2 * math.pi / 5
# Canonical star edge from the tip T=(1, 0) to the inner vertex I=k(cos36, sin36) (unit outer
# radius, tip on +x); after folding, a point is inside iff it is on the origin's side of TI.
_SI = (_STAR_INNER * math.cos(math.pi / 5), _STAR_INNER * math.sin(math.pi / 5))
_SN = np.array([_SI[1], 1.0 - _SI[0]]) / math.hypot(_SI[1], 1.0 - _SI[0])  # outward unit normal
_SC = float(_SN[0])  # offset of the edge line: n . T


def _box(x, y, half_x, half_y):
    qx, qy = np.abs(x) - half_x, np.abs(y) - half_y
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def shape_sdf(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (unit coordinates, negative inside) of `shape` centred at the origin.

    `x`, `y` broadcast against each other; `r` is the half extent of the shape's bounding square.
    Polygon distances are exact near edges (slightly underestimated just outside corners), which
    is all the one-pixel anti-aliasing band needs.
    """
    if shape == "circle":
        return np.hypot(x, y) - r
    if shape == "square":
        return _box(x, y, _SQUARE_HALF * r, _SQUARE_HALF * r)
    if shape == "diamond":
        return (np.abs(x) + np.abs(y) - r) * (1 / math.sqrt(2))
    if shape == "cross":
        a, b = _CROSS_LONG * r, _CROSS_WIDE * r
        return np.minimum(_box(x, y, a, b), _box(x, y, b, a))
    if shape == "triangle":
        big_r = _TRI_CIRCUMRADIUS * r
        yc = y - 0.25 * big_r  # the centroid sits below the centre of the bounding box
        s = math.sqrt(3) / 2
        d = np.maximum(np.maximum(yc, -s * x - 0.5 * yc), s * x - 0.5 * yc)
        return d - 0.5 * big_r
    if shape == "star":
        big_r = _STAR_OUTER * r
        yc = y - 0.5 * big_r * (1 - math.cos(math.pi / 5))  # centre the bounding box vertically
        theta = np.arctan2(x, -yc)  # 0 points up, clockwise positive
        phi = np.mod(theta, _STAR_SECTOR)
        phi = 0.5 * _STAR_SECTOR - np.abs(phi - 0.5 * _STAR_SECTOR)  # fold: 0 at a tip
        rho = np.hypot(x, yc)
        return rho * (np.cos(phi) * _SN[0] + np.sin(phi) * _SN[1]) - _SC * big_r
    raise ValueError(f"unknown shape {shape!r}")


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] to RGB float32 in [0, 255]."""
    k = np.mod(np.array([5.0, 3.0, 1.0]) + h * 6.0, 6.0)
    rgb = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (255.0 * rgb).astype(np.float32)


def sample_background(rng: np.random.Generator) -> dict:
    """Muted two-colour background: a kind, its texture parameters and its two colours (HSV)."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    h, s1, s2, v1, dv, dh = rng.random(6)
    v1 = 0.3 + 0.45 * v1
    v2 = float(np.clip(v1 + (0.1 + 0.15 * dv) * (1 if v1 < 0.52 else -1), 0.2, 0.85))
    hsv = ((h, 0.05 + 0.2 * s1, v1), (h + 0.3 * (dh - 0.5), 0.05 + 0.2 * s2, v2))
    bg = {"kind": kind, "hsv": hsv, "angle": float(rng.uniform(0, math.pi))}
    if kind == "stripes":
        bg["period"] = float(rng.uniform(0.18, 0.4))
        bg["phase"] = float(rng.random())
        bg["sharpness"] = float(rng.uniform(1.0, 3.0))
    elif kind == "noise":
        g = int(rng.integers(3, 6))
        bg["grid"] = rng.random((g, g)).astype(np.float32)
    return bg


def _bilinear_weights(n_out: int, n_in: int):
    u = (np.arange(n_out, dtype=np.float32) + 0.5) / n_out * (n_in - 1)
    i0 = np.minimum(u.astype(np.int64), n_in - 2)
    return i0, (u - i0)


def background_field(bg: dict, size: int) -> np.ndarray:
    """Mixing weight in [0, 1] between the two background colours, float32 [size, size]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    ca, sa = math.cos(bg["angle"]), math.sin(bg["angle"])
    if bg["kind"] == "gradient":
        lo, hi = min(0.0, ca) + min(0.0, sa), max(0.0, ca) + max(0.0, sa)
        return ((c[None, :] * ca + c[:, None] * sa) - lo) / (hi - lo)
    if bg["kind"] == "stripes":
        u = (c[None, :] * ca + c[:, None] * sa) / bg["period"] + bg["phase"]
        t = 0.5 * np.sin(2 * math.pi * u)
        return np.clip(0.5 + bg["sharpness"] * t, 0.0, 1.0)
    if bg["kind"] == "noise":
        grid = bg["grid"]
        i0, f = _bilinear_weights(size, grid.shape[0])
        rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # [size, g]
        t = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
        lo, hi = grid.min(), grid.max()
        return (t - lo) / max(hi - lo, 1e-3)
    raise ValueError(f"unknown background kind {bg['kind']!r}")


def render(size: int, background: dict, objects) -> np.ndarray:
    """Renders uint8 [size, size, 3].

    `objects`: iterable of (shape name, rgb triple, centre x, centre y, half extent r), all in
    unit coordinates; later objects are drawn on top (the dataset never lets them overlap).
    """
    c1, c2 = (hsv_to_rgb(*hsv) for hsv in background["hsv"])
    t = background_field(background, size)
    img = c1 + t[..., None].astype(np.float32) * (c2 - c1)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    for shape, rgb, cx, cy, r in objects:
        ext = 1.1 * r
        x0, x1 = max(int((cx - ext) * size) - 1, 0), min(int(math.ceil((cx + ext) * size)) + 1, size)
        y0, y1 = max(int((cy - ext) * size) - 1, 0), min(int(math.ceil((cy + ext) * size)) + 1, size)
        sd = shape_sdf(shape, coords[None, x0:x1] - cx, coords[y0:y1, None] - cy, r)
        cov = np.clip(0.5 - sd * size, 0.0, 1.0)[..., None]
        patch = img[y0:y1, x0:x1]
        patch += cov * (np.asarray(rgb, np.float32) - patch)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)

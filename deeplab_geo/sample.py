"""Synthetic land-cover scenes: a deterministic stand-in for a labelled orthophoto.

``synthesize_scene(seed, size)`` paints a rural / peri-urban landscape at 0.5 m per pixel and
returns the image with its exact ground truth. Feature sizes are in metres, so a small scene
looks like a crop of a large one. The label layers, bottom to top:

* parcels: a domain-warped, anisotropic Voronoi partition (fields of roughly 110 m x 60 m along
  one dominant direction) whose cells become cropland, grassland or forest stands;
* forest: irregular patches where a multi-scale smooth random field exceeds a quantile;
* water: a meandering river (15-40 m wide, noisy banks, a meadow strip along it) and
  sometimes ponds;
* built-up: settlements strung along a road (warped ellipses with side streets, rectangular
  buildings of 8-25 m on paved yards with gardens) and a few isolated farmsteads;
* roads: straight bands 5-10 m wide crossing the scene, drawn over everything.

Every class has its own palette and texture: tree crowns with shaded sides, crop rows at a
per-field orientation, fine low-contrast grass noise, smooth water with ripples and glint, roofs
with a lit and a shaded side and shadows cast to one side, asphalt with a dashed centre line.
Palettes overlap on purpose (green crops vs. grass, yards vs. roads) so that context and texture
matter. Image edges coincide with label edges up to a 0.5 px sensor blur, so a dense CRF can
snap coarse predictions to them. Mild low-frequency illumination and sensor noise are added.

Everything is vectorised numpy/scipy: Python loops run over row strips (to bound memory) and
over windows around river and road segments, settlements and buildings, never over pixels.
Randomness comes only from ``np.random.default_rng``, one stream per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage

CLASS_NAMES: tuple[str, ...] = ("water", "forest", "grassland", "cropland", "built-up", "road")
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (31, 120, 200),   # water: blue
    (20, 95, 35),     # forest: dark green
    (150, 215, 100),  # grassland: light green
    (240, 205, 60),   # cropland: yellow
    (215, 45, 40),    # built-up: red
    (128, 128, 128),  # road: grey
)
WATER, FOREST, GRASS, CROP, BUILT, ROAD = range(6)

PIXEL_M = 0.5            # metres per pixel
_PX = 1.0 / PIXEL_M      # pixels per metre
_STRIP = 256             # rows per strip for full-scene computations
_CHUNK = 256             # pixels of centre line per window for rivers and roads


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------
def _gauss_std(sigma: float) -> float:
    """Standard deviation of unit white noise after a 2-D ``ndimage.gaussian_filter``."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    return float((k**2).sum())


def _fine_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Full-resolution white noise blurred by ``sigma`` px, unit standard deviation."""
    out = rng.standard_normal((size, size), dtype=np.float32)
    out = ndimage.gaussian_filter(out, sigma, mode="reflect")
    out *= np.float32(1.0 / _gauss_std(sigma))
    return out


class _Noise:
    """Smooth Gaussian noise of about unit std whose blobs are ``scale`` pixels across.

    White noise on a coarse grid (spacing ``scale / 3``) is Gaussian-smoothed and bilinearly
    interpolated; any window or scattered points can be evaluated, so memory stays small.
    """

    _PAD = 6

    def __init__(self, rng: np.random.Generator, size: int, scale: float) -> None:
        self.step = max(scale / 3.0, 1.0)
        n = int(math.ceil(size / self.step)) + 2 * self._PAD + 2
        grid = rng.standard_normal((n, n), dtype=np.float32)
        grid = ndimage.gaussian_filter(grid, 1.5, mode="wrap")
        self.grid = grid * np.float32(1.0 / _gauss_std(1.5))

    def _axis(self, coords: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
        pos = np.asarray(coords, dtype) / dtype(self.step) + dtype(self._PAD)
        idx = np.floor(pos).astype(np.intp)
        np.clip(idx, 0, self.grid.shape[0] - 2, out=idx)
        return idx, (pos - idx).astype(np.float32)

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        iy, fy = self._axis(np.arange(y0, y1))
        ix, fx = self._axis(np.arange(x0, x1))
        top, bottom = self.grid[iy], self.grid[iy + 1]
        rows = top + (bottom - top) * fy[:, None]
        left, right = np.take(rows, ix, axis=1), np.take(rows, ix + 1, axis=1)
        right -= left
        right *= fx[None, :]
        left += right
        return left

    def at(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        iy, fy = self._axis(y, np.float32)
        ix, fx = self._axis(x, np.float32)
        g = self.grid
        top = g[iy, ix] + (g[iy, ix + 1] - g[iy, ix]) * fx
        bottom = g[iy + 1, ix] + (g[iy + 1, ix + 1] - g[iy + 1, ix]) * fx
        return top + (bottom - top) * fy


def _nearest_site(u: np.ndarray, v: np.ndarray, site_u: np.ndarray, site_v: np.ndarray,
                  nu: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest site of a jittered grid to points ``(u, v)`` in cell units.

    Cell ``(i, j)`` (row-major, ``nv`` x ``nu``) holds one site at ``(site_u, site_v)[i * nu + j]``
    inside it; the 3 x 3 cells around a point are searched. Returns the site index and the
    squared distance.
    """
    iu, iv = np.floor(u).astype(np.int32), np.floor(v).astype(np.int32)
    best = np.full(u.shape, np.inf, np.float32)
    best_id = np.zeros(u.shape, np.int32)
    for dv in (-1, 0, 1):
        row = np.clip(iv + dv, 0, nv - 1) * nu
        for du in (-1, 0, 1):
            k = row + np.clip(iu + du, 0, nu - 1)
            d = (site_u[k] - u) ** 2 + (site_v[k] - v) ** 2
            closer = d < best
            np.copyto(best, d, where=closer)
            np.copyto(best_id, k, where=closer)
    return best_id, best


def _jittered_sites(rng: np.random.Generator, nu: int, nv: int, jitter: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = 0.5 - jitter / 2, 0.5 + jitter / 2
    site_u = (np.arange(nu)[None, :] + rng.uniform(lo, hi, (nv, nu))).ravel().astype(np.float32)
    site_v = (np.arange(nv)[:, None] + rng.uniform(lo, hi, (nv, nu))).ravel().astype(np.float32)
    return site_u, site_v


def _window_coords(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y as a column, x as a row) of a window."""
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5)
    return ys, xs


def _bbox(xs: np.ndarray, ys: np.ndarray, margin: float, size: int) -> tuple[int, int, int, int]:
    """Clipped window ``(y0, y1, x0, x1)`` around points plus a margin (may be empty)."""
    x0 = max(int(math.floor(float(xs.min()) - margin)), 0)
    x1 = min(int(math.ceil(float(xs.max()) + margin)) + 1, size)
    y0 = max(int(math.floor(float(ys.min()) - margin)), 0)
    y1 = min(int(math.ceil(float(ys.max()) + margin)) + 1, size)
    return y0, y1, x0, x1


# ---------------------------------------------------------------------------------------------
# scene description
# ---------------------------------------------------------------------------------------------
@dataclass
class _Road:
    x0: float
    y0: float
    x1: float
    y1: float
    half_width: float          # px
    colour: tuple[float, float, float]
    centre_line: bool


@dataclass
class _Building:
    cx: float
    cy: float
    angle: float               # radians, direction of the ``length`` axis
    length: float              # px
    depth: float               # px
    colour: tuple[float, float, float]
    gable: bool
    shadow: float              # px


@dataclass
class _Scene:
    size: int
    rng: dict[str, np.random.Generator]
    labels: np.ndarray
    region: np.ndarray         # int32: parcel id, water body, settlement or road index
    depth: np.ndarray          # float16 water depth 0..1 (0 elsewhere)
    roof: np.ndarray           # bool building footprints
    sun: tuple[float, float]   # unit vector (dx, dy) pointing towards the sun
    parcels: int = 0
    water_colours: list = field(default_factory=list)
    yard_angles: list = field(default_factory=list)
    roads: list = field(default_factory=list)
    buildings: list = field(default_factory=list)
    settlement_plans: list = field(default_factory=list)


def synthesize_scene(seed: int, size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, labels)`` for scene ``seed``: ``size`` x ``size`` pixels of 0.5 m.

    ``image`` is uint8 ``(3, size, size)`` band-first RGB, ``labels`` uint8 ``(size, size)``
    with class ids 0..5 (see ``CLASS_NAMES``). The same ``seed`` and ``size`` always give
    byte-identical output.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer of at least 8 pixels, got {size!r}")
    size = int(size)
    names = ("sun", "parcels", "forest", "water", "roads", "settlements", "texture", "finish")
    streams = {name: np.random.default_rng([int(seed), i]) for i, name in enumerate(names)}
    azimuth = float(streams["sun"].uniform(0.0, 2.0 * math.pi))
    scene = _Scene(size=size, rng=streams,
                   labels=np.empty((size, size), np.uint8),
                   region=np.empty((size, size), np.int32),
                   depth=np.zeros((size, size), np.float16),
                   roof=np.zeros((size, size), bool),
                   sun=(math.cos(azimuth), math.sin(azimuth)))
    _parcels(scene)
    _forest(scene)
    _water(scene)
    _road_network(scene)          # geometry only; settlements add streets to it
    _settlements(scene)
    for index, road in enumerate(scene.roads):
        _rasterize_road(scene, index, road)
    _place_buildings(scene)
    image = _paint(scene)
    return image, scene.labels


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------
def _parcels(scene: _Scene) -> None:
    """Fields: a warped Voronoi partition on a jittered grid, elongated along one direction.

    The nearest site is searched exactly on a grid of every 4th pixel; a pixel whose four
    surrounding grid points agree takes their parcel, the others (near edges) choose the
    nearest of those four points' sites. Labels and image both follow this partition.
    """
    rng, size = scene.rng["parcels"], scene.size
    angle = float(rng.uniform(0.0, math.pi))
    ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    su = np.float32(rng.uniform(95.0, 150.0) * _PX)    # cell spacing along the main direction
    sv = np.float32(rng.uniform(50.0, 80.0) * _PX)     # ... and across it
    half = np.float32(size * 0.7072 + 30.0 * _PX)
    nu, nv = int(2 * half / su) + 3, int(2 * half / sv) + 3
    site_u, site_v = _jittered_sites(rng, nu, nv, 0.8)
    big_x, big_y = _Noise(rng, size, 90.0 * _PX), _Noise(rng, size, 90.0 * _PX)
    small_x, small_y = _Noise(rng, size, 10.0 * _PX), _Noise(rng, size, 10.0 * _PX)
    big, small = np.float32(6.0 * _PX), np.float32(0.5 * _PX)
    scene.parcels = nu * nv
    kinds = rng.choice(np.array([CROP, GRASS, FOREST], np.uint8), size=scene.parcels,
                       p=[0.47, 0.43, 0.10])
    centre = np.float32(size / 2.0)

    def cell_coords(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wx = x - centre + big * big_x.at(y, x) + small * small_x.at(y, x)
        wy = y - centre + big * big_y.at(y, x) + small * small_y.at(y, x)
        return (wx * ca + wy * sa + half) / su, (wy * ca - wx * sa + half) / sv

    step = 4
    n_coarse = (size - 1) // step + 2
    grid = np.arange(n_coarse, dtype=np.float32) * step + np.float32(0.5)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    coarse = _nearest_site(*cell_coords(gy, gx), site_u, site_v, nu, nv)[0]
    del gy, gx
    cols = np.arange(size) // step
    for y0 in range(0, size, _STRIP):
        y1 = min(y0 + _STRIP, size)
        rows = np.arange(y0, y1) // step
        top, bottom = coarse[rows], coarse[rows + 1]
        c00, c01 = np.take(top, cols, axis=1), np.take(top, cols + 1, axis=1)
        c10, c11 = np.take(bottom, cols, axis=1), np.take(bottom, cols + 1, axis=1)
        del top, bottom
        ids = c00
        edge = np.flatnonzero(((c00 != c01) | (c00 != c10) | (c00 != c11)).ravel())
        if edge.size:
            candidates = [c.ravel()[edge] for c in (c00, c01, c10, c11)]
            row, col = np.divmod(edge, size)
            y = row.astype(np.float32) + np.float32(y0 + 0.5)
            x = col.astype(np.float32) + np.float32(0.5)
            u, v = cell_coords(y, x)
            best = np.full(edge.shape, np.inf, np.float32)
            best_id = candidates[0].copy()
            for k in candidates:
                d = (site_u[k] - u) ** 2 + (site_v[k] - v) ** 2
                closer = d < best
                np.copyto(best, d, where=closer)
                np.copyto(best_id, k, where=closer)
            ids.ravel()[edge] = best_id
        scene.region[y0:y1] = ids
        scene.labels[y0:y1] = kinds[ids]


def _forest(scene: _Scene) -> None:
    """Irregular woods: a multi-scale smooth field above a scene-specific quantile."""
    rng, size = scene.rng["forest"], scene.size
    octaves = [(_Noise(rng, size, 130.0 * _PX), 1.0), (_Noise(rng, size, 40.0 * _PX), 0.45),
               (_Noise(rng, size, 12.0 * _PX), 0.18), (_Noise(rng, size, 3.5 * _PX), 0.07)]
    fraction = float(rng.uniform(0.13, 0.22))
    # threshold from a coarse sample so that it is cheap and independent of strips
    step = max(1, size // 256)
    pts = np.arange(0, size, step, dtype=np.float64) + 0.5
    py, px = np.meshgrid(pts, pts, indexing="ij")
    sample = sum(w * n.at(py.ravel(), px.ravel()) for n, w in octaves)
    threshold = np.float32(np.quantile(sample, 1.0 - fraction))
    for y0 in range(0, size, _STRIP):
        y1 = min(y0 + _STRIP, size)
        value = octaves[0][0].window(y0, y1, 0, size)
        for noise, weight in octaves[1:]:
            value += np.float32(weight) * noise.window(y0, y1, 0, size)
        scene.labels[y0:y1][value > threshold] = FOREST


def _water(scene: _Scene) -> None:
    rng, size = scene.rng["water"], scene.size
    extent_km = size * PIXEL_M / 1000.0
    bank_big, bank_small = _Noise(rng, size, 14.0 * _PX), _Noise(rng, size, 4.0 * _PX)
    rivers = 1 + (rng.poisson(0.45 * extent_km) if extent_km > 1.5 else 0)
    for _ in range(rivers):
        _river(scene, rng, bank_big, bank_small)
    pond_noise = _Noise(rng, size, 22.0 * _PX)
    for _ in range(int(rng.poisson(0.8 * extent_km**2))):
        _pond(scene, rng, pond_noise, bank_small)


def _new_water_body(scene: _Scene, rng: np.random.Generator) -> int:
    deep = np.array([rng.uniform(18, 32), rng.uniform(38, 55), rng.uniform(50, 75)])
    tint = rng.uniform(0.0, 1.0)  # towards green-brown
    deep = deep * (1 - tint) + np.array([30.0, 45.0, 40.0]) * tint
    shallow = deep + np.array([rng.uniform(20, 35), rng.uniform(22, 35), rng.uniform(10, 22)])
    scene.water_colours.append((shallow.astype(np.float32), deep.astype(np.float32)))
    return len(scene.water_colours) - 1


def _river(scene: _Scene, rng: np.random.Generator, bank_big: _Noise, bank_small: _Noise) -> None:
    size = scene.size
    body = _new_water_body(scene, rng)
    angle = float(rng.uniform(0.0, math.pi))
    c, s = math.cos(angle), math.sin(angle)
    v0 = float(rng.uniform(-0.2, 0.2)) * size
    span = size * 0.75 + 60 * _PX
    tu = np.arange(-span, span + 1.0, 1.0)
    centre = np.full_like(tu, v0)
    slope = np.zeros_like(tu)
    for _ in range(3):
        wavelength = float(rng.uniform(220.0, 650.0)) * _PX
        amp = float(rng.uniform(0.03, 0.09)) * wavelength
        phase = float(rng.uniform(0, 2 * math.pi))
        arg = 2 * math.pi * tu / wavelength + phase
        centre += amp * np.sin(arg)
        slope += amp * 2 * math.pi / wavelength * np.cos(arg)
    stretch = 1.0 / np.sqrt(1.0 + slope**2)
    hw_mean = float(rng.uniform(9.5, 15.0))
    hw = hw_mean + float(rng.uniform(2.0, 5.0)) * np.sin(
        2 * math.pi * tu / (float(rng.uniform(250.0, 600.0)) * _PX) + float(rng.uniform(0, 6.3)))
    hw = np.clip(hw, 7.5, 20.0) * _PX
    meadow = float(rng.uniform(5.0, 22.0)) * _PX
    margin = (float(hw.max()) + meadow + 7.5 * _PX) / float(stretch.min()) + 2
    half = size / 2.0
    cx = half + tu * c - centre * s
    cy = half + tu * s + centre * c
    for i0 in range(0, len(tu) - 1, _CHUNK):
        i1 = min(i0 + _CHUNK, len(tu) - 1)
        y0, y1, x0, x1 = _bbox(cx[i0:i1 + 1], cy[i0:i1 + 1], margin, size)
        if y1 <= y0 or x1 <= x0:
            continue
        ys, xs = _window_coords(y0, y1, x0, x1)
        xs, ys = xs - half, ys - half
        u = xs * c + ys * s
        v = ys * c - xs * s
        own = (u >= tu[i0]) & (u < tu[i1])
        if not own.any():
            continue
        line = np.interp(u, tu, centre).astype(np.float32)
        width = np.interp(u, tu, hw).astype(np.float32)
        dist = np.abs(v - line) * np.interp(u, tu, stretch).astype(np.float32)
        dist -= np.float32(2.2 * _PX) * np.clip(bank_big.window(y0, y1, x0, x1), -2.5, 2.5)
        dist -= np.float32(0.6 * _PX) * np.clip(bank_small.window(y0, y1, x0, x1), -2.5, 2.5)
        labels = scene.labels[y0:y1, x0:x1]
        wet = own & (dist < width)
        labels[own & (dist < width + meadow) & (labels == CROP)] = GRASS
        labels[wet] = WATER
        scene.region[y0:y1, x0:x1][wet] = body
        depth = np.clip(1.0 - dist / width, 0.0, 1.0)
        scene.depth[y0:y1, x0:x1][wet] = depth[wet]


def _pond(scene: _Scene, rng: np.random.Generator, noise: _Noise, fine: _Noise) -> None:
    size = scene.size
    body = _new_water_body(scene, rng)
    cx, cy = rng.uniform(0, size, 2)
    a, b = rng.uniform(18.0, 60.0, 2) * _PX
    angle = float(rng.uniform(0, math.pi))
    reach = max(a, b) * 1.8 + 2
    y0, y1, x0, x1 = _bbox(np.array([cx]), np.array([cy]), reach, size)
    if y1 <= y0 or x1 <= x0:
        return
    ys, xs = _window_coords(y0, y1, x0, x1)
    xs, ys = xs - np.float32(cx), ys - np.float32(cy)
    u = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    v = ys * np.float32(math.cos(angle)) - xs * np.float32(math.sin(angle))
    r = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2)
    r += np.float32(0.18) * np.clip(noise.window(y0, y1, x0, x1), -2.2, 2.2)
    r += np.float32(0.03) * np.clip(fine.window(y0, y1, x0, x1), -2.2, 2.2)
    labels = scene.labels[y0:y1, x0:x1]
    labels[(r < 1.3) & (labels == CROP)] = GRASS
    wet = r < 1.0
    labels[wet] = WATER
    scene.region[y0:y1, x0:x1][wet] = body
    scene.depth[y0:y1, x0:x1][wet] = np.clip((1.0 - r[wet]) * 2.5, 0, 1)


def _road_network(scene: _Scene) -> None:
    """Straight roads crossing the scene: about 3.5 km of road per square kilometre (at least two roads in
    scenes of 500 m or more), asphalt 6-10 m wide or gravel tracks 5-6.5 m wide."""
    rng, size = scene.rng["roads"], scene.size
    extent_km = size * PIXEL_M / 1000.0
    count = max(2 if extent_km >= 0.5 else 1, int(rng.poisson(3.5 * extent_km)))
    half = size / 2.0
    chosen: list[tuple[float, float]] = []
    for _ in range(count):
        for _attempt in range(20):
            phi = float(rng.uniform(0, math.pi))
            rho = float(rng.uniform(-0.46, 0.46)) * size
            # keep roads apart: no near-parallel pair closer than 80 m
            if all(abs(math.sin(phi - p)) > 0.35 or abs(rho - r * math.cos(phi - p)) > 80 * _PX
                   for p, r in chosen):
                break
        chosen.append((phi, rho))
        nx, ny = math.cos(phi), math.sin(phi)
        tx, ty = -ny, nx
        span = size * 0.75
        px, py = half + rho * nx, half + rho * ny
        asphalt = rng.random() < 0.8
        if asphalt:
            grey = float(rng.uniform(80, 118))
            colour = (grey, grey + 1.0, grey + float(rng.uniform(2, 6)))
            hw = float(rng.uniform(3.0, 5.0)) * _PX
        else:  # gravel / dirt track
            colour = (float(rng.uniform(150, 175)), float(rng.uniform(138, 158)),
                      float(rng.uniform(112, 130)))
            hw = float(rng.uniform(2.5, 3.25)) * _PX
        scene.roads.append(_Road(px - span * tx, py - span * ty, px + span * tx, py + span * ty,
                                 hw, colour, asphalt and hw > 3.4 * _PX))


def _rasterize_road(scene: _Scene, index: int, road: _Road) -> None:
    for y0, y1, x0, x1, _along, across, own in _segment_windows(scene.size, road):
        mask = own & (np.abs(across) <= road.half_width)
        scene.labels[y0:y1, x0:x1][mask] = ROAD
        scene.region[y0:y1, x0:x1][mask] = index


def _segment_windows(size: int, road: _Road):
    """Windows along a road: ``(y0, y1, x0, x1, along, across, own)`` with pixels' coordinates
    along and across the road and a mask of the pixels this window is responsible for."""
    dx, dy = road.x1 - road.x0, road.y1 - road.y0
    length = math.hypot(dx, dy)
    tx, ty = dx / length, dy / length
    margin = road.half_width + 2
    for t0 in np.arange(0.0, length, float(_CHUNK)):
        t1 = min(t0 + _CHUNK, length)
        xs_end = np.array([road.x0 + t0 * tx, road.x0 + t1 * tx])
        ys_end = np.array([road.y0 + t0 * ty, road.y0 + t1 * ty])
        y0, y1, x0, x1 = _bbox(xs_end, ys_end, margin, size)
        if y1 <= y0 or x1 <= x0:
            continue
        ys, xs = _window_coords(y0, y1, x0, x1)
        xs, ys = xs - np.float32(road.x0), ys - np.float32(road.y0)
        along = xs * np.float32(tx) + ys * np.float32(ty)
        across = ys * np.float32(tx) - xs * np.float32(ty)
        own = (along >= t0) & ((along < t1) if t1 < length else (along <= t1))
        if own.any():
            yield y0, y1, x0, x1, along, across, own


def _settlements(scene: _Scene) -> None:
    """Villages along roads (with side streets) and isolated farmsteads: built-up areas."""
    rng, size = scene.rng["settlements"], scene.size
    area_km2 = (size * PIXEL_M / 1000.0) ** 2
    outline, rough = _Noise(rng, size, 45.0 * _PX), _Noise(rng, size, 9.0 * _PX)
    half = size / 2.0
    main_roads = list(scene.roads)
    villages = max(1, int(rng.poisson(1.2 * area_km2)))
    plans = []
    for k in range(villages):
        if k == 0:  # the first village sits on the most central road, well inside the scene
            road = min(main_roads, key=lambda r: _distance_to_line(r, half, half))
            box = 0.3
        else:
            road = main_roads[int(rng.integers(len(main_roads)))]
            box = 0.5
        dx, dy = road.x1 - road.x0, road.y1 - road.y0
        length = math.hypot(dx, dy)
        tx, ty = dx / length, dy / length
        foot = ((half - road.x0) * tx + (half - road.y0) * ty)
        for _attempt in range(20):
            t = foot + float(rng.uniform(-box, box)) * size
            cx, cy = road.x0 + t * tx, road.y0 + t * ty
            if abs(cx - half) < box * size and abs(cy - half) < box * size:
                break
        else:
            t = foot
            cx, cy = road.x0 + t * tx, road.y0 + t * ty
        ra = float(rng.uniform(100.0, 170.0)) * _PX
        rb = float(rng.uniform(65.0, 110.0)) * _PX
        sid = _new_yard(scene, rng, math.atan2(ty, tx))
        _blob(scene, cx, cy, math.atan2(ty, tx), ra, rb, outline, rough, sid)
        # the main road through the village (already a road) and side streets get houses
        streets = [_Road(cx - ra * tx, cy - ra * ty, cx + ra * tx, cy + ra * ty,
                         road.half_width, road.colour, False)]
        grey = float(rng.uniform(88, 112))
        for _ in range(int(rng.integers(1, 4))):
            a = float(rng.uniform(-0.65, 0.65)) * ra
            turn = math.atan2(ty, tx) + math.pi / 2 + float(rng.uniform(-0.25, 0.25))
            sx, sy = math.cos(turn), math.sin(turn)
            ox, oy = cx + a * tx, cy + a * ty
            left = float(rng.uniform(0.5, 0.9)) * rb if rng.random() < 0.6 else 0.0
            right = float(rng.uniform(0.5, 0.9)) * rb
            street = _Road(ox - left * sx, oy - left * sy, ox + right * sx, oy + right * sy,
                           float(rng.uniform(2.5, 3.0)) * _PX, (grey, grey + 1, grey + 4), False)
            scene.roads.append(street)
            streets.append(street)
        plans.append(("village", sid, cx, cy, math.atan2(ty, tx), ra, rb, streets))
    ring = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    for _ in range(int(rng.poisson(1.5 * area_km2))):
        ra = float(rng.uniform(22.0, 40.0)) * _PX
        rb = ra * float(rng.uniform(0.65, 1.0))
        angle = float(rng.uniform(0, math.pi))
        for _attempt in range(10):  # on dry land, away from the river
            cx, cy = (float(v) for v in rng.uniform(0, size, 2))
            px = np.clip(cx + 1.5 * ra * np.cos(ring), 0, size - 1).astype(int)
            py = np.clip(cy + 1.5 * ra * np.sin(ring), 0, size - 1).astype(int)
            if not (scene.labels[py, px] == WATER).any() \
                    and scene.labels[int(cy), int(cx)] != WATER:
                break
        else:
            continue
        sid = _new_yard(scene, rng, angle)
        _blob(scene, cx, cy, angle, ra, rb, outline, rough, sid, radius_noise=0.12)
        plans.append(("farm", sid, cx, cy, angle, ra, rb, []))
    scene.settlement_plans = plans


def _distance_to_line(road: _Road, x: float, y: float) -> float:
    dx, dy = road.x1 - road.x0, road.y1 - road.y0
    return abs((x - road.x0) * dy - (y - road.y0) * dx) / math.hypot(dx, dy)


def _new_yard(scene: _Scene, rng: np.random.Generator, angle: float) -> int:
    """A settlement's id; its plots (lawns, paving, gravel, beds) are aligned with ``angle``."""
    scene.yard_angles.append(angle)
    return len(scene.yard_angles) - 1


def _blob(scene: _Scene, cx: float, cy: float, angle: float, ra: float, rb: float,
          outline: _Noise, rough: _Noise, sid: int, radius_noise: float = 0.2) -> None:
    size = scene.size
    y0, y1, x0, x1 = _bbox(np.array([cx]), np.array([cy]), max(ra, rb) * 1.6 + 2, size)
    if y1 <= y0 or x1 <= x0:
        return
    ys, xs = _window_coords(y0, y1, x0, x1)
    xs, ys = xs - np.float32(cx), ys - np.float32(cy)
    ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    a = (xs * ca + ys * sa) / np.float32(ra)
    b = (ys * ca - xs * sa) / np.float32(rb)
    r = np.sqrt(a * a + b * b)
    r += np.float32(radius_noise) * np.clip(outline.window(y0, y1, x0, x1), -2.2, 2.2)
    r += np.float32(0.04) * np.clip(rough.window(y0, y1, x0, x1), -2.2, 2.2)
    labels = scene.labels[y0:y1, x0:x1]
    inside = (r < 1.0) & (labels != WATER)
    labels[inside] = BUILT
    scene.region[y0:y1, x0:x1][inside] = sid


_ROOFS = np.array([[168, 78, 56], [186, 102, 66], [140, 70, 55], [122, 122, 128],
                   [88, 88, 96], [178, 178, 172], [152, 92, 72], [110, 60, 50]], np.float32)


def _place_buildings(scene: _Scene) -> None:
    rng = scene.rng["settlements"]
    for kind, sid, cx, cy, angle, ra, rb, streets in scene.settlement_plans:
        candidates = []
        if kind == "village":
            for street in streets:
                dx, dy = street.x1 - street.x0, street.y1 - street.y0
                length = math.hypot(dx, dy)
                tx, ty = dx / length, dy / length
                nx, ny = -ty, tx
                st_angle = math.atan2(ty, tx)
                for side in (-1.0, 1.0):
                    pos = float(rng.uniform(4.0, 12.0)) * _PX
                    while pos < length - 4 * _PX:
                        blen = float(rng.uniform(9.0, 22.0)) * _PX
                        bdep = float(rng.uniform(8.0, 13.0)) * _PX
                        turn = rng.random() < 0.25
                        across = bdep if not turn else blen
                        back = street.half_width + float(rng.uniform(3.0, 9.0)) * _PX + across / 2
                        for row in range(2 if rng.random() < 0.5 else 1):
                            dist = back + row * (across + float(rng.uniform(6.0, 14.0)) * _PX)
                            candidates.append((street.x0 + pos * tx + side * dist * nx,
                                               street.y0 + pos * ty + side * dist * ny,
                                               st_angle + (math.pi / 2 if turn else 0.0)
                                               + float(rng.normal(0, 0.03)), blen, bdep))
                        pos += (blen if not turn else bdep) + float(rng.uniform(4.0, 12.0)) * _PX
            for _ in range(int(ra * rb / (450.0 * _PX * _PX))):
                a, b = rng.uniform(-1, 1, 2) * np.array([ra, rb])
                candidates.append((cx + a * math.cos(angle) - b * math.sin(angle),
                                   cy + a * math.sin(angle) + b * math.cos(angle),
                                   angle + (math.pi / 2 if rng.random() < 0.3 else 0.0),
                                   float(rng.uniform(9.0, 20.0)) * _PX,
                                   float(rng.uniform(8.0, 12.0)) * _PX))
        else:  # a farmstead: a house and barns around the middle of its yard
            for i in range(14):
                spread = min(0.15 + 0.05 * i, 0.6)
                a, b = rng.uniform(-spread, spread, 2) * np.array([ra, rb])
                candidates.append((cx + a * math.cos(angle) - b * math.sin(angle),
                                   cy + a * math.sin(angle) + b * math.cos(angle),
                                   angle + (math.pi / 2 if rng.random() < 0.5 else 0.0),
                                   float(rng.uniform(9.0, 25.0 if i % 2 else 16.0)) * _PX,
                                   float(rng.uniform(8.0, 14.0)) * _PX))
        wanted = len(candidates) if kind == "village" else int(rng.integers(2, 5))
        placed = 0
        for bx, by, bangle, blen, bdep in candidates:
            colour = _ROOFS[int(rng.integers(len(_ROOFS)))] * np.float32(rng.uniform(0.9, 1.1))
            gable = bool(rng.random() < 0.75) and bdep < 14 * _PX
            shadow = float(rng.uniform(3.0, 6.5)) * _PX
            if placed < wanted:
                placed += _try_building(scene, sid, _Building(
                    bx, by, bangle, blen, bdep, tuple(float(c) for c in colour), gable, shadow))


def _building_frame(scene: _Scene, b: _Building, margin: float):
    """Window around a building and its pixels' coordinates along / across its length."""
    reach = math.hypot(b.length, b.depth) / 2 + margin + 1
    y0, y1, x0, x1 = _bbox(np.array([b.cx]), np.array([b.cy]), reach, scene.size)
    ys, xs = _window_coords(y0, y1, x0, x1)
    xs, ys = xs - np.float32(b.cx), ys - np.float32(b.cy)
    ca, sa = np.float32(math.cos(b.angle)), np.float32(math.sin(b.angle))
    return (y0, y1, x0, x1), xs * ca + ys * sa, ys * ca - xs * sa


def _try_building(scene: _Scene, sid: int, b: _Building) -> bool:
    size = scene.size
    if not (0 <= b.cx < size and 0 <= b.cy < size):
        return False
    margin = 1.5 * _PX
    (y0, y1, x0, x1), a, c = _building_frame(scene, b, margin)
    clear = (np.abs(a) <= b.length / 2 + margin) & (np.abs(c) <= b.depth / 2 + margin)
    # the whole footprint plus margin must be inside the scene and on this yard
    full_a = b.length + 2 * margin
    if clear.sum() < 0.8 * full_a * (b.depth + 2 * margin):
        return False
    labels = scene.labels[y0:y1, x0:x1][clear]
    if (labels != BUILT).any() or (scene.region[y0:y1, x0:x1][clear] != sid).any() \
            or scene.roof[y0:y1, x0:x1][clear].any():
        return False
    foot = (np.abs(a) <= b.length / 2) & (np.abs(c) <= b.depth / 2)
    scene.roof[y0:y1, x0:x1] |= foot
    scene.buildings.append(b)
    return True


# ---------------------------------------------------------------------------------------------
# image
# ---------------------------------------------------------------------------------------------
class _Palette:
    """Every per-object colour and texture table, drawn once so that strips agree."""

    def __init__(self, scene: _Scene, rng: np.random.Generator) -> None:
        size, n = scene.size, scene.parcels
        self.fine = _fine_noise(rng, size, 0.7)
        self.medium = _Noise(rng, size, 3.0 * _PX)
        self.large = _Noise(rng, size, 25.0 * _PX)

        crop_palette = np.array([
            # (plants / ripe colour), (soil / furrow colour)
            [[196, 178, 112], [170, 148, 96]],    # ripe wheat
            [[210, 194, 138], [182, 166, 116]],   # stubble
            [[132, 106, 82], [104, 82, 64]],      # ploughed soil
            [[150, 122, 94], [120, 96, 74]],      # harrowed soil
            [[104, 140, 64], [132, 112, 84]],     # green crop in rows
            [[120, 152, 72], [100, 126, 62]],     # green crop, dense
            [[204, 198, 84], [160, 160, 70]],     # flowering rapeseed
            [[170, 166, 100], [140, 130, 88]],    # maturing cereal
        ], np.float32)
        pick = rng.integers(len(crop_palette), size=n)
        tone = rng.uniform(0.9, 1.1, (n, 1)).astype(np.float32)
        self.crop_a = crop_palette[pick, 0] * tone
        self.crop_b = crop_palette[pick, 1] * tone
        row_angle = rng.uniform(0, math.pi, n)
        self.row_cos = np.cos(row_angle).astype(np.float32)
        self.row_sin = np.sin(row_angle).astype(np.float32)
        self.row_freq = (2 * math.pi / (rng.uniform(2.0, 6.0, n) * _PX)).astype(np.float32)
        self.row_phase = rng.uniform(0, 2 * math.pi, n).astype(np.float32)
        self.row_contrast = rng.uniform(0.35, 1.0, n).astype(np.float32)

        grass_palette = np.array([[104, 140, 66], [118, 150, 76], [96, 128, 62], [132, 150, 84],
                                  [112, 136, 74], [126, 158, 90]], np.float32)
        self.grass = grass_palette[rng.integers(len(grass_palette), size=n)] \
            * rng.uniform(0.92, 1.08, (n, 1)).astype(np.float32)

        forest_palette = np.array([[70, 98, 48], [62, 92, 44], [46, 70, 42], [40, 64, 46],
                                   [78, 104, 56]], np.float32)
        self.crowns = forest_palette[rng.integers(len(forest_palette), size=n)] \
            * rng.uniform(0.92, 1.08, (n, 1)).astype(np.float32)
        # one tree per 5 m cell of a jittered grid
        self.tree_spacing = np.float32(5.0 * _PX)
        self.tree_cells = m = int(size / self.tree_spacing) + 3
        self.tree_u, self.tree_v = _jittered_sites(rng, m, m, 0.75)
        self.tree_radius = rng.uniform(0.45, 0.8, m * m).astype(np.float32)
        tree_tone = rng.uniform(0.85, 1.15, (m * m, 1)).astype(np.float32)
        self.tree_tone = tree_tone * rng.uniform(0.97, 1.03, (m * m, 3)).astype(np.float32)

        self.water_shallow = np.array([c[0] for c in scene.water_colours] or [[0, 0, 0]],
                                      np.float32)
        self.water_deep = np.array([c[1] for c in scene.water_colours] or [[0, 0, 0]],
                                   np.float32)

        # settlement plots: a jittered grid turned with each settlement
        self.plot_u, self.plot_v = np.float32(13.0 * _PX), np.float32(19.0 * _PX)
        self.plot_reach = np.float32(size * 1.42)
        self.plot_nu = int(2 * self.plot_reach / self.plot_u) + 3
        self.plot_nv = int(2 * self.plot_reach / self.plot_v) + 3
        plots = self.plot_nu * self.plot_nv
        self.plot_site_u, self.plot_site_v = _jittered_sites(rng, self.plot_nu, self.plot_nv,
                                                             0.7)
        kinds = np.array([[90, 124, 66], [150, 148, 142], [112, 112, 115], [166, 157, 137],
                          [118, 98, 78], [150, 112, 96], [138, 134, 126]], np.float32)
        kind = rng.choice(len(kinds), size=plots, p=[0.28, 0.22, 0.1, 0.15, 0.08, 0.07, 0.1])
        self.plot_colour = kinds[kind] * rng.uniform(0.9, 1.1, (plots, 1)).astype(np.float32)
        angles = np.array(scene.yard_angles or [0.0], np.float32)
        self.yard_cos, self.yard_sin = np.cos(angles), np.sin(angles)

        self.road_colour = np.array([road.colour for road in scene.roads] or [[0, 0, 0]],
                                    np.float32)


def _paint(scene: _Scene) -> np.ndarray:
    """Colour every pixel by its class, strip by strip, then draw roads' lines and buildings."""
    rng, size = scene.rng["texture"], scene.size
    palette = _Palette(scene, rng)
    img = np.empty((3, size, size), np.float32)
    for y0 in range(0, size, _STRIP):
        _paint_strip(scene, palette, img, y0, min(y0 + _STRIP, size))
    del palette
    for index, road in enumerate(scene.roads):
        if road.centre_line:
            _centre_line(scene, img, index, road)
    _draw_buildings(scene, img, rng)
    return _finish(scene, img)


def _paint_strip(scene: _Scene, pal: _Palette, img: np.ndarray, y0: int, y1: int) -> None:
    size = scene.size
    labels = scene.labels[y0:y1].ravel()
    region = scene.region[y0:y1].ravel()
    fine = pal.fine[y0:y1].ravel()
    medium = pal.medium.window(y0, y1, 0, size).ravel()
    large = pal.large.window(y0, y1, 0, size).ravel()
    out = img[:, y0:y1].reshape(3, -1)

    def select(cls: int):
        idx = np.flatnonzero(labels == cls)
        row, col = np.divmod(idx, size)
        y = row.astype(np.float32) + np.float32(y0 + 0.5)
        x = col.astype(np.float32) + np.float32(0.5)
        return idx, y, x, region[idx]

    # cropland: per-field colours and rows in a per-field direction
    idx, y, x, r = select(CROP)
    if idx.size:
        s = np.sin((x * pal.row_cos[r] + y * pal.row_sin[r]) * pal.row_freq[r] + pal.row_phase[r])
        rows = np.float32(0.5) + np.float32(0.5 / math.tanh(1.8)) * np.tanh(np.float32(1.8) * s)
        rows *= pal.row_contrast[r]
        shade = 1 + 0.06 * large[idx] + 0.03 * medium[idx]
        grain = 2.5 * fine[idx]
        for band in range(3):
            a, b = pal.crop_a[r, band], pal.crop_b[r, band]
            out[band, idx] = (a + (b - a) * rows) * shade + grain

    # grassland: fine, low-contrast noise
    idx, y, x, r = select(GRASS)
    if idx.size:
        shade = 1 + 0.07 * large[idx] + 0.04 * medium[idx]
        grain = 3.0 * fine[idx]
        for band in range(3):
            out[band, idx] = pal.grass[r, band] * shade + grain

    # forest: hemispherical crowns lit from the sun's side, dark gaps between them
    idx, y, x, r = select(FOREST)
    if idx.size:
        u, v = x / pal.tree_spacing + 1, y / pal.tree_spacing + 1
        m = pal.tree_cells
        tree, dist2 = _nearest_site(u, v, pal.tree_u, pal.tree_v, m, m)
        rad = pal.tree_radius[tree]
        du, dv = (u - pal.tree_u[tree]) / rad, (v - pal.tree_v[tree]) / rad
        inside = dist2 < rad * rad
        h = np.sqrt(np.clip(1.0 - du * du - dv * dv, 0.0, 1.0))
        sx, sy = scene.sun
        light = 0.75 * (du * np.float32(sx) + dv * np.float32(sy)) + 0.66 * h
        bright = np.where(inside, 0.3 + 0.8 * np.clip(light, 0.0, 1.0), 0.0)
        bright *= 1 + 0.06 * large[idx] + 0.12 * fine[idx]
        shadow = (14.0, 24.0, 17.0)
        grain = 1.5 * fine[idx]
        for band in range(3):
            crown = pal.crowns[r, band] * pal.tree_tone[tree, band]
            out[band, idx] = shadow[band] + (crown - shadow[band]) * bright + grain

    # water: darker with depth, faint ripples, sparse glint
    idx, y, x, r = select(WATER)
    if idx.size:
        d = np.sqrt(scene.depth[y0:y1].ravel()[idx].astype(np.float32))
        ripple = 1.8 * pal.medium.at(y * np.float32(0.35), x * np.float32(0.35)) \
            + 1.0 * fine[idx]
        glint = 45.0 * np.clip(large[idx] - 1.0, 0, None) * np.clip(fine[idx] - 1.6, 0, None)
        shade = 1 + 0.05 * pal.large.at(y + np.float32(37.0), x - np.float32(23.0))
        for band in range(3):
            shallow, deep = pal.water_shallow[r, band], pal.water_deep[r, band]
            out[band, idx] = (shallow + (deep - shallow) * d) * shade + ripple + glint

    # built-up: plots of lawn, paving, gravel and beds; a hedge round the edge, kerbs at roads
    idx, y, x, r = select(BUILT)
    if idx.size:
        ca, sa = pal.yard_cos[r], pal.yard_sin[r]
        u = (x * ca + y * sa + pal.plot_reach) / pal.plot_u
        v = (y * ca - x * sa + pal.plot_reach) / pal.plot_v
        plot = _nearest_site(u, v, pal.plot_site_u, pal.plot_site_v, pal.plot_nu,
                             pal.plot_nv)[0]
        gy, gx = np.divmod(idx, size)
        gy += y0
        near_road = np.zeros(idx.shape, bool)
        outside = np.zeros(idx.shape, bool)
        flat = scene.labels.ravel()
        for dist in (1, 2):
            for dy, dx in ((0, dist), (0, -dist), (dist, 0), (-dist, 0)):
                other = flat[np.clip(gy + dy, 0, size - 1) * size + np.clip(gx + dx, 0, size - 1)]
                if dist == 1:
                    near_road |= other == ROAD
                outside |= (other != BUILT) & (other != ROAD)
        hedge = outside & ~near_road
        shade = 1 + 0.06 * large[idx] + 0.05 * medium[idx]
        texture = 4.0 * fine[idx]
        hedge_shade = np.float32(0.8) + np.float32(0.25) * fine[idx]
        for band, (kerb_c, hedge_c) in enumerate(zip((172, 170, 163), (48, 70, 40))):
            value = pal.plot_colour[plot, band] * shade + texture
            value[near_road] = kerb_c + texture[near_road]
            value[hedge] = hedge_c * hedge_shade[hedge]
            out[band, idx] = value

    # roads: asphalt or gravel with slight noise
    idx, y, x, r = select(ROAD)
    if idx.size:
        shade = 1 + 0.04 * large[idx]
        grain = 3.0 * fine[idx] + 2.0 * medium[idx]
        for band in range(3):
            out[band, idx] = pal.road_colour[r, band] * shade + grain


def _centre_line(scene: _Scene, img: np.ndarray, index: int, road: _Road) -> None:
    dash, gap = 3.0 * _PX, 6.0 * _PX
    for y0, y1, x0, x1, along, across, own in _segment_windows(scene.size, road):
        mask = own & (np.abs(across) < 0.5) & (np.mod(along, dash + gap) < dash)
        mask &= (scene.labels[y0:y1, x0:x1] == ROAD) & (scene.region[y0:y1, x0:x1] == index)
        img[:, y0:y1, x0:x1][:, mask] += np.float32(60.0)


def _draw_buildings(scene: _Scene, img: np.ndarray, rng: np.random.Generator) -> None:
    sx, sy = scene.sun
    for b in scene.buildings:
        (y0, y1, x0, x1), a, c = _building_frame(scene, b, b.shadow + 2)
        foot = (np.abs(a) <= b.length / 2) & (np.abs(c) <= b.depth / 2)
        # shadow: the footprint swept away from the sun by ``shadow`` px
        ca, sa = math.cos(b.angle), math.sin(b.angle)
        da = -(sx * ca + sy * sa) * b.shadow      # shadow offset in the building's frame
        dc = -(sy * ca - sx * sa) * b.shadow
        lo = np.zeros_like(a)
        hi = np.ones_like(a)
        for coord, offset, half in ((a, da, b.length / 2), (c, dc, b.depth / 2)):
            if abs(offset) < 1e-6:
                inside = np.abs(coord) <= half
                hi = np.where(inside, hi, -1.0)
                continue
            t_a = (coord - half) / np.float32(offset)
            t_b = (coord + half) / np.float32(offset)
            lo = np.maximum(lo, np.minimum(t_a, t_b))
            hi = np.minimum(hi, np.maximum(t_a, t_b))
        shadow = (lo <= hi) & ~scene.roof[y0:y1, x0:x1] & \
            (scene.labels[y0:y1, x0:x1] == BUILT)
        window = img[:, y0:y1, x0:x1]
        window[:, shadow] *= np.float32(0.5)
        # roof: a gable roof has a lit and a shaded half and a ridge line; flat roofs a rim
        colour = np.array(b.colour, np.float32)[:, None]
        n_foot = int(foot.sum())
        if n_foot == 0:
            continue
        side = c[foot]
        if b.gable:
            # normal of the half with c > 0 points along +c: (-sin, cos) in image coords
            facing = (-sa * sx + ca * sy)
            light = np.where(side > 0, 1 + 0.22 * facing, 1 - 0.22 * facing).astype(np.float32)
            light = np.where(np.abs(side) < 0.5, np.float32(1.12), light)
        else:
            rim = (np.abs(a[foot]) > b.length / 2 - 1) | (np.abs(side) > b.depth / 2 - 1)
            light = np.where(rim, np.float32(0.85), np.float32(1.0))
        tiles = rng.standard_normal(n_foot, dtype=np.float32) * np.float32(3.0)
        window[:, foot] = colour * light[None] + tiles[None]


def _finish(scene: _Scene, img: np.ndarray) -> np.ndarray:
    """Illumination, the sensor's point spread (0.5 px), sensor noise, quantisation."""
    rng, size = scene.rng["finish"], scene.size
    light = _Noise(rng, size, 350.0 * _PX)
    gx, gy = (float(g) for g in rng.normal(0, 0.04, 2) / size)
    out = np.empty((3, size, size), np.uint8)
    halo = 3
    for y0 in range(0, size, _STRIP):
        y1 = min(y0 + _STRIP, size)
        a, b = max(y0 - halo, 0), min(y1 + halo, size)
        ys, xs = _window_coords(a, b, 0, size)
        gain = 1 + 0.05 * light.window(a, b, 0, size) \
            + np.float32(gx) * (xs - np.float32(size / 2)) \
            + np.float32(gy) * (ys - np.float32(size / 2))
        block = img[:, a:b] * gain[None]
        block = ndimage.gaussian_filter(block, (0, 0.5, 0.5), mode="reflect")[:, y0 - a:y1 - a]
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(1.8)
        np.clip(block, 0, 255, out=block)
        np.rint(block, out=block)
        out[:, y0:y1] = block
    return out


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
SAMPLE_CRS = "EPSG:32633"


def sample_transform(seed: int) -> rasterio.Affine:
    """Upper-left corner of scene ``seed`` in UTM 33N: scenes sit on a grid of 10 km cells."""
    east = 400_000.0 + 10_000.0 * (seed % 40)
    north = 5_500_000.0 - 10_000.0 * ((seed // 40) % 40)
    return from_origin(east, north, PIXEL_M, PIXEL_M)


def write_sample(out_dir: str | Path, *, seed: int = 0, size: int = 2048) -> dict[str, Path]:
    """Write ``orthophoto.tif``, ``labels.tif`` and ``labels.gpkg`` for scene ``seed``.

    The GeoTIFFs are tiled (256 px) and deflate-compressed, in EPSG:32633 at 0.5 m. Files are
    staged and published together: nothing is left behind if writing fails.
    """
    from deeplab_geo import io
    from deeplab_geo.config import VectorizeSettings
    from deeplab_geo.vectorize import polygonize, write_polygons

    out_dir = Path(out_dir)
    image, labels = synthesize_scene(seed, size)
    profile = {"driver": "GTiff", "width": size, "height": size, "crs": SAMPLE_CRS,
               "transform": sample_transform(seed), "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    with io.staged_outputs(out_dir) as staging:
        staged = {"image": staging / "orthophoto.tif", "labels": staging / "labels.tif",
                  "polygons": staging / "labels.gpkg"}
        with rasterio.open(staged["image"], "w", **profile, count=3, dtype="uint8",
                           photometric="RGB") as ds:
            ds.write(image)
            ds.update_tags(SCENE_SEED=str(seed))
        with rasterio.open(staged["labels"], "w", **profile, count=1, dtype="uint8",
                           nodata=255) as ds:
            ds.write(labels[None])
            ds.write_colormap(1, {i: (*c, 255) for i, c in enumerate(CLASS_COLOURS)})
            ds.update_tags(CLASS_NAMES=",".join(CLASS_NAMES), SCENE_SEED=str(seed))
        frame = polygonize(staged["labels"], None, list(CLASS_NAMES), VectorizeSettings())
        write_polygons(frame, staged["polygons"])
        return io.publish(staged, out_dir)

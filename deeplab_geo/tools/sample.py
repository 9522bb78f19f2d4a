"""Synthetic land-cover scenes: a deterministic stand-in for a labelled orthophoto.

``synthesize_scene(seed, size)`` paints a rural / peri-urban landscape at 0.5 m per pixel and
returns the image with its exact ground truth. Feature sizes are in metres, so a small scene
looks like a crop of a large one. The layers, bottom to top:

* parcels: a domain-warped Voronoi partition (about one parcel per 75 m x 75 m) whose cells
  become forest, grassland or cropland after two smooth random fields, so that neighbouring
  parcels of one class merge into irregular patches;
* settlements (built-up): warped discs holding rectangular buildings with cast shadows on
  paved yards;
* water: a meandering river of varying width and sometimes a pond, with noisy banks;
* roads: straight asphalt bands with a dashed centre line, crossing everything.

Each class has its own palette and texture (tree crowns, crop rows in a per-field direction,
fine grass noise, ripples, roofs and shadows); some palettes overlap on purpose so that texture
and context matter. Image edges coincide with label edges (up to the sub-pixel blur every sensor
has), which is what a dense CRF needs to sharpen coarse predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage
from scipy.spatial import cKDTree

CLASS_NAMES: tuple[str, ...] = ("water", "forest", "grassland", "cropland", "built-up", "road")
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (31, 120, 180), (27, 94, 32), (154, 205, 50), (240, 200, 60), (220, 50, 47), (90, 90, 90))
WATER, FOREST, GRASS, CROP, BUILT, ROAD = range(6)

PIXEL_M = 0.5
_PARCEL_M = 75.0
_ROWS_PER_QUERY = 512


def synthesize_scene(seed: int, size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, labels)``: uint8 ``(3, size, size)`` RGB and uint8 ``(size, size)``."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    painter = _Painter(size)
    layers = (painter.parcels, painter.settlements, painter.water, painter.roads, painter.finish)
    for index, layer in enumerate(layers):
        painter.rng = np.random.default_rng([seed, index])  # one stream per layer
        result = layer()
    return result


class _Painter:
    """Holds the label raster and a float RGB canvas while the layers are painted."""

    def __init__(self, size: int) -> None:
        self.rng, self.size = np.random.default_rng(0), size
        self.labels = np.full((size, size), GRASS, np.uint8)
        self.rgb = np.zeros((3, size, size), np.float32)
        self.extent_m = size * PIXEL_M

    # -- fields ---------------------------------------------------------------------------
    def smooth(self, scale_m: float, octaves: int = 1) -> np.ndarray:
        """Smooth noise in about [-1, 1] whose features are ``scale_m`` metres across."""
        total = np.zeros((self.size, self.size), np.float32)
        amplitude, norm = 1.0, 0.0
        for _ in range(octaves):
            cells = max(2, int(np.ceil(self.extent_m / scale_m)) + 3)
            coarse = self.rng.standard_normal((cells, cells)).astype(np.float32)
            zoom = self.size / (cells - 3)
            field = ndimage.zoom(coarse, zoom, order=3, prefilter=False)
            total += amplitude * field[1:self.size + 1, 1:self.size + 1] / 0.6
            norm += amplitude
            amplitude *= 0.5
            scale_m /= 2.0
        return total / norm

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates in metres, y down."""
        axis = (np.arange(self.size, dtype=np.float32) + 0.5) * PIXEL_M
        return np.meshgrid(axis, axis, indexing="ij")

    # -- layers ---------------------------------------------------------------------------
    def parcels(self) -> None:
        rng = self.rng
        count = max(4, int(self.extent_m**2 / _PARCEL_M**2))
        seeds = rng.uniform(-20, self.extent_m + 20, (count, 2)).astype(np.float32)
        warp = 14.0
        wy, wx = self.smooth(60, 2) * warp, self.smooth(60, 2) * warp
        parcel = self._nearest(seeds, wy, wx)
        # class per parcel from two smooth fields sampled at the seeds
        forest_f = self._sample(self.smooth(350), seeds)
        grass_f = self._sample(self.smooth(250), seeds)
        parcel_class = np.where(forest_f > 0.45, FOREST, np.where(grass_f > 0.1, GRASS, CROP))
        self.labels = parcel_class[parcel].astype(np.uint8)
        self._paint_forest(self.labels == FOREST)
        self._paint_grass(self.labels == GRASS)
        self._paint_crops(self.labels == CROP, parcel, count)

    def settlements(self) -> None:
        rng = self.rng
        count = rng.poisson(max(0.3, 2.2 * (self.extent_m / 1000.0) ** 2)) if self.size > 64 \
            else int(rng.random() < 0.3)
        count = max(count, 1) if self.size >= 512 else count
        yy, xx = self.coords()
        area = np.zeros_like(self.labels, dtype=bool)
        rim = self.smooth(40, 2)
        for _ in range(count):
            cy, cx = rng.uniform(0.1, 0.9, 2) * self.extent_m
            radius = rng.uniform(70, 170)
            dist = np.hypot(yy - cy, xx - cx) / radius
            area |= dist + 0.25 * rim < 1.0
        if not area.any():
            return
        self.labels[area] = BUILT
        self._paint_yards(area)
        self._paint_buildings(area)

    def water(self) -> None:
        rng = self.rng
        yy, xx = self.coords()
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        centre = self.extent_m / 2
        v_mid = centre * (-np.sin(angle) + np.cos(angle)) + rng.uniform(-0.2, 0.2) * self.extent_m
        meander = np.zeros_like(u)
        for _ in range(3):
            wavelength = rng.uniform(150, 500)
            meander += rng.uniform(10, 45) * np.sin(2 * np.pi * u / wavelength +
                                                    rng.uniform(0, 2 * np.pi))
        width = 27.0 + 12.0 * self.smooth(250)
        bank = self.smooth(12, 2) * 2.5
        offset = np.abs(v - v_mid - meander)
        river = offset + bank < width / 2
        depth = np.clip(1 - offset / np.maximum(width / 2, 1), 0, 1)
        if rng.random() < 0.6 and self.size >= 256:
            cy, cx = rng.uniform(0.15, 0.85, 2) * self.extent_m
            radius = rng.uniform(20, 50)
            dist = np.hypot(yy - cy, xx - cx) / radius + 0.2 * self.smooth(25, 2)
            river |= dist < 1
            depth = np.maximum(depth, np.clip(1 - dist, 0, 1))
        self.labels[river] = WATER
        self._paint_water(river, depth)

    def roads(self) -> None:
        rng = self.rng
        yy, xx = self.coords()
        count = max(1, rng.poisson(2.5 * self.extent_m / 1000.0)) if self.size >= 128 else \
            int(rng.random() < 0.5)
        for _ in range(count):
            angle = rng.uniform(0, np.pi)
            py, px = rng.uniform(0.15, 0.85, 2) * self.extent_m
            across = (xx - px) * -np.sin(angle) + (yy - py) * np.cos(angle)
            along = (xx - px) * np.cos(angle) + (yy - py) * np.sin(angle)
            half = rng.uniform(2.5, 5.0)
            road = np.abs(across) < half
            self.labels[road] = ROAD
            self._paint_road(road, across, along)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        illumination = 1.0 + 0.06 * self.smooth(400)
        rgb = self.rgb * illumination
        rgb = ndimage.gaussian_filter(rgb, (0, 0.5, 0.5))  # the sensor's point spread
        rgb += self.rng.normal(0, 2.0, rgb.shape).astype(np.float32)
        image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return image, self.labels

    # -- textures -------------------------------------------------------------------------
    def _put(self, mask: np.ndarray, rgb: np.ndarray) -> None:
        """Write ``rgb`` (3, H, W) or (3, n) into the canvas where ``mask`` holds."""
        for band in range(3):
            self.rgb[band][mask] = rgb[band] if rgb.ndim == 2 else rgb[band][mask]

    def _paint_forest(self, mask: np.ndarray) -> None:
        crowns = ndimage.gaussian_filter(self.rng.standard_normal(mask.shape).astype(np.float32),
                                         2.2)
        crowns = np.clip(crowns / (crowns.std() + 1e-6), -2.5, 2.5)
        tone = self.smooth(60)
        base = np.array([42, 74, 36], np.float32)[:, None, None]
        shade = 1.0 + 0.22 * crowns + 0.08 * tone
        self._put(mask, base * shade[None])

    def _paint_grass(self, mask: np.ndarray) -> None:
        fine = ndimage.gaussian_filter(self.rng.standard_normal(mask.shape).astype(np.float32),
                                       0.8)
        tone = self.smooth(80, 2)
        base = np.array([112, 146, 68], np.float32)[:, None, None]
        shade = 1.0 + 0.05 * fine / (fine.std() + 1e-6) + 0.08 * tone
        self._put(mask, base * shade[None])

    def _paint_crops(self, mask: np.ndarray, parcel: np.ndarray, count: int) -> None:
        rng = self.rng
        palette = np.array([[196, 176, 104], [150, 118, 82], [118, 150, 72], [206, 196, 132],
                            [170, 150, 96], [96, 134, 62]], np.float32)
        colour = palette[rng.integers(len(palette), size=count)] * \
            rng.uniform(0.92, 1.08, (count, 1)).astype(np.float32)
        theta = rng.uniform(0, np.pi, count).astype(np.float32)
        period = rng.uniform(1.8, 4.0, count).astype(np.float32)
        depth = rng.uniform(0.05, 0.14, count).astype(np.float32)
        yy, xx = self.coords()
        pid = parcel[mask]
        phase = (xx[mask] * np.cos(theta[pid]) + yy[mask] * np.sin(theta[pid])) / period[pid]
        rows = 1.0 + depth[pid] * np.sin(2 * np.pi * phase)
        fine = 1.0 + 0.03 * self.rng.standard_normal(pid.shape).astype(np.float32)
        self._put(mask, colour[pid].T * (rows * fine)[None])

    def _paint_yards(self, mask: np.ndarray) -> None:
        tone = self.smooth(30, 2)
        fine = self.rng.standard_normal(mask.shape).astype(np.float32)
        base = np.array([158, 152, 140], np.float32)[:, None, None]
        shade = 1.0 + 0.07 * tone + 0.03 * fine
        self._put(mask, base * shade[None])

    def _paint_buildings(self, area: np.ndarray) -> None:
        rng = self.rng
        ys, xs = np.nonzero(area)
        n = int(area.sum() * PIXEL_M**2 / 450.0)
        if n == 0:
            return
        roofs = np.array([[168, 74, 52], [186, 98, 60], [112, 112, 118], [84, 84, 92],
                          [150, 60, 48]], np.float32)
        shadow_px = (int(rng.integers(4, 9)), int(rng.integers(4, 9)))  # sun from the north-west
        shadow = np.zeros_like(area)
        roof_mask = np.zeros_like(area)
        roof_rgb = np.zeros((3, *area.shape), np.float32)
        for i in rng.choice(len(ys), size=min(n, len(ys)), replace=False):
            h = int(rng.uniform(8, 25) / PIXEL_M)
            w = int(rng.uniform(8, 18) / PIXEL_M)
            if rng.random() < 0.5:
                h, w = w, h
            r0, c0 = ys[i] - h // 2, xs[i] - w // 2
            r1, c1 = r0 + h, c0 + w
            r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, self.size), min(c1, self.size)
            if r1 <= r0 or c1 <= c0 or not area[r0:r1, c0:c1].all() or \
                    roof_mask[max(r0 - 4, 0):r1 + 4, max(c0 - 4, 0):c1 + 4].any():
                continue
            colour = roofs[rng.integers(len(roofs))] * rng.uniform(0.9, 1.1)
            block = np.ones((3, r1 - r0, c1 - c0), np.float32) * colour[:, None, None]
            if (r1 - r0) >= (c1 - c0):  # gable roof: one side brighter
                block[:, :, (c1 - c0) // 2:] *= 0.82
            else:
                block[:, (r1 - r0) // 2:, :] *= 0.82
            roof_rgb[:, r0:r1, c0:c1] = block
            roof_mask[r0:r1, c0:c1] = True
            sr, sc = shadow_px
            shadow[r0 + sr:min(r1 + sr, self.size), c0 + sc:min(c1 + sc, self.size)] = True
        shadow &= area & ~roof_mask
        for band in range(3):
            self.rgb[band][shadow] *= 0.55
        self._put(roof_mask, roof_rgb)

    def _paint_water(self, mask: np.ndarray, depth: np.ndarray) -> None:
        yy, xx = self.coords()
        ripples = np.sin(2 * np.pi * (xx * 0.8 + yy * 0.6) / 3.0 + 3 * self.smooth(20))
        shallow = np.array([58, 84, 80], np.float32)[:, None, None]
        deep = np.array([28, 50, 66], np.float32)[:, None, None]
        d = np.clip(depth * 2.5, 0, 1)[None]
        colour = shallow * (1 - d) + deep * d
        colour = colour * (1.0 + 0.025 * ripples + 0.04 * self.smooth(80))[None]
        self._put(mask, colour)

    def _paint_road(self, mask: np.ndarray, across: np.ndarray, along: np.ndarray) -> None:
        grain = self.rng.standard_normal(mask.shape).astype(np.float32)
        tone = 96.0 + 4.0 * grain + 5.0 * self.smooth(50)
        dashes = (np.abs(across) < 0.12 / PIXEL_M * PIXEL_M) & (np.mod(along, 9.0) < 4.5)
        tone = np.where(dashes, 205.0, tone)
        self._put(mask, np.stack([tone, tone, tone * 1.03]))

    # -- helpers --------------------------------------------------------------------------
    def _nearest(self, seeds: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
        """Index of the nearest seed for every (warped) pixel, queried in row blocks."""
        tree = cKDTree(seeds)
        axis = (np.arange(self.size, dtype=np.float32) + 0.5) * PIXEL_M
        out = np.empty((self.size, self.size), np.int32)
        for r0 in range(0, self.size, _ROWS_PER_QUERY):
            r1 = min(r0 + _ROWS_PER_QUERY, self.size)
            y = axis[r0:r1, None] + wy[r0:r1]
            x = axis[None, :] + wx[r0:r1]
            _, idx = tree.query(np.stack([y.ravel(), x.ravel()], 1), workers=-1)
            out[r0:r1] = idx.reshape(r1 - r0, self.size)
        return out

    def _sample(self, field: np.ndarray, points: np.ndarray) -> np.ndarray:
        idx = np.clip((points / PIXEL_M).astype(int), 0, self.size - 1)
        return field[idx[:, 0], idx[:, 1]]


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
    from deeplab_geo.config import VectorizeSettings
    from deeplab_geo.raster import io
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

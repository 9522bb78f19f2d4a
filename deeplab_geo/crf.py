"""Fully connected CRF refinement (Krähenbühl & Koltun 2011), as used by DeepLab.

Energy: unary ``-log p(x_i)`` from the network, plus Potts pairwise terms with two Gaussian
kernels over all pixel pairs:

* bilateral (appearance): ``w1 * exp(-|p_i - p_j|² / 2θα² - |I_i - I_j|² / 2θβ²)``
* spatial (smoothness): ``w2 * exp(-|p_i - p_j|² / 2θγ²)``

solved by mean-field inference. Positions are in pixels and colours in 8-bit units. Spatial
widths relate to the ground through the pixel size: at 0.5 m the default θα = 67 px reaches
33.5 m, at 10 m (Sentinel-2) 670 m. To keep a ground distance across resolutions, give θα and
θγ in metres (``spatial_units: metres``); they are divided by the raster's pixel size.
pydensecrf maps θγ, w2 to ``addPairwiseGaussian(sxy, compat)`` and θα, θβ, w1 to
``addPairwiseBilateral``.
"""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import rasterio

from deeplab_geo.config import CRFSettings
from deeplab_geo.errors import ConfigError

_EPS = 1e-8


@dataclass(frozen=True)
class ColourMapping:
    """How a tile's bands become the bilateral kernel's 8-bit colours.

    ``bands`` are 0-based indexes (three; a single band is repeated). ``low``/``high`` are the
    per-band values mapped to 0 and 255; ``None`` takes 8-bit values as they are.
    """

    bands: tuple[int, int, int] = (0, 1, 2)
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None


def colour_mapping(ds: rasterio.DatasetReader, settings: CRFSettings) -> ColourMapping:
    """The colour mapping of a raster: chosen bands, and one stretch for the whole raster.

    Percentiles come from a decimated read (at most 1024 px on the longer side) of valid
    pixels, so every tile is stretched the same way and the CRF shows no seams.
    """
    if settings.bands is not None:
        if max(settings.bands) > ds.count:
            raise ConfigError(f"crf.bands {settings.bands}: the raster has {ds.count} band(s)")
        chosen = [b - 1 for b in settings.bands]
    else:
        chosen = list(range(min(3, ds.count)))
    bands = tuple((chosen * 3)[:3]) if len(chosen) == 1 else tuple((chosen + chosen)[:3])
    if ds.dtypes[0] == "uint8":
        return ColourMapping(bands)
    scale = min(1.0, 1024 / max(ds.height, ds.width))
    shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
    data = ds.read([b + 1 for b in bands], out_shape=(3, *shape), masked=True)
    low, high = [], []
    for band in data:
        values = band.compressed() if band.count() else np.zeros(1)
        lo, hi = np.percentile(values, settings.stretch)
        low.append(float(lo))
        high.append(float(max(hi, lo + _EPS)))
    return ColourMapping(bands, tuple(low), tuple(high))


def colour_features(tile: np.ndarray, mapping: ColourMapping | None = None) -> np.ndarray:
    """The uint8 ``(H, W, 3)`` C-contiguous image the bilateral kernel compares.

    Without a mapping: 8-bit tiles use their first three bands (a single band is repeated) and
    other types are stretched from the tile's own 2nd to 98th percentile.
    """
    if mapping is None:
        count = tile.shape[0]
        bands = (0, 0, 0) if count == 1 else ((0, 1, 2) if count >= 3 else (0, 1, 0))
        mapping = ColourMapping(bands)
        if tile.dtype != np.uint8:
            data = tile[list(bands)].astype(np.float32)
            low = tuple(np.percentile(data, 2, axis=(1, 2)))
            high = tuple(np.percentile(data, 98, axis=(1, 2)))
            mapping = ColourMapping(bands, low, high)
    picked = tile[list(mapping.bands)]
    if mapping.low is None:
        colours = picked.astype(np.uint8) if picked.dtype != np.uint8 else picked
    else:
        low = np.asarray(mapping.low, np.float32)[:, None, None]
        high = np.asarray(mapping.high, np.float32)[:, None, None]
        scaled = (picked.astype(np.float32) - low) / np.maximum(high - low, _EPS) * 255.0
        colours = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(colours.transpose(1, 2, 0))


def refine(probs: np.ndarray, image: np.ndarray, settings: CRFSettings) -> np.ndarray:
    """Mean-field inference of the dense CRF for one tile.

    Args:
        probs: float32 ``(C, H, W)`` class probabilities from the network.
        image: uint8 ``(H, W, 3)`` colour features (see :func:`colour_features`).
        settings: kernel weights, widths and iterations.

    Returns:
        float32 ``(C, H, W)`` refined marginals, summing to 1 over classes.
    """
    import pydensecrf.densecrf as dcrf  # imported here: a C extension only this stage needs

    n_classes, height, width = probs.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 ({height}, {width}, 3), got {image.dtype} "
                         f"{image.shape}")
    unary = -np.log(np.clip(probs, _EPS, 1.0)).reshape(n_classes, -1)
    crf = dcrf.DenseCRF2D(width, height, n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if settings.w2 > 0:
        crf.addPairwiseGaussian(sxy=settings.theta_gamma, compat=settings.w2)
    if settings.w1 > 0:
        crf.addPairwiseBilateral(sxy=settings.theta_alpha, srgb=settings.theta_beta,
                                 rgbim=np.ascontiguousarray(image), compat=settings.w1)
    marginals = np.asarray(crf.inference(settings.iterations), dtype=np.float32)
    return marginals.reshape(n_classes, height, width)


def refine_many(items: list[tuple[np.ndarray, np.ndarray]], settings: CRFSettings,
                processes: int = 1) -> list[np.ndarray]:
    """:func:`refine` for several tiles ``(probs, image)``, in worker processes when asked.

    pydensecrf holds the GIL, so threads cannot run two refinements at once; with
    ``processes > 1`` the tiles go to a pool of that many processes (started once per process
    with the ``spawn`` method, which is safe next to threaded libraries such as torch).
    """
    if processes <= 1 or len(items) <= 1:
        return [refine(probs, image, settings) for probs, image in items]
    pool = _process_pool(processes)
    return list(pool.map(_refine_pair, items, repeat(settings)))


def _refine_pair(item: tuple[np.ndarray, np.ndarray], settings: CRFSettings) -> np.ndarray:
    return refine(item[0], item[1], settings)


@functools.cache
def _process_pool(processes: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=processes,
                               mp_context=multiprocessing.get_context("spawn"))

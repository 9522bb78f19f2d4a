"""The inputs of the dense CRF: its parameters, the colours its bilateral kernel compares, and the
feature vectors of both kernels, built exactly as pydensecrf's ``DenseCRF2D`` builds them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio

from deeplab_geo.errors import ConfigError

EPS = 1e-8
"""Floor of probabilities (before the log of the unary) and of colour ranges."""


@dataclass(frozen=True)
class CRFParams:
    """The numbers of one dense CRF: kernel weights and widths, iterations, and where it runs.

    Defaults are the released DeepLab ResNet-101 setting. ``theta_alpha`` and ``theta_gamma``
    are in pixels, ``theta_beta`` in 8-bit colour units; a weight of 0 switches its kernel off.
    ``refiner`` is ``pydensecrf`` (C++) or ``torch`` (:mod:`deeplab_geo.crf.lattice`, on
    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``).
    """

    w1: float = 4.0
    theta_alpha: float = 67.0
    theta_beta: float = 3.0
    w2: float = 3.0
    theta_gamma: float = 1.0
    iterations: int = 10
    refiner: str = "pydensecrf"
    device: str = "cpu"


@dataclass(frozen=True)
class ColourMapping:
    """How a tile's bands become the bilateral kernel's 8-bit colours.

    ``bands`` are 0-based indexes (three; a single band is repeated). ``low``/``high`` are the
    per-band values mapped to 0 and 255; ``None`` takes 8-bit values as they are.
    """

    bands: tuple[int, int, int] = (0, 1, 2)
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None


def colour_mapping(ds: rasterio.DatasetReader, bands: Sequence[int] | None = None,
                   stretch: tuple[float, float] = (2.0, 98.0)) -> ColourMapping:
    """The colour mapping of a raster: chosen bands, and one stretch for the whole raster.

    Percentiles come from a decimated read (at most 1024 px on the longer side) of valid
    pixels, so every tile is stretched the same way and the CRF shows no seams. ``bands`` and
    ``stretch`` are as in :func:`colour_bands` and :func:`stretched`.
    """
    chosen = colour_bands(ds.count, bands)
    if ds.dtypes[0] == "uint8":
        return ColourMapping(chosen)
    scale = min(1.0, 1024 / max(ds.height, ds.width))
    shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
    data = ds.read([b + 1 for b in chosen], out_shape=(3, *shape), masked=True)
    return stretched(chosen, data, stretch)


def colour_bands(count: int, bands: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The three 0-based bands of a ``count``-band raster the colour kernel compares.

    ``bands``: up to three 1-based band numbers (a single band is repeated); default the first
    three.

    Raises:
        ConfigError: a band is not in the raster.
    """
    if bands is not None:
        if max(bands) > count:
            raise ConfigError(f"crf.bands {list(bands)}: the raster has {count} band(s)")
        chosen = [b - 1 for b in bands]
    else:
        chosen = list(range(min(3, count)))
    return tuple((chosen * 3)[:3]) if len(chosen) == 1 else tuple((chosen + chosen)[:3])


def stretched(bands: tuple[int, int, int], sample: np.ma.MaskedArray,
              stretch: tuple[float, float] = (2.0, 98.0)) -> ColourMapping:
    """The mapping that stretches ``bands`` between the ``stretch`` percentiles of the
    valid pixels of ``sample`` (``(3, h, w)``, masked where invalid, the bands already
    picked)."""
    low, high = [], []
    for band in sample:
        values = band.compressed() if band.count() else np.zeros(1)
        lo, hi = np.percentile(values, stretch)
        low.append(float(lo))
        high.append(float(max(hi, lo + EPS)))
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
        scaled = (picked.astype(np.float32) - low) / np.maximum(high - low, EPS) * 255.0
        colours = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(colours.transpose(1, 2, 0))


def position_features(height: int, width: int, theta: float) -> np.ndarray:
    """float32 ``(2, H*W)`` pixel positions ``(x / θ, y / θ)``, row-major, as pydensecrf's
    ``DenseCRF2D`` computes them."""
    scale = np.float32(theta)
    x = np.arange(width, dtype=np.float32) / scale
    y = np.arange(height, dtype=np.float32) / scale
    return np.stack([np.broadcast_to(x, (height, width)),
                     np.broadcast_to(y[:, None], (height, width))]).reshape(2, -1)


def kernel_features(image: np.ndarray, params: CRFParams,
                    valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The feature vectors of the Gaussian and the bilateral kernel, one column per pixel.

    Returns float32 C-contiguous ``(2, n)`` positions over θγ and ``(5, n)`` positions over θα
    and colours over θβ, exactly as pydensecrf's ``DenseCRF2D`` builds them, for the pixels in
    ``valid`` (all pixels when ``None``), row-major.
    """
    height, width = image.shape[:2]
    gaussian = position_features(height, width, params.theta_gamma)
    colours = image.reshape(-1, 3).T.astype(np.float32) / np.float32(params.theta_beta)
    bilateral = np.concatenate([position_features(height, width, params.theta_alpha),
                                colours])
    if valid is not None and not valid.all():
        inside = np.flatnonzero(valid)
        gaussian, bilateral = gaussian[:, inside], bilateral[:, inside]
    return np.ascontiguousarray(gaussian), np.ascontiguousarray(bilateral)


def check_shapes(probs: np.ndarray, image: np.ndarray, valid: np.ndarray | None) -> None:
    """Raise ``ValueError`` unless ``image`` (uint8 ``(H, W, 3)``) and ``valid`` (``(H, W)``)
    match the ``(C, H, W)`` probabilities."""
    height, width = probs.shape[1:]
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 ({height}, {width}, 3), got {image.dtype} "
                         f"{image.shape}")
    if valid is not None and valid.shape != (height, width):
        raise ValueError(f"valid must be ({height}, {width}), got {valid.shape}")

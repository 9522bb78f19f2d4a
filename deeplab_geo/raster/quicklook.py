"""Quicklook PNG: the input beside its coloured class map, with a legend.

Both rasters are read at reduced resolution (decimated reads), so memory does not grow with the
scene. The input is averaged where that is cheap (it has overviews, or is small enough to read
whole); a larger input without overviews, a 100,000 px mosaic VRT say, is sampled instead,
because averaging would read every one of its pixels (27 s against 0.1 s at 100,000 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.enums import Resampling

from deeplab_geo.crf import ColourMapping, colour_features
from deeplab_geo.raster.stitch import CLASS_NODATA

_MAX_SIDE = 1024
_AVERAGE_MAX_PIXELS = 1 << 28
"""Inputs without overviews up to this many pixels (16,384 px square) are averaged."""
_LEGEND_ROW = 22


def render_quicklook(input_path: Path, classes_path: Path, class_names: list[str],
                     colours: list[list[int]], out_path: Path) -> None:
    """Write a PNG: input (left), classes (right), legend (below)."""
    with rasterio.open(input_path) as src:
        shape = _preview_shape(src.height, src.width)
        resampling = preview_resampling(src.height, src.width, shape,
                                        bool(src.overviews(1)))
        image = src.read(out_shape=(src.count, *shape), resampling=resampling, masked=True)
    with rasterio.open(classes_path) as src:
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colours)] = np.asarray(colours, dtype=np.uint8)
    palette[CLASS_NODATA] = (0, 0, 0)
    left = Image.fromarray(_input_colours(image))
    right = Image.fromarray(palette[classes])
    height, width = shape
    legend_height = _LEGEND_ROW * ((len(class_names) + 2) // 3) + 8
    canvas = Image.new("RGB", (2 * width + 8, height + legend_height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (width + 8, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, colour) in enumerate(zip(class_names, colours)):
        x = 8 + (i % 3) * max(120, (2 * width) // 3)
        y = height + 6 + (i // 3) * _LEGEND_ROW
        draw.rectangle([x, y, x + 14, y + 14], fill=tuple(colour), outline="black")
        draw.text((x + 20, y + 1), name, fill="black")
    canvas.save(out_path)


def _input_colours(image: np.ma.MaskedArray) -> np.ndarray:
    """The input as 8-bit colour: its first three bands (one band repeated), stretched between
    the 2nd and 98th percentile of valid pixels unless 8-bit; nodata black."""
    nodata = np.ma.getmaskarray(image).any(0)
    data = image.filled(0)
    mapping = None
    if data.dtype != np.uint8:
        bands = (0, 0, 0) if data.shape[0] == 1 else ((0, 1, 2) if data.shape[0] >= 3
                                                      else (0, 1, 0))
        values = [band[~nodata] if (~nodata).any() else np.zeros(1) for band in data[list(bands)]]
        mapping = ColourMapping(bands, tuple(float(np.percentile(v, 2)) for v in values),
                                tuple(float(np.percentile(v, 98)) for v in values))
    colours = colour_features(data, mapping)
    colours[nodata] = 0
    return colours


def preview_resampling(height: int, width: int, shape: tuple[int, int],
                       overviews: bool) -> Resampling:
    """How the input is reduced to ``shape``: averaged when it is reduced and GDAL can average
    it cheaply (from overviews, or from at most ``_AVERAGE_MAX_PIXELS``), else sampled."""
    if shape[0] >= height:
        return Resampling.nearest
    if overviews or height * width <= _AVERAGE_MAX_PIXELS:
        return Resampling.average
    return Resampling.nearest


def _preview_shape(height: int, width: int) -> tuple[int, int]:
    """Fit the longer side to 1024 px; small rasters are enlarged at most 8 times."""
    scale = min(8.0, _MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))

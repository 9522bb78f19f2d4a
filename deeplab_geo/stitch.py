"""Stitching: tile cores written block by block into georeferenced GeoTIFFs, finished as COGs.

Each tile is predicted with context on all sides and only its core (see
:mod:`deeplab_geo.tiling`) is kept. Cores partition the raster, so the mosaic has no seams, no
pixel is written twice, and no scene-sized array is held in memory.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import rasterio
from rasterio.shutil import copy as rio_copy

from deeplab_geo.tiling import Tile

CLASS_NODATA = 255
CONFIDENCE_NODATA = -1.0
_BLOCK = 512


class ClassMapWriter:
    """Thread-safe writer of the class and confidence rasters of one run.

    Args:
        profile: the input raster's profile (CRS, transform, size are kept).
        classes_path, confidence_path: final COG paths; block-wise GTiffs are written beside
            them first and turned into COGs by :meth:`finish`.
        class_names, colours: stored as tags and as the class raster's colour table.
    """

    def __init__(self, profile: dict, classes_path: Path, confidence_path: Path,
                 class_names: list[str], colours: list[list[int]]) -> None:
        self.classes_path, self.confidence_path = classes_path, confidence_path
        self.class_names = class_names
        self.counts = np.zeros(len(class_names), dtype=np.int64)
        self._lock = threading.Lock()
        base = {
            "driver": "GTiff", "width": profile["width"], "height": profile["height"],
            "count": 1, "crs": profile["crs"], "transform": profile["transform"],
            "tiled": True, "blockxsize": _BLOCK, "blockysize": _BLOCK, "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        self._cls_tmp = classes_path.with_suffix(".blocks.tif")
        self._conf_tmp = confidence_path.with_suffix(".blocks.tif")
        self._cls = rasterio.open(self._cls_tmp, "w", **base, dtype="uint8", nodata=CLASS_NODATA)
        self._conf = rasterio.open(self._conf_tmp, "w", **base, dtype="float32",
                                   nodata=CONFIDENCE_NODATA)
        self._cls.write_colormap(1, {i: (*c, 255) for i, c in enumerate(colours)})
        tags = {f"CLASS_{i}": name for i, name in enumerate(class_names)}
        self._cls.update_tags(**tags, CLASS_NAMES=",".join(class_names))
        self._cls.set_band_description(1, "class id")
        self._conf.set_band_description(1, "confidence (max class probability)")

    def write(self, tile: Tile, classes: np.ndarray, confidence: np.ndarray) -> None:
        """Write a tile's core; ``classes``/``confidence`` are core-sized."""
        window = tile.core_window
        valid = classes != CLASS_NODATA
        counts = np.bincount(classes[valid], minlength=len(self.class_names))
        with self._lock:
            self._cls.write(classes[None], window=window)
            self._conf.write(confidence[None].astype(np.float32), window=window)
            self.counts += counts[: len(self.class_names)]

    def finish(self) -> None:
        """Close the block files and rewrite them as Cloud Optimized GeoTIFFs."""
        self.close()
        for tmp, final, resampling in ((self._cls_tmp, self.classes_path, "nearest"),
                                       (self._conf_tmp, self.confidence_path, "average")):
            rio_copy(tmp, final, driver="COG", compress="deflate", blocksize=_BLOCK,
                     overview_resampling=resampling, BIGTIFF="IF_SAFER")
            tmp.unlink()

    def close(self) -> None:
        for ds in (self._cls, self._conf):
            if not ds.closed:
                ds.close()

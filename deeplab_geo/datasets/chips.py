"""Training chips cut from a georeferenced raster and its labels.

Sampling strategy, in full:

1. **Split by area.** The raster is cut into square blocks of ``block_size`` pixels from the
   top-left corner (the last row and column of blocks may be narrower). ``round(val_fraction *
   blocks)`` of them (at least one when ``val_fraction > 0``), drawn without replacement with
   ``split_seed``, form the validation area; the others form the training area.
2. **Chips inside blocks.** Each block is tiled with ``chip_size`` windows ``stride`` pixels
   apart (default: ``chip_size``, no overlap); where the stride does not reach the block's far
   edge, one more chip is placed flush with it, so every pixel of the block is covered. A block
   smaller than a chip gives one chip of the block's size. Chips never cross a block edge, so
   training and validation chips share no pixel.
3. **Skip unlabelled chips.** Chips with less than ``min_labelled`` of their pixels labelled
   are dropped (labels are read once, window by window, when the dataset is built).

Pixels that are nodata in the raster are ignored (255) too, and set to 0 in the image, as
inference sets them (a fill value such as -99999 would otherwise reach the model). Images keep
the raster's bands and data type. ``region`` limits the blocks to a window of the raster.
Training draws random scaled crops from these chips (see :mod:`deeplab_geo.tools.train`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.windows import Window

from deeplab_geo.datasets.base import Sample, SegmentationDataset, check_sample
from deeplab_geo.datasets.labels import Grid, open_labels
from deeplab_geo.errors import DatasetError, InputError
from deeplab_geo.raster import io
from deeplab_geo.tools.metrics import IGNORE_INDEX

if TYPE_CHECKING:
    from deeplab_geo.config import ChipsDataSettings


KEEP_BYTES = 256 << 20
"""Chip sets up to this size (images and labels) are read once and kept in memory: training
draws every chip hundreds of times, and opening a multi-file raster for each draw costs more
than the training step on small chips."""


def axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Offsets of windows of ``size`` (``stride`` apart) covering ``0..length``; the last one
    ends at ``length``. One window at 0 when ``length <= size``."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def split_blocks(height: int, width: int, block_size: int, val_fraction: float,
                 seed: int, region: Window | None = None) -> dict[str, list[Window]]:
    """Blocks of the raster assigned to ``"train"`` and ``"val"`` (see the module docstring),
    cut from ``region`` only when it is given (a window of the raster).

    Raises:
        DatasetError: a validation area was asked for but the raster has a single block, or
            the region leaves the raster.
    """
    if region is None:
        region = Window(0, 0, width, height)
    c0, r0 = int(region.col_off), int(region.row_off)
    c1, r1 = c0 + int(region.width), r0 + int(region.height)
    if c1 > width or r1 > height:
        raise DatasetError(f"data.region {[c0, r0, c1 - c0, r1 - r0]} leaves the {width}x"
                           f"{height} raster; give [col_off, row_off, width, height] inside it")
    blocks = [Window(c, r, min(block_size, c1 - c), min(block_size, r1 - r))
              for r in range(r0, r1, block_size) for c in range(c0, c1, block_size)]
    n_val = 0
    if val_fraction > 0:
        n_val = max(1, round(val_fraction * len(blocks)))
        if n_val >= len(blocks):
            raise DatasetError(
                f"a {width}x{height} raster has {len(blocks)} block(s) of {block_size} px, too "
                "few to split into training and validation areas; lower data.block_size")
    val = set(np.random.default_rng(seed).permutation(len(blocks))[:n_val].tolist())
    return {"train": [b for i, b in enumerate(blocks) if i not in val],
            "val": [b for i, b in enumerate(blocks) if i in val]}


def chip_windows(block: Window, chip_size: int, stride: int) -> list[Window]:
    """Chips tiling one block (see the module docstring)."""
    rows = axis_starts(int(block.height), chip_size, stride)
    cols = axis_starts(int(block.width), chip_size, stride)
    height, width = min(chip_size, int(block.height)), min(chip_size, int(block.width))
    return [Window(block.col_off + c, block.row_off + r, width, height)
            for r in rows for c in cols]


class RasterChips(SegmentationDataset):
    """The training or validation chips of a raster (``settings``: ``ChipsDataSettings``)."""

    def __init__(self, settings: ChipsDataSettings, split: str) -> None:
        self.raster = Path(settings.raster)
        with io.open_raster(self.raster) as ds:
            if ds.crs is None or ds.transform == rasterio.Affine.identity():
                raise InputError(f"{self.raster.name}: raster has no CRS or geotransform; "
                                 "georeference it first")
            grid = Grid.of(ds)
            self.in_channels = ds.count
            self.dtype = ds.dtypes[0]
            self.resolution = io.ground_pixel_size_m(ds)
        self.labels = open_labels(settings.labels, grid, class_field=settings.class_field,
                                  layer=settings.layer, values=settings.class_values,
                                  classes=settings.classes)
        self.note = getattr(self.labels, "note", "")
        self.classes = list(settings.classes) if settings.classes else \
            getattr(self.labels, "class_names", None)
        self.colours = getattr(self.labels, "colours", None) if not settings.classes else None
        region = Window(*settings.region) if settings.region else None
        blocks = split_blocks(grid.height, grid.width, settings.block_size,
                              settings.val_fraction, settings.split_seed, region)[split]
        stride = settings.stride or settings.chip_size
        candidates = [w for b in blocks for w in chip_windows(b, settings.chip_size, stride)]
        with rasterio.open(self.raster) as ds:  # opened once for every candidate's mask
            counts = [self._counts(ds, w) for w in candidates]
        keep = [i for i, (w, c) in enumerate(zip(candidates, counts))
                if c.sum() > 0 and c.sum() >= settings.min_labelled * w.width * w.height]
        self.windows = [candidates[i] for i in keep]
        self._label_counts = sum((counts[i] for i in keep), np.zeros(256, np.int64))
        if not self.windows:
            raise DatasetError(f"{self.raster.name}: no {split} chip has at least "
                               f"{settings.min_labelled:.0%} labelled pixels; check the labels "
                               "or lower data.min_labelled")
        self.name = (f"{split} chips of {self.raster.name} ({len(self.windows)} x "
                     f"{settings.chip_size} px from {len(blocks)} blocks)")
        pixels = sum(int(w.width) * int(w.height) for w in self.windows)
        size = pixels * (self.in_channels * np.dtype(self.dtype).itemsize + 1)
        self._kept: dict[int, Sample] | None = {} if size <= KEEP_BYTES else None

    def _counts(self, ds: rasterio.DatasetReader, window: Window) -> np.ndarray:
        """Labelled pixels of each class id (0..254) in a window (nodata pixels left out)."""
        labels = self.labels.read(window)
        labels[~io.read_window(ds, window)[1]] = IGNORE_INDEX
        counts = np.bincount(labels.ravel(), minlength=256)
        counts[IGNORE_INDEX] = 0
        return counts

    def label_counts(self, num_classes: int) -> np.ndarray:
        """Labelled pixels of each class over the chips (no image is read)."""
        return self._label_counts[:num_classes].copy()

    def __len__(self) -> int:
        return len(self.windows)

    def valid(self, index: int) -> np.ndarray:
        """Where chip ``index`` has data (``(H, W)`` bool)."""
        with rasterio.open(self.raster) as ds:
            return io.read_window(ds, self.windows[index])[1]

    def __getitem__(self, index: int) -> Sample:
        if self._kept is not None and index in self._kept:
            image, labels = self._kept[index]
            return image.copy(), labels.copy()
        sample = self._read(index)
        if self._kept is not None:
            self._kept[index] = sample
            return sample[0].copy(), sample[1].copy()
        return sample

    def _read(self, index: int) -> Sample:
        window = self.windows[index]
        with rasterio.open(self.raster) as ds:
            image, valid = io.read_window(ds, window)
        image = io.blank_nodata(image, valid)
        labels = self.labels.read(window)
        labels[~valid] = IGNORE_INDEX
        num_classes = len(self.classes) if self.classes else None
        return check_sample(image, labels, num_classes,
                            f"{self.raster.name} chip at row {window.row_off}, col "
                            f"{window.col_off}")

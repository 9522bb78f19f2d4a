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

Pixels that are nodata in the raster are ignored (255) too. Images keep the raster's bands and
data type. Training draws random scaled crops from these chips (see :mod:`deeplab_geo.train`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.windows import Window

from deeplab_geo import io
from deeplab_geo.datasets import Sample, SegmentationDataset, check_sample
from deeplab_geo.datasets.labels import Grid, open_labels
from deeplab_geo.errors import DatasetError, InputError
from deeplab_geo.metrics import IGNORE_INDEX

if TYPE_CHECKING:
    from deeplab_geo.config import ChipsDataSettings


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
                 seed: int) -> dict[str, list[Window]]:
    """Blocks of the raster assigned to ``"train"`` and ``"val"`` (see the module docstring).

    Raises:
        DatasetError: a validation area was asked for but the raster has a single block.
    """
    blocks = [Window(c, r, min(block_size, width - c), min(block_size, height - r))
              for r in range(0, height, block_size) for c in range(0, width, block_size)]
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
                                  layer=settings.layer)
        self.classes = list(settings.classes) if settings.classes else \
            getattr(self.labels, "class_names", None)
        self.colours = getattr(self.labels, "colours", None) if not settings.classes else None
        blocks = split_blocks(grid.height, grid.width, settings.block_size,
                              settings.val_fraction, settings.split_seed)[split]
        stride = settings.stride or settings.chip_size
        candidates = [w for b in blocks for w in chip_windows(b, settings.chip_size, stride)]
        labelled = [self._labelled(w) for w in candidates]
        self.windows = [w for w, share in zip(candidates, labelled)
                        if share > 0 and share >= settings.min_labelled]
        if not self.windows:
            raise DatasetError(f"{self.raster.name}: no {split} chip has at least "
                               f"{settings.min_labelled:.0%} labelled pixels; check the labels "
                               "or lower data.min_labelled")
        self.name = (f"{split} chips of {self.raster.name} ({len(self.windows)} x "
                     f"{settings.chip_size} px from {len(blocks)} blocks)")

    def _labelled(self, window: Window) -> float:
        return float((self.labels.read(window) != IGNORE_INDEX).mean())

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Sample:
        window = self.windows[index]
        with rasterio.open(self.raster) as ds:
            image, valid = io.read_window(ds, window)
        labels = self.labels.read(window)
        labels[~valid] = IGNORE_INDEX
        num_classes = len(self.classes) if self.classes else None
        return check_sample(image, labels, num_classes,
                            f"{self.raster.name} chip at row {window.row_off}, col "
                            f"{window.col_off}")

"""Segmentation datasets behind one interface: indexable ``(image, labels)`` samples.

``image`` is ``(bands, H, W)`` (uint8 RGB for VOC and Cityscapes; the raster's own type and
bands for chips) and ``labels`` is uint8 ``(H, W)`` with class ids, 255 where a pixel is
ignored (void, borders, unlabelled). Every dataset also says its class names and colours (or
``None`` where only a checkpoint can tell) and its band count.

====================  =========================================================================
kind                  module
====================  =========================================================================
``synthetic``         :mod:`deeplab_geo.datasets.synthetic`: generated land-cover scenes
``voc``               :mod:`deeplab_geo.datasets.voc`: PASCAL VOC 2012 (+ SBD augmentation)
``cityscapes``        :mod:`deeplab_geo.datasets.cityscapes`: gtFine, 19 train ids
``chips``             :mod:`deeplab_geo.datasets.chips`: raster + class raster / vector labels
====================  =========================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deeplab_geo.datasets.base import (
    Sample,
    SegmentationDataset,
    check_sample,
    read_image,
    read_label_png,
    read_list,
)
from deeplab_geo.errors import DatasetError

if TYPE_CHECKING:
    from deeplab_geo.config import DataSettings

__all__ = ["Sample", "SegmentationDataset", "build", "check_sample", "read_image",
           "read_label_png", "read_list"]


def build(settings: DataSettings, split: str) -> SegmentationDataset:
    """The dataset ``settings`` (one of the ``data`` kinds of a training config) describe.

    Args:
        settings: ``SyntheticDataSettings``, ``VOCDataSettings``, ``CityscapesDataSettings`` or
            ``ChipsDataSettings``.
        split: ``"train"`` or ``"val"``; each kind maps it to its own split (its
            ``train_split``/``val_split``, seeds, or area).

    Raises:
        DatasetError: missing files or an empty split.
    """
    if split not in ("train", "val"):
        raise DatasetError(f"split must be 'train' or 'val', got {split!r}")
    if settings.kind == "synthetic":
        from deeplab_geo.datasets.synthetic import SyntheticScenes

        seeds = settings.train_seeds if split == "train" else settings.val_seeds
        return SyntheticScenes(seeds, settings.size)
    if settings.kind == "voc":
        from deeplab_geo.datasets.voc import VOCSegmentation

        return VOCSegmentation(settings.root, getattr(settings, f"{split}_split"))
    if settings.kind == "cityscapes":
        from deeplab_geo.datasets.cityscapes import CityscapesSegmentation

        return CityscapesSegmentation(settings.root, getattr(settings, f"{split}_split"))
    if settings.kind == "chips":
        from deeplab_geo.datasets.chips import RasterChips

        return RasterChips(settings, split)
    raise DatasetError(f"unknown data kind {settings.kind!r}")

"""Cityscapes (fine annotations) in its standard layout, mapped to the 19 train ids.

Under ``root``::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label ids become train ids as in the Cityscapes scripts (7 road -> 0, ..., 33 bicycle -> 18);
every other id (void, ego vehicle, rectification border, ...) becomes 255, ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deeplab_geo.datasets.base import (
    Sample,
    SegmentationDataset,
    check_sample,
    read_image,
    read_label_png,
)
from deeplab_geo.errors import DatasetError
from deeplab_geo.tools.metrics import IGNORE_INDEX

CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
           "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
           "bus", "train", "motorcycle", "bicycle")
COLOURS = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
           (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
           (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
           (0, 80, 100), (0, 0, 230), (119, 11, 32))
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                     24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def train_id_lut() -> np.ndarray:
    """A 256-entry lookup table from Cityscapes label ids to train ids (others 255)."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


class CityscapesSegmentation(SegmentationDataset):
    """One split of Cityscapes gtFine (``train``, ``val`` or ``test``), sorted by file name."""

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise DatasetError(f"{image_dir}: not found; data.root must hold leftImg8bit/ and "
                               "gtFine/ in the Cityscapes layout")
        self.images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not self.images:
            raise DatasetError(f"{image_dir}: no *{IMAGE_SUFFIX} images in its city folders")
        self.labels = [root / "gtFine" / split / p.parent.name /
                       p.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX) for p in self.images]
        self.name = f"Cityscapes {split} ({len(self.images)} images)"
        self.classes = list(CLASSES)
        self.colours = [list(c) for c in COLOURS]
        self.in_channels = 3
        self._lut = train_id_lut()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image = read_image(self.images[index])
        labels = self._lut[read_label_png(self.labels[index])]
        return check_sample(image, labels, len(CLASSES), str(self.labels[index]))

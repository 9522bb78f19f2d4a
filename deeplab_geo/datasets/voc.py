"""PASCAL VOC 2012 segmentation in its standard layout.

Under ``root`` (the ``VOC2012`` folder of ``VOCdevkit``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette PNGs: pixel values are class ids, 255 = void
    ImageSets/Segmentation/{train,val,trainval}.txt

The SBD-augmented training set (10,582 images) is the split ``train_aug``: the list
``ImageSets/Segmentation/train_aug.txt`` and its labels in ``SegmentationClassAug/`` (the layout
of the widely used conversion of SBD to VOC-style PNGs). 21 classes; 255 is ignored.
"""

from __future__ import annotations

from pathlib import Path

from deeplab_geo.datasets.base import (
    Sample,
    SegmentationDataset,
    check_sample,
    read_image,
    read_label_png,
    read_list,
)
from deeplab_geo.errors import DatasetError

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor")
SPLITS = ("train", "val", "trainval", "train_aug")


def voc_palette(count: int = 256) -> list[list[int]]:
    """The VOC colour map: class ``i``'s bits spread over the high bits of R, G and B."""
    palette = []
    for index in range(count):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append([r, g, b])
    return palette


class VOCSegmentation(SegmentationDataset):
    """One split of VOC 2012 (``train``, ``val``, ``trainval`` or ``train_aug``)."""

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        if split not in SPLITS:
            raise DatasetError(f"VOC split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not (root / "JPEGImages").is_dir():
            raise DatasetError(f"{root}: no JPEGImages folder; data.root must be the VOC2012 "
                               "folder of VOCdevkit")
        label_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        self.ids = read_list(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        self.images = [root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.labels = [root / label_dir / f"{i}.png" for i in self.ids]
        self.name = f"VOC 2012 {split} ({len(self.ids)} images)"
        self.classes = list(CLASSES)
        self.colours = voc_palette(len(CLASSES))
        self.in_channels = 3

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image = read_image(self.images[index])
        labels = read_label_png(self.labels[index])
        return check_sample(image, labels, len(CLASSES), str(self.labels[index]))

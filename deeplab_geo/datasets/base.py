"""What every dataset shares: the :class:`SegmentationDataset` interface, and readers and checks
of image files, label PNGs and split lists."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from deeplab_geo.errors import DatasetError
from deeplab_geo.tools.metrics import IGNORE_INDEX

Sample = tuple[np.ndarray, np.ndarray]


class SegmentationDataset(ABC):
    """A split of a segmentation dataset: ``len()`` samples, ``dataset[i]`` -> ``(image, labels)``.

    Attributes:
        name: a short description for logs and reports.
        classes: class names, index = class id (``None``: the labels carry no names).
        colours: one RGB triple per class (``None`` like ``classes``).
        in_channels: bands per image.
        resolution: ground sampling distance of the images (metres per pixel; ``None`` for
            photographs), recorded in the trained model.
    """

    name: str = ""
    classes: list[str] | None = None
    colours: list[list[int]] | None = None
    in_channels: int = 3
    resolution: float | None = None

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``: image ``(bands, H, W)`` and uint8 labels ``(H, W)``."""

    def valid(self, index: int) -> np.ndarray | None:
        """Where sample ``index``'s image holds data (``(H, W)`` bool), or ``None`` when it
        has no nodata; statistics of the images leave the rest out."""
        return None

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]


def read_image(path: Path) -> np.ndarray:
    """An 8-bit RGB image file as uint8 ``(3, H, W)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image not found; check the dataset layout") from None
    except (UnidentifiedImageError, OSError):
        raise DatasetError(f"{path}: not an image Pillow can read (corrupt or truncated)") \
            from None
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as uint8 ``(H, W)``: palette and greyscale pixel values are class ids."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DatasetError(
                    f"{path}: labels must be a palette or greyscale PNG of class ids, got mode "
                    f"{img.mode}; convert colour-coded labels to class ids")
            return np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found; check the dataset layout") from None
    except (UnidentifiedImageError, OSError):
        raise DatasetError(f"{path}: not a PNG Pillow can read (corrupt or truncated)") from None


def check_sample(image: np.ndarray, labels: np.ndarray, num_classes: int | None,
                 where: str) -> Sample:
    """Refuse a sample whose labels do not fit its image or hold unknown class ids."""
    if image.shape[-2:] != labels.shape:
        raise DatasetError(f"{where}: image {image.shape[-2:]} and labels {labels.shape} differ "
                           "in size")
    if num_classes is not None:
        known = (labels < num_classes) | (labels == IGNORE_INDEX)
        if not known.all():
            bad = int(labels[~known][0])
            raise DatasetError(f"{where}: class id {bad} in the labels, but the dataset has "
                               f"{num_classes} classes; fix the labels or the class list")
    return image, labels


def read_list(path: Path) -> list[str]:
    """Sample ids of a split list: the first field of each non-empty line, or the file stem
    when that field is a path (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/...``)."""
    if not path.is_file():
        raise DatasetError(f"{path}: split list not found; check the dataset root and split")
    names = [Path(line.split()[0]).stem for line in path.read_text().splitlines()
             if line.strip()]
    if not names:
        raise DatasetError(f"{path}: split list is empty")
    return names

"""Segmentation metrics over an accumulated confusion matrix (the PASCAL VOC protocol).

One confusion matrix is accumulated over a whole split, ignoring label 255; per-class IoU is
``TP / (TP + FP + FN)`` and mIoU is its mean over classes that occur in the labels or the
predictions. Per-image IoUs are never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``(num_classes, num_classes + 1)`` int64 counts: rows = target, columns = prediction.

    Pixels whose target is ``ignore_index`` (or out of range) are skipped. Predictions outside
    ``0..num_classes-1`` (nodata) go to the last column: false negatives for their target class
    that are nobody's false positive.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and labels {target.shape} differ in shape")
    target = target.ravel().astype(np.int64)
    pred = pred.ravel().astype(np.int64)
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    target, pred = target[keep], pred[keep]
    pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    counts = np.bincount(target * (num_classes + 1) + pred,
                         minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


@dataclass(frozen=True)
class Scores:
    """Scores of one confusion matrix."""

    iou: np.ndarray  # per class, NaN where the class is absent from labels and predictions
    miou: float
    pixel_accuracy: float

    def as_dict(self, class_names: list[str]) -> dict:
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, self.iou)},
        }


def scores(matrix: np.ndarray) -> Scores:
    """IoU per class, mIoU and pixel accuracy of a matrix from :func:`confusion_matrix`."""
    matrix = matrix.astype(np.float64)
    tp = np.diag(matrix[:, :-1])
    union = matrix[:, :-1].sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = matrix.sum()
    return Scores(iou=iou, miou=float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
                  pixel_accuracy=float(tp.sum() / total) if total else float("nan"))

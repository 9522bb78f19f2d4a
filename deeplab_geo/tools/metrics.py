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
    #: mean IoU over the classes that have ground-truth pixels (a class only predicted, never
    #: labelled, counts in ``miou`` with IoU 0 but not here): the hold-out score of a scene
    #: that lacks some classes
    miou_present: float = float("nan")

    def as_dict(self, class_names: list[str]) -> dict:
        return {
            "miou": self.miou,
            "miou_present": self.miou_present,
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
    present = matrix.sum(1) > 0
    return Scores(iou=iou, miou=float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
                  pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
                  miou_present=float(iou[present].mean()) if present.any() else float("nan"))


def boundaries(classes: np.ndarray) -> np.ndarray:
    """Pixels whose class differs from their right or lower neighbour (or whose left/upper one
    differs): the inner boundary of every region, one pixel wide on each side of an edge."""
    edge = np.zeros(classes.shape, bool)
    vertical = classes[1:] != classes[:-1]
    horizontal = classes[:, 1:] != classes[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def boundary_counts(pred: np.ndarray, target: np.ndarray, tolerance: int = 2,
                    core: tuple[slice, slice] | None = None,
                    ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Counts for the boundary F-score: ``[pred matched, pred total, gt matched, gt total]``.

    A boundary pixel of one map is matched when a boundary pixel of the other lies within
    ``tolerance`` pixels (Euclidean). Pixels labelled ``ignore_index`` do not count. ``core``
    restricts counting to part of the arrays (the rest is context, for block-wise use).
    """
    from scipy import ndimage

    pred_edge, gt_edge = boundaries(pred), boundaries(target)
    valid = target != ignore_index
    radius = np.hypot(*np.mgrid[-tolerance:tolerance + 1, -tolerance:tolerance + 1])
    disk = radius <= tolerance
    near_gt = ndimage.binary_dilation(gt_edge, structure=disk)
    near_pred = ndimage.binary_dilation(pred_edge, structure=disk)
    pred_edge &= valid
    gt_edge &= valid
    if core is not None:
        pred_edge, gt_edge = pred_edge[core], gt_edge[core]
        near_gt, near_pred = near_gt[core], near_pred[core]
    return np.array([(pred_edge & near_gt).sum(), pred_edge.sum(),
                     (gt_edge & near_pred).sum(), gt_edge.sum()], dtype=np.int64)


def boundary_f_score(counts: np.ndarray) -> float:
    """F-score of boundary precision and recall from summed :func:`boundary_counts`."""
    pred_matched, pred_total, gt_matched, gt_total = (float(c) for c in counts)
    precision = pred_matched / pred_total if pred_total else 0.0
    recall = gt_matched / gt_total if gt_total else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

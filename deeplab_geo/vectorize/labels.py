"""Connected regions of equal class in a 2-D array, labelled through runs of pixels.

A *run* is a maximal horizontal stretch of pixels of one row with the same class (and the same
validity). Two runs in neighbouring rows belong to the same region when they have the same class
and overlap by at least one column (4-connectivity), or also when they touch at a corner
(8-connectivity: one ends in the column before the other starts). The runs and their
connections are found with vectorized comparisons and binary searches, and the regions are the
connected components of that graph, so every class is labelled in one pass whatever the number
of classes. Per-region sums (pixels, confidence, ground area) are taken over runs, not pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class Regions:
    """Labelled regions of a 2-D class array, and the runs they are made of.

    Attributes:
        labels: int32 array of the input's shape: 0 where not valid, else the region, 1..n.
        label_class: class of each region (index = label; entry 0 is -1).
        run_start: flat index (row-major) of the first pixel of every run, valid or not; the
            runs tile the array in order.
        run_length: pixels in each run.
        run_label: region of each run (0 for runs of invalid pixels).
    """

    labels: np.ndarray
    label_class: np.ndarray
    run_start: np.ndarray
    run_length: np.ndarray
    run_label: np.ndarray

    @property
    def count(self) -> int:
        """Number of regions, n."""
        return len(self.label_class) - 1

    def pixel_count(self) -> np.ndarray:
        """Pixels per region (index = label; entry 0 counts the invalid pixels)."""
        return np.bincount(self.run_label, weights=self.run_length,
                           minlength=self.count + 1).astype(np.int64)

    def sum_per_row(self, row_values: np.ndarray) -> np.ndarray:
        """Per region, the sum over its pixels of a value that depends on the row only."""
        rows = self.run_start // self.labels.shape[1]
        return np.bincount(self.run_label, weights=self.run_length * row_values[rows],
                           minlength=self.count + 1)

    def sum_of(self, values: np.ndarray) -> np.ndarray:
        """Per region, the sum of a per-pixel array of the same shape (float64)."""
        if not len(self.run_start):
            return np.zeros(self.count + 1)
        run_sums = np.add.reduceat(values.ravel(), self.run_start, dtype=np.float64)
        return np.bincount(self.run_label, weights=run_sums, minlength=self.count + 1)


def label_regions(classes: np.ndarray, valid: np.ndarray, connectivity: int = 8) -> Regions:
    """Label the connected regions of equal class among the valid pixels.

    Args:
        classes: 2-D integer class ids.
        valid: 2-D bool, False for pixels that belong to no region (nodata, skipped classes).
        connectivity: 8 (pixels touching at a corner join) or 4 (shared edges only).

    Returns:
        The regions, numbered 1..n in the order of their first pixel (row-major).
    """
    height, width = classes.shape
    flat_class, flat_valid = classes.ravel(), valid.ravel()
    change = np.ones(flat_class.size, bool)
    np.not_equal(flat_class[1:], flat_class[:-1], out=change[1:])
    change[1:] |= flat_valid[1:] != flat_valid[:-1]
    change[::width] = True
    start = np.flatnonzero(change)
    length = np.diff(np.append(start, flat_class.size))
    run_class, run_valid = flat_class[start], flat_valid[start]
    first, second = _touching_runs(start, length, width, height, connectivity)
    joined = (run_valid[first] & run_valid[second]) & (run_class[first] == run_class[second])
    graph = coo_matrix((np.ones(int(joined.sum()), np.int8), (first[joined], second[joined])),
                       shape=(len(start), len(start)))
    _, component = connected_components(graph, directed=False)
    # number the valid runs' components 1..n in order of first appearance
    valid_runs = np.flatnonzero(run_valid)
    unique, first_run, inverse = np.unique(component[valid_runs], return_index=True,
                                           return_inverse=True)
    order = np.argsort(first_run, kind="stable")
    rank = np.empty(len(unique), np.int32)
    rank[order] = np.arange(1, len(unique) + 1, dtype=np.int32)
    run_label = np.zeros(len(start), np.int32)
    run_label[valid_runs] = rank[inverse]
    label_class = np.full(len(unique) + 1, -1, np.int64)
    label_class[rank] = run_class[valid_runs[first_run]]
    labels = np.repeat(run_label, length).reshape(height, width)
    return Regions(labels, label_class, start, length, run_label)


def _touching_runs(start: np.ndarray, length: np.ndarray, width: int, height: int,
                   connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (run in row r, run in row r + 1) that overlap, or touch at a corner for 8."""
    row = start // width
    upper = row < height - 1
    # every column where a run starts in either row splits the pair of rows into segments;
    # each segment lies under one run of the upper row and over one of the lower row (a column
    # where both rows start a run is listed twice, which only repeats a pair)
    segments = np.concatenate([start[upper], start[row > 0] - width])
    above = np.searchsorted(start, segments, side="right") - 1
    below = np.searchsorted(start, segments + width, side="right") - 1
    if connectivity == 8:
        lower = np.flatnonzero(row > 0)
        col = start[lower] - row[lower] * width
        end = col + length[lower]
        left, right = lower[col > 0], lower[end < width]
        diagonal_left = np.searchsorted(start, start[left] - width - 1, side="right") - 1
        diagonal_right = np.searchsorted(start, start[right] + length[right] - width,
                                         side="right") - 1
        above = np.concatenate([above, diagonal_left, diagonal_right])
        below = np.concatenate([below, left, right])
    return above, below

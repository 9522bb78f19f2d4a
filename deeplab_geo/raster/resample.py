"""Resampling between a raster's grid and a model's: pure functions on arrays.

A resize is separable: along each axis, output cell ``i`` is a weighted sum of input cells,
given by a ``(n_out, n_in)`` matrix, so ``(C, H, W)`` arrays are resized with two matrix
products. Two rules:

* ``area`` (shrinking): output cell ``i`` covers input ``[i * n_in / n_out, (i + 1) * n_in /
  n_out)`` and is the mean of what it covers, fractions of cells weighted by their share (GDAL's
  ``average`` for whole factors);
* ``bilinear`` (enlarging): output cell ``i`` samples input position ``(i + 0.5) * n_in / n_out -
  0.5`` linearly between its two neighbours, clamped at the edges (``align_corners=False``, as
  torch and GDAL place pixel centres).

:func:`resize` picks ``area`` for an axis that shrinks and ``bilinear`` for one that grows.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """The ``(n_out, n_in)`` float32 weights of one axis (rows sum to 1)."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    weights = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    rows = np.arange(n_out)
    if mode == "area":
        for i in rows:
            start, stop = i * scale, (i + 1) * scale
            first, last = int(np.floor(start)), min(n_in, int(np.ceil(stop)))
            cells = np.arange(first, last)
            weights[i, first:last] = np.minimum(cells + 1, stop) - np.maximum(cells, start)
        weights /= weights.sum(1, keepdims=True)
    elif mode == "bilinear":
        position = np.clip((rows + 0.5) * scale - 0.5, 0, n_in - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        fraction = position - low
        np.add.at(weights, (rows, low), 1 - fraction)
        np.add.at(weights, (rows, high), fraction)
    else:
        raise ValueError(f"mode must be 'area' or 'bilinear', got {mode!r}")
    return weights.astype(np.float32)


def resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``array`` ``(..., H, W)`` resized to ``(..., *shape)`` as float32 (see the module
    docstring for the rule of each axis)."""
    height, width = array.shape[-2:]
    out_h, out_w = shape
    if (height, width) == (out_h, out_w):
        return np.asarray(array, np.float32)
    rows = resize_matrix(height, out_h, "area" if out_h < height else "bilinear")
    cols = resize_matrix(width, out_w, "area" if out_w < width else "bilinear")
    values = np.asarray(array, np.float32)
    return np.matmul(np.matmul(rows, values), cols.T)


def resize_mask(valid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A validity mask on another grid: a cell is valid where most of what it covers is."""
    return resize(valid.astype(np.float32), shape) >= 0.5

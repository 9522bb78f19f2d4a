"""Test-time augmentation: multi-scale inputs and horizontal flips, for any backend.

Each tile batch is resized by every scale (bilinear), predicted, flipped back where flipped,
and resized to the tile's size; the maps are then fused per pixel. ``fusion="max"`` takes the
maximum over scales, as DeepLab does with its 0.5 / 0.75 / 1.0 inputs (on class probabilities,
i.e. on log-probabilities, which differ from the paper's raw scores only by a per-scale
normaliser); ``"mean"`` averages them. Flipped and unflipped predictions of one scale are
averaged before fusion. The fused map is renormalised to sum to 1 over classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from deeplab_geo.hookspecs import Predictor


def predict(predictor: Predictor, tiles: np.ndarray, scales: Sequence[float] = (1.0,),
            flip: bool = False, fusion: Literal["max", "mean"] = "max") -> np.ndarray:
    """Class probabilities ``(B, C, H, W)`` for raw tiles ``(B, bands, H, W)`` with TTA:
    ``predictor`` at each of ``scales`` (non-empty), also mirrored with ``flip``, fused by
    ``fusion``."""
    if list(scales) == [1.0] and not flip:
        return predictor.predict(tiles)
    import torch  # only augmented predictions need it (a run on ONNX Runtime may have none)

    size = tiles.shape[-2:]
    fused = None
    for scale in scales:
        scaled = _resize(torch.from_numpy(np.asarray(tiles, np.float32)), scale=scale)
        probs = torch.from_numpy(predictor.predict(scaled.numpy()))
        if flip:
            flipped = predictor.predict(np.ascontiguousarray(scaled.flip(-1).numpy()))
            probs = (probs + torch.from_numpy(flipped).flip(-1)) / 2
        probs = _resize(probs, size=size)
        if fused is None:
            fused = probs
        elif fusion == "max":
            fused = torch.maximum(fused, probs)
        else:
            fused = fused + probs
    if fused is None:
        raise ValueError("scales must not be empty")
    fused = fused / fused.sum(1, keepdim=True).clamp_min(1e-12)
    return fused.numpy()


def _resize(x: Any, *, scale: float | None = None,
            size: tuple[int, int] | None = None) -> Any:
    from torch.nn import functional as F

    if size is None:
        size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

"""Fully connected CRF refinement (Krähenbühl & Koltun 2011), as used by DeepLab.

Energy: unary ``-log p(x_i)`` from the network, plus Potts pairwise terms with two Gaussian
kernels over all pixel pairs:

* bilateral (appearance): ``w1 * exp(-|p_i - p_j|² / 2θα² - |I_i - I_j|² / 2θβ²)``
* spatial (smoothness): ``w2 * exp(-|p_i - p_j|² / 2θγ²)``

solved by mean-field inference. Positions are in pixels and colours in 8-bit units; at 0.5 m
per pixel the default θα = 67 px reaches about 33 m. pydensecrf maps θγ, w2 to
``addPairwiseGaussian(sxy, compat)`` and θα, θβ, w1 to ``addPairwiseBilateral``.
"""

from __future__ import annotations

import numpy as np

from deeplab_geo.config import CRFSettings

_EPS = 1e-8


def colour_features(tile: np.ndarray) -> np.ndarray:
    """The uint8 ``(H, W, 3)`` C-contiguous image the bilateral kernel compares.

    8-bit tiles with three or more bands use their first three bands as they are; a single band
    is repeated. Other data types are stretched linearly from the tile's 2nd to 98th percentile
    onto 0..255 per band.
    """
    bands = tile[:3] if tile.shape[0] >= 3 else np.repeat(tile[:1], 3, axis=0)
    if bands.dtype != np.uint8:
        data = bands.astype(np.float32)
        lo = np.percentile(data, 2, axis=(1, 2), keepdims=True)
        hi = np.percentile(data, 98, axis=(1, 2), keepdims=True)
        data = (data - lo) / np.maximum(hi - lo, _EPS) * 255.0
        bands = np.clip(data, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(bands.transpose(1, 2, 0))


def refine(probs: np.ndarray, image: np.ndarray, settings: CRFSettings) -> np.ndarray:
    """Mean-field inference of the dense CRF for one tile.

    Args:
        probs: float32 ``(C, H, W)`` class probabilities from the network.
        image: uint8 ``(H, W, 3)`` colour features (see :func:`colour_features`).
        settings: kernel weights, widths and iterations.

    Returns:
        float32 ``(C, H, W)`` refined marginals, summing to 1 over classes.
    """
    import pydensecrf.densecrf as dcrf  # imported here: a C extension only this stage needs

    n_classes, height, width = probs.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 ({height}, {width}, 3), got {image.dtype} "
                         f"{image.shape}")
    unary = -np.log(np.clip(probs, _EPS, 1.0)).reshape(n_classes, -1)
    crf = dcrf.DenseCRF2D(width, height, n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if settings.w2 > 0:
        crf.addPairwiseGaussian(sxy=settings.theta_gamma, compat=settings.w2)
    if settings.w1 > 0:
        crf.addPairwiseBilateral(sxy=settings.theta_alpha, srgb=settings.theta_beta,
                                 rgbim=np.ascontiguousarray(image), compat=settings.w1)
    marginals = np.asarray(crf.inference(settings.iterations), dtype=np.float32)
    return marginals.reshape(n_classes, height, width)

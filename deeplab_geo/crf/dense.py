"""The dense CRF through pydensecrf (Krähenbühl's C++ code), for one tile.

:func:`~deeplab_geo.crf.features.kernel_features` builds the feature vectors exactly as
``DenseCRF2D.addPairwiseGaussian`` / ``addPairwiseBilateral`` do, and they go to the general
``DenseCRF`` so that pixels can be left out. pydensecrf holds the GIL: to refine several tiles
at once, :func:`deeplab_geo.crf.refine_many` spreads them over processes.
"""

from __future__ import annotations

import numpy as np

from deeplab_geo.crf.features import EPS, CRFParams, kernel_features


def refine(probs: np.ndarray, image: np.ndarray, params: CRFParams,
           valid: np.ndarray | None = None) -> np.ndarray:
    """Mean-field inference for one tile (shapes as in :func:`deeplab_geo.crf.refine`)."""
    import pydensecrf.densecrf as dcrf  # imported here: a C extension only this stage needs

    n_classes = probs.shape[0]
    unary = -np.log(np.clip(probs.reshape(n_classes, -1), EPS, 1.0)).astype(np.float32, copy=False)
    marginals = _normalised(unary)
    inside = None if valid is None or valid.all() else np.flatnonzero(valid)
    if inside is not None:
        unary = unary[:, inside]
    if unary.shape[1] == 0:
        return marginals.reshape(probs.shape)
    gaussian, bilateral = kernel_features(image, params, valid)
    crf = dcrf.DenseCRF(unary.shape[1], n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    if params.w2 > 0:
        crf.addPairwiseEnergy(gaussian, compat=params.w2)
    if params.w1 > 0:
        crf.addPairwiseEnergy(bilateral, compat=params.w1)
    refined = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    if inside is None:
        return refined.reshape(probs.shape)
    marginals[:, inside] = refined
    return marginals.reshape(probs.shape)


def import_pydensecrf() -> None:
    """Import the C extension (run by each CRF worker process when it starts)."""
    import pydensecrf.densecrf  # noqa: F401  (the import is the work)


def _normalised(unary: np.ndarray) -> np.ndarray:
    """``softmax(-unary)`` over classes: the clipped network probabilities, summing to 1."""
    energy = np.exp(unary.min(0, keepdims=True) - unary)
    return energy / energy.sum(0, keepdims=True)

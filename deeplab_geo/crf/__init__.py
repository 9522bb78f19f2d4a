"""Fully connected CRF refinement (Krähenbühl & Koltun 2011), as used by DeepLab.

Energy: unary ``-log p(x_i)`` from the network, plus Potts pairwise terms with two Gaussian
kernels over all pixel pairs:

* bilateral (appearance): ``w1 * exp(-|p_i - p_j|² / 2θα² - |I_i - I_j|² / 2θβ²)``
* spatial (smoothness): ``w2 * exp(-|p_i - p_j|² / 2θγ²)``

solved by mean-field inference. Positions are in pixels and colours in 8-bit units. Spatial
widths relate to the ground through the pixel size: at 0.5 m the default θα = 67 px reaches
33.5 m, at 10 m (Sentinel-2) 670 m. To keep a ground distance across resolutions, give θα and
θγ in metres (``spatial_units: metres``); they are divided by the raster's pixel size.

The package:

* :mod:`~deeplab_geo.crf.features`: :class:`CRFParams` (plain numbers: numeric code takes no
  configuration schema), the colour mapping of a raster's bands to the bilateral kernel's 8-bit
  colours, and both kernels' feature vectors;
* two refiners that compute the same thing (``CRFParams.refiner``):
  :mod:`~deeplab_geo.crf.dense` (``pydensecrf``, default: Krähenbühl's C++ code; it holds the
  GIL, so :func:`refine_many` spreads tiles over the package's one process pool,
  :mod:`deeplab_geo.processes`) and :mod:`~deeplab_geo.crf.lattice` (``torch``: the same
  permutohedral-lattice approximation in PyTorch, on the CPU or a CUDA device).

Nodata: pixels outside a tile's validity mask take no part in the CRF. They are not in the
feature set at all, so no kernel connects them to valid pixels and they cannot influence their
neighbours; they keep the network's probabilities (the pipeline writes them as nodata anyway).
"""

from __future__ import annotations

import numpy as np

from deeplab_geo.crf import dense
from deeplab_geo.crf.features import (
    ColourMapping,
    CRFParams,
    check_shapes,
    colour_bands,
    colour_features,
    colour_mapping,
    kernel_features,
    position_features,
    stretched,
)
from deeplab_geo.processes import WorkerPool, may_start_processes, worker_pool

__all__ = ["CRFParams", "ColourMapping", "colour_bands", "colour_features", "colour_mapping",
           "kernel_features", "position_features", "refine", "refine_many", "start_pool",
           "stretched"]


def refine(probs: np.ndarray, image: np.ndarray, params: CRFParams,
           valid: np.ndarray | None = None) -> np.ndarray:
    """Mean-field inference of the dense CRF for one tile, with ``params.refiner``.

    Args:
        probs: float32 ``(C, H, W)`` class probabilities from the network.
        image: uint8 ``(H, W, 3)`` colour features (see :func:`colour_features`).
        params: refiner, kernel weights, widths and iterations.
        valid: bool ``(H, W)``, False on nodata. Pixels outside it take no part in the CRF (no
            kernel reaches them, so they cannot influence their neighbours) and keep the
            network's probabilities. ``None``: every pixel is valid.

    Returns:
        float32 ``(C, H, W)`` refined marginals, summing to 1 over classes.

    Raises:
        ValueError: ``image`` or ``valid`` does not match the shape of ``probs``.
        ConfigError: the torch refiner's ``params.device`` names a CUDA device that is not there.
    """
    check_shapes(probs, image, valid)
    if params.refiner == "torch":
        from deeplab_geo.crf import lattice  # imports torch: only this refiner needs it

        return lattice.refine(probs, image, params, valid)
    return dense.refine(probs, image, params, valid)


def refine_many(items: list[tuple[np.ndarray, ...]], params: CRFParams,
                processes: int = 1) -> list[np.ndarray]:
    """:func:`refine` for several tiles ``(probs, image)`` or ``(probs, image, valid)``.

    The torch refiner runs them one after the other in this process (on ``params.device``;
    torch uses several threads itself). pydensecrf holds the GIL, so threads cannot run two
    of its refinements at once; with ``processes > 1`` the tiles go to a pool of that many
    processes (see :func:`start_pool`), pickled there and back; in a process that may start
    none (a dask worker process) they run here, one after the other. A worker that dies is
    replaced and its tiles retried once (:mod:`deeplab_geo.processes`).

    Raises:
        WorkerError: a worker process died twice on these tiles.
    """
    if params.refiner == "torch" or processes <= 1 or len(items) <= 1 \
            or not may_start_processes():  # a dask worker process may start none
        return [_refine_item(item, params) for item in items]
    return _crf_pool(processes).map(_refine_item, [(item, params) for item in items])


def start_pool(processes: int) -> WorkerPool:
    """The process pool for pydensecrf, started on first use and kept for the process's life
    (replaced if a worker dies); returns once every worker has imported pydensecrf, so the
    first tiles do not wait for a worker's start-up."""
    pool = _crf_pool(processes)
    pool.executor()
    return pool


def _crf_pool(processes: int) -> WorkerPool:
    return worker_pool(processes, dense.import_pydensecrf, warm=True, role="crf")


def _refine_item(item: tuple[np.ndarray, ...], params: CRFParams) -> np.ndarray:
    probs, image, *valid = item
    return refine(probs, image, params, *valid)

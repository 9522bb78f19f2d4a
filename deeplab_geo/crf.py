"""Fully connected CRF refinement (Krähenbühl & Koltun 2011), as used by DeepLab.

Energy: unary ``-log p(x_i)`` from the network, plus Potts pairwise terms with two Gaussian
kernels over all pixel pairs:

* bilateral (appearance): ``w1 * exp(-|p_i - p_j|² / 2θα² - |I_i - I_j|² / 2θβ²)``
* spatial (smoothness): ``w2 * exp(-|p_i - p_j|² / 2θγ²)``

solved by mean-field inference. Positions are in pixels and colours in 8-bit units. Spatial
widths relate to the ground through the pixel size: at 0.5 m the default θα = 67 px reaches
33.5 m, at 10 m (Sentinel-2) 670 m. To keep a ground distance across resolutions, give θα and
θγ in metres (``spatial_units: metres``); they are divided by the raster's pixel size.

Two refiners compute the same thing (``crf.refiner``):

* ``pydensecrf`` (default): Krähenbühl's C++ code. :func:`kernel_features` builds the feature
  vectors exactly as ``DenseCRF2D.addPairwiseGaussian`` / ``addPairwiseBilateral`` do (θγ, w2
  and θα, θβ, w1), and they go to the general ``DenseCRF`` so that pixels can be left out.
  It holds the GIL, so :func:`refine_many` spreads tiles over a process pool.
* ``torch``: :mod:`deeplab_geo.crf_torch`, the same permutohedral-lattice approximation in
  PyTorch, on the CPU or a CUDA device (``crf.device``).

Nodata: pixels outside a tile's validity mask take no part in the CRF. They are not in the
feature set at all, so no kernel connects them to valid pixels and they cannot influence their
neighbours; they keep the network's probabilities (the pipeline writes them as nodata anyway).
"""

from __future__ import annotations

import functools
import mmap
import os
import uuid
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from deeplab_geo.config import CRFSettings
from deeplab_geo.errors import ConfigError
from deeplab_geo.processes import WorkerPool, worker_pool

_EPS = 1e-8
_SHARED_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class ColourMapping:
    """How a tile's bands become the bilateral kernel's 8-bit colours.

    ``bands`` are 0-based indexes (three; a single band is repeated). ``low``/``high`` are the
    per-band values mapped to 0 and 255; ``None`` takes 8-bit values as they are.
    """

    bands: tuple[int, int, int] = (0, 1, 2)
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None


def colour_mapping(ds: rasterio.DatasetReader, settings: CRFSettings) -> ColourMapping:
    """The colour mapping of a raster: chosen bands, and one stretch for the whole raster.

    Percentiles come from a decimated read (at most 1024 px on the longer side) of valid
    pixels, so every tile is stretched the same way and the CRF shows no seams.
    """
    bands = colour_bands(ds.count, settings)
    if ds.dtypes[0] == "uint8":
        return ColourMapping(bands)
    scale = min(1.0, 1024 / max(ds.height, ds.width))
    shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
    data = ds.read([b + 1 for b in bands], out_shape=(3, *shape), masked=True)
    return stretched(bands, data, settings)


def colour_bands(count: int, settings: CRFSettings) -> tuple[int, int, int]:
    """The three 0-based bands of a ``count``-band raster the colour kernel compares."""
    if settings.bands is not None:
        if max(settings.bands) > count:
            raise ConfigError(f"crf.bands {settings.bands}: the raster has {count} band(s)")
        chosen = [b - 1 for b in settings.bands]
    else:
        chosen = list(range(min(3, count)))
    return tuple((chosen * 3)[:3]) if len(chosen) == 1 else tuple((chosen + chosen)[:3])


def stretched(bands: tuple[int, int, int], sample: np.ma.MaskedArray, settings: CRFSettings
              ) -> ColourMapping:
    """The mapping that stretches ``bands`` between the ``crf.stretch`` percentiles of the
    valid pixels of ``sample`` (``(3, h, w)``, masked where invalid, the bands already
    picked)."""
    low, high = [], []
    for band in sample:
        values = band.compressed() if band.count() else np.zeros(1)
        lo, hi = np.percentile(values, settings.stretch)
        low.append(float(lo))
        high.append(float(max(hi, lo + _EPS)))
    return ColourMapping(bands, tuple(low), tuple(high))


def colour_features(tile: np.ndarray, mapping: ColourMapping | None = None) -> np.ndarray:
    """The uint8 ``(H, W, 3)`` C-contiguous image the bilateral kernel compares.

    Without a mapping: 8-bit tiles use their first three bands (a single band is repeated) and
    other types are stretched from the tile's own 2nd to 98th percentile.
    """
    if mapping is None:
        count = tile.shape[0]
        bands = (0, 0, 0) if count == 1 else ((0, 1, 2) if count >= 3 else (0, 1, 0))
        mapping = ColourMapping(bands)
        if tile.dtype != np.uint8:
            data = tile[list(bands)].astype(np.float32)
            low = tuple(np.percentile(data, 2, axis=(1, 2)))
            high = tuple(np.percentile(data, 98, axis=(1, 2)))
            mapping = ColourMapping(bands, low, high)
    picked = tile[list(mapping.bands)]
    if mapping.low is None:
        colours = picked.astype(np.uint8) if picked.dtype != np.uint8 else picked
    else:
        low = np.asarray(mapping.low, np.float32)[:, None, None]
        high = np.asarray(mapping.high, np.float32)[:, None, None]
        scaled = (picked.astype(np.float32) - low) / np.maximum(high - low, _EPS) * 255.0
        colours = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(colours.transpose(1, 2, 0))


def position_features(height: int, width: int, theta: float) -> np.ndarray:
    """float32 ``(2, H*W)`` pixel positions ``(x / θ, y / θ)``, row-major, as pydensecrf's
    ``DenseCRF2D`` computes them."""
    scale = np.float32(theta)
    x = np.arange(width, dtype=np.float32) / scale
    y = np.arange(height, dtype=np.float32) / scale
    return np.stack([np.broadcast_to(x, (height, width)),
                     np.broadcast_to(y[:, None], (height, width))]).reshape(2, -1)


def kernel_features(image: np.ndarray, settings: CRFSettings,
                    valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The feature vectors of the Gaussian and the bilateral kernel, one column per pixel.

    Returns float32 C-contiguous ``(2, n)`` positions over θγ and ``(5, n)`` positions over θα
    and colours over θβ, exactly as pydensecrf's ``DenseCRF2D`` builds them, for the pixels in
    ``valid`` (all pixels when ``None``), row-major.
    """
    height, width = image.shape[:2]
    gaussian = position_features(height, width, settings.theta_gamma)
    colours = image.reshape(-1, 3).T.astype(np.float32) / np.float32(settings.theta_beta)
    bilateral = np.concatenate([position_features(height, width, settings.theta_alpha),
                                colours])
    if valid is not None and not valid.all():
        inside = np.flatnonzero(valid)
        gaussian, bilateral = gaussian[:, inside], bilateral[:, inside]
    return np.ascontiguousarray(gaussian), np.ascontiguousarray(bilateral)


def refine(probs: np.ndarray, image: np.ndarray, settings: CRFSettings,
           valid: np.ndarray | None = None) -> np.ndarray:
    """Mean-field inference of the dense CRF for one tile, with ``settings.refiner``.

    Args:
        probs: float32 ``(C, H, W)`` class probabilities from the network.
        image: uint8 ``(H, W, 3)`` colour features (see :func:`colour_features`).
        settings: refiner, kernel weights, widths and iterations.
        valid: bool ``(H, W)``, False on nodata. Pixels outside it take no part in the CRF (no
            kernel reaches them, so they cannot influence their neighbours) and keep the
            network's probabilities. ``None``: every pixel is valid.

    Returns:
        float32 ``(C, H, W)`` refined marginals, summing to 1 over classes.

    Raises:
        ValueError: ``image`` or ``valid`` does not match the shape of ``probs``.
    """
    _check_shapes(probs, image, valid)
    if settings.refiner == "torch":
        from deeplab_geo import crf_torch

        return crf_torch.refine(probs, image, settings, valid)
    return _refine_pydensecrf(probs, image, settings, valid)


def _refine_pydensecrf(probs: np.ndarray, image: np.ndarray, settings: CRFSettings,
                       valid: np.ndarray | None) -> np.ndarray:
    import pydensecrf.densecrf as dcrf  # imported here: a C extension only this stage needs

    n_classes = probs.shape[0]
    unary = -np.log(np.clip(probs.reshape(n_classes, -1), _EPS, 1.0)).astype(np.float32, copy=False)
    marginals = _normalised(unary)
    inside = None if valid is None or valid.all() else np.flatnonzero(valid)
    if inside is not None:
        unary = unary[:, inside]
    if unary.shape[1] == 0:
        return marginals.reshape(probs.shape)
    gaussian, bilateral = kernel_features(image, settings, valid)
    crf = dcrf.DenseCRF(unary.shape[1], n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    if settings.w2 > 0:
        crf.addPairwiseEnergy(gaussian, compat=settings.w2)
    if settings.w1 > 0:
        crf.addPairwiseEnergy(bilateral, compat=settings.w1)
    refined = np.asarray(crf.inference(settings.iterations), dtype=np.float32)
    if inside is None:
        return refined.reshape(probs.shape)
    marginals[:, inside] = refined
    return marginals.reshape(probs.shape)


def _normalised(unary: np.ndarray) -> np.ndarray:
    """``softmax(-unary)`` over classes: the clipped network probabilities, summing to 1."""
    energy = np.exp(unary.min(0, keepdims=True) - unary)
    return energy / energy.sum(0, keepdims=True)


def _check_shapes(probs: np.ndarray, image: np.ndarray, valid: np.ndarray | None) -> None:
    height, width = probs.shape[1:]
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 ({height}, {width}, 3), got {image.dtype} "
                         f"{image.shape}")
    if valid is not None and valid.shape != (height, width):
        raise ValueError(f"valid must be ({height}, {width}), got {valid.shape}")


def refine_many(items: list[tuple[np.ndarray, ...]], settings: CRFSettings,
                processes: int = 1) -> list[np.ndarray]:
    """:func:`refine` for several tiles ``(probs, image)`` or ``(probs, image, valid)``.

    The torch refiner runs them one after the other in this process (on ``settings.device``;
    torch uses several threads itself). pydensecrf holds the GIL, so threads cannot run two
    of its refinements at once; with ``processes > 1`` the tiles go to a pool of that many
    processes (see :func:`start_pool`; a worker that dies is replaced, see
    :mod:`deeplab_geo.processes`). Arrays travel to and from the workers through one
    shared-memory file per call (in ``/dev/shm``), not through pipes: pickling a 512 px tile's
    float32 probabilities and marginals (2 x 6 MB) and pushing them through a pipe costs
    several copies in each direction. Where no such file can be reserved (no ``/dev/shm``, or
    too little room in it) the arrays are pickled instead; the results are the same.

    Raises:
        WorkerError: a worker process died twice on these tiles.
    """
    if settings.refiner == "torch" or processes <= 1 or len(items) <= 1:
        return [_refine_item(item, settings) for item in items]
    pool = _crf_pool(processes)
    shared = _SharedTiles.reserve(items)
    if shared is None:
        return pool.run(lambda executor, i: executor.submit(_refine_item, items[i], settings),
                        len(items))
    try:
        def submit(executor: ProcessPoolExecutor, index: int) -> Future:
            shared.write(index, items[index])  # each tile starts as soon as it is copied in
            return executor.submit(_refine_shared, str(shared.path), shared.layouts[index],
                                   settings)

        def collect(index: int, future: Future) -> np.ndarray:
            future.result()  # copied out while later tiles still run
            return shared.output(index)

        return pool.run(submit, len(items), collect)
    finally:
        shared.release()


def start_pool(processes: int) -> ProcessPoolExecutor:
    """The process pool for pydensecrf, started on first use and kept for the process's life
    (replaced if a worker dies).

    Workers are started with ``spawn`` (safe next to threaded libraries such as torch); each
    imports pydensecrf when it starts, and this returns once all of them have, so the first
    tiles do not wait for a worker's start-up.
    """
    return _crf_pool(processes).executor()


def _crf_pool(processes: int) -> WorkerPool:
    _remove_stale_once()
    return worker_pool(processes, _import_pydensecrf, warm=True)


@functools.cache
def _remove_stale_once() -> None:
    remove_stale_shared_files()


def remove_stale_shared_files() -> int:
    """Delete shared-memory files left by runs that were killed (their process is gone).

    Returns the number of files removed.
    """
    removed = 0
    for path in _SHARED_DIR.glob("deeplab-geo-crf-*-*") if _SHARED_DIR.is_dir() else []:
        try:
            pid = int(path.name.split("-")[3])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed += 1
        except (ValueError, IndexError, PermissionError):
            continue
    return removed


def _import_pydensecrf() -> None:
    import pydensecrf.densecrf  # noqa: F401  (the import is the work)


def _refine_item(item: tuple[np.ndarray, ...], settings: CRFSettings) -> np.ndarray:
    probs, image, *valid = item
    return refine(probs, image, settings, *valid)


_Placement = tuple[int, tuple[int, ...], str]  # offset, shape, dtype


@dataclass(frozen=True)
class _TileLayout:
    """Where one tile's arrays lie in a shared file."""

    probs: _Placement
    image: _Placement
    valid: _Placement | None
    output: _Placement

    def inputs(self, buffer: mmap.mmap) -> tuple[np.ndarray | None, ...]:
        """Copies of the tile's inputs (copies: no view may outlive the mapping)."""
        return tuple(None if place is None else _view(buffer, place).copy()
                     for place in (self.probs, self.image, self.valid))


def _view(buffer: mmap.mmap, place: _Placement) -> np.ndarray:
    offset, shape, dtype = place
    return np.ndarray(shape, np.dtype(dtype), buffer, offset=offset)


class _SharedTiles:
    """One file in ``/dev/shm`` holding the inputs and outputs of a :func:`refine_many` call."""

    def __init__(self, path: Path, buffer: mmap.mmap, layouts: list[_TileLayout]) -> None:
        self.path, self.buffer, self.layouts = path, buffer, layouts

    @classmethod
    def reserve(cls, items: list[tuple[np.ndarray, ...]]) -> _SharedTiles | None:
        """Reserve room for the inputs and outputs of ``items``; None where that fails."""
        size = 0

        def place(shape: tuple[int, ...], dtype: type) -> _Placement:
            nonlocal size
            start = size
            size += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 64) * 64
            return start, tuple(shape), np.dtype(dtype).str

        layouts = [_TileLayout(place(probs.shape, np.float32), place(image.shape, np.uint8),
                               place(valid[0].shape, np.bool_) if valid else None,
                               place(probs.shape, np.float32))
                   for probs, image, *valid in items]
        mapped = _reserve(size)
        return None if mapped is None else cls(*mapped, layouts)

    def write(self, index: int, item: tuple[np.ndarray, ...]) -> None:
        """Copy tile ``index``'s inputs in."""
        probs, image, *valid = item
        layout = self.layouts[index]
        _view(self.buffer, layout.probs)[...] = probs
        _view(self.buffer, layout.image)[...] = image
        if valid:
            _view(self.buffer, layout.valid)[...] = valid[0]

    def output(self, index: int) -> np.ndarray:
        """A copy of tile ``index``'s refined marginals."""
        return _view(self.buffer, self.layouts[index].output).copy()

    def release(self) -> None:
        self.buffer.close()
        self.path.unlink(missing_ok=True)


def _reserve(size: int) -> tuple[Path, mmap.mmap] | None:
    """A new file of ``size`` bytes in ``/dev/shm``, its space allocated, and its mapping.

    Allocating up front turns a full ``/dev/shm`` into an error here (and a fall-back to
    pickling) instead of a SIGBUS when the mapping is written.
    """
    if not (_SHARED_DIR.is_dir() and hasattr(os, "posix_fallocate")):
        return None
    path = _SHARED_DIR / f"deeplab-geo-crf-{os.getpid()}-{uuid.uuid4().hex}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        return path, mmap.mmap(fd, size)
    except OSError:
        path.unlink(missing_ok=True)
        return None
    finally:
        os.close(fd)


def _refine_shared(path: str, layout: _TileLayout, settings: CRFSettings) -> None:
    with open(path, "r+b") as file, mmap.mmap(file.fileno(), 0) as buffer:
        probs, image, valid = layout.inputs(buffer)
        _view(buffer, layout.output)[...] = refine(probs, image, settings, valid)

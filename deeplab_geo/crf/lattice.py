"""The dense CRF in PyTorch (``crf.refiner: torch``), on the CPU or a CUDA device.

Same energy, parameters and mean-field updates as the pydensecrf refiner
(:mod:`deeplab_geo.crf.dense`): unary ``-log p``, a Gaussian kernel (w2, θγ) and a bilateral kernel
(w1, θα, θβ) with Potts compatibility and pydensecrf's symmetric normalisation, where a kernel's
message to pixel i is ``n_i Σ_j k(f_i, f_j) n_j Q_j`` with ``n_i = (Σ_j k(f_i, f_j))^-1/2``.

Each kernel is filtered on a permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) built
the way Krähenbühl's densecrf builds it: the same elevation and scale factors, rounding to the
nearest remainder-0 point, barycentric weights, one [1 2 1] blur pass per lattice axis in the
same order and the same final scaling. The two implementations therefore compute the same
approximation of the Gaussian kernels, and their labels agree up to floating-point summation
order (``benchmarks/crf.py`` reports the agreement). Unlike a truncated-window ConvCRF, nothing
is cut off: θα = 67 px reaches as far as in pydensecrf.

Each lattice becomes sparse (CSR) matrices, built once per tile: the splat (pixels to
lattice vertices, with barycentric weights), one blur matrix per axis (each vertex plus half of
its two neighbours) and the slice (the splat's transpose, scaled); the normalisation and the
kernel weight are folded into the splat and the slice. A mean-field iteration is then a few
sparse-dense products and a softmax, on any torch device. Building the lattice needs the
distinct vertex keys: they are packed into one int64 each (wider keys fall back to
``torch.unique`` over rows) and grouped with one sort; on the CPU the sorts go through NumPy's
SIMD sort. The Gaussian kernel's lattice only depends on the tile's shape and θγ, so it is
built once per shape and reused.

Pixels outside ``valid`` are left out of the lattice altogether: they neither send nor receive
messages, so nodata cannot leak into its neighbours, and they keep the network's probabilities.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from deeplab_geo.crf.features import EPS, CRFParams, kernel_features, position_features
from deeplab_geo.devices import torch_device

_PACK_LIMIT = 2**62


class PermutohedralLattice:
    """Gaussian filtering of per-point values in a feature space, as densecrf approximates it.

    ``filter(values)[i]`` approximates ``Σ_j exp(-|f_i - f_j|² / 2) values[j]`` for features
    ``f`` already divided by the kernel widths (one column per point), with densecrf's lattice,
    blur and scaling.
    """

    def __init__(self, features: torch.Tensor) -> None:
        """Build the lattice of ``features``, a float32 ``(d, N)`` tensor, on its device."""
        if features.ndim != 2 or features.shape[1] == 0:
            raise ValueError(f"features must be (d, N) with N > 0, got {tuple(features.shape)}")
        dim, count = features.shape
        remainder0, rank, weights = _enclosing_simplex(features.float())
        vertices, neighbours, size, order = _lattice_graph(remainder0, rank)
        weights = weights.T.contiguous()
        self.size = size
        self.dim = dim
        self.points = count
        alpha = 1.0 / (1.0 + 2.0 ** -dim)
        self._splat = _splat_matrix(vertices, weights, size, order)
        self._blur = [_blur_matrix(first, second) for first, second in neighbours]
        self._slice = _slice_matrix(vertices, weights * alpha, size)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat ``(N, C)`` values onto the lattice, blur along each axis, slice them back."""
        return _apply(self._splat, self._blur, self._slice, values)

    def scaled(self, before: torch.Tensor, after: torch.Tensor) -> _ScaledFilter:
        """``diag(after) K diag(before)``: the filter with per-point scalings folded in."""
        splat = _scale_columns(self._splat, before)
        slice_ = _scale_rows(self._slice, after)
        return _ScaledFilter(splat, self._blur, slice_)


class _ScaledFilter:
    def __init__(self, splat: torch.Tensor, blur: list[torch.Tensor],
                 slice_: torch.Tensor) -> None:
        self._splat, self._blur, self._slice = splat, blur, slice_

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return _apply(self._splat, self._blur, self._slice, values)


def _apply(splat: torch.Tensor, blur: list[torch.Tensor], slice_: torch.Tensor,
           values: torch.Tensor) -> torch.Tensor:
    lattice = splat @ values
    for step in blur:
        lattice = step @ lattice
    return slice_ @ lattice


def refine(probs: np.ndarray, image: np.ndarray, params: CRFParams,
           valid: np.ndarray | None = None) -> np.ndarray:
    """Mean-field inference of the dense CRF for one tile on ``params.device``.

    Args:
        probs: float32 ``(C, H, W)`` class probabilities from the network.
        image: uint8 ``(H, W, 3)`` colour features (see :func:`deeplab_geo.crf.colour_features`).
        params: kernel weights, widths, iterations and device.
        valid: bool ``(H, W)``; pixels outside it take no part in the CRF. ``None``: all valid.

    Returns:
        float32 ``(C, H, W)`` refined marginals, summing to 1 over classes; pixels outside
        ``valid`` hold the (clipped, normalised) network probabilities.

    Raises:
        ConfigError: ``params.device`` names a CUDA device that is not there.
    """
    device = torch_device(params.device, "crf.device")
    n_classes, height, width = probs.shape
    inside = None if valid is None or valid.all() else np.flatnonzero(valid)
    gaussian, bilateral = kernel_features(image, params, valid)
    with torch.inference_mode():
        unary = -torch.log(torch.from_numpy(np.ascontiguousarray(probs, np.float32))
                           .to(device).reshape(n_classes, -1).clamp(EPS, 1.0))
        if inside is None:
            if params.w2 > 0:  # the whole tile's Gaussian lattice depends on its shape only
                gaussian = _grid_lattice(height, width, params.theta_gamma, str(device))
            marginals = _refined(unary, gaussian, bilateral, params)
        else:
            marginals = torch.softmax(-unary, 0)
            if inside.size:
                index = torch.from_numpy(inside).to(device)
                marginals[:, index] = _refined(unary[:, index], gaussian, bilateral, params)
        return marginals.reshape(n_classes, height, width).cpu().numpy()


def _refined(unary: torch.Tensor, gaussian: PermutohedralLattice | np.ndarray,
             bilateral: np.ndarray, params: CRFParams) -> torch.Tensor:
    """Marginals ``(C, n)`` of the pixels whose ``(C, n)`` unary and kernel features are given
    (the Gaussian kernel's as features or as a ready lattice)."""
    messages = []
    if params.w2 > 0:
        if not isinstance(gaussian, PermutohedralLattice):
            gaussian = _lattice(gaussian, unary.device)
        messages.append(_message(gaussian, params.w2))
    if params.w1 > 0:
        messages.append(_message(_lattice(bilateral, unary.device), params.w1))
    return _mean_field(unary.T.contiguous(), messages, params.iterations).T


def _message(lattice: PermutohedralLattice, weight: float) -> _ScaledFilter:
    """``Q -> w n K(n Q)``, one kernel's Potts message with pydensecrf's symmetric
    normalisation ``n = (K 1 + 1e-20)^-1/2``."""
    ones = torch.ones(lattice.points, 1, device=lattice._slice.device)
    norm = (1.0 / torch.sqrt(lattice.filter(ones).double() + 1e-20)).float()[:, 0]
    return lattice.scaled(norm, weight * norm)


def _mean_field(unary: torch.Tensor, messages: list[_ScaledFilter],
                iterations: int) -> torch.Tensor:
    """densecrf's inference: ``Q = softmax(-U + Σ_k w_k n_k K_k(n_k Q))`` (Potts), ``(N, C)``."""
    q = _softmax_rows(-unary)
    for _ in range(iterations if messages else 0):
        energy = -unary
        for message in messages:
            energy = energy + message(q)
        q = _softmax_rows(energy)
    return q


def _softmax_rows(energy: torch.Tensor) -> torch.Tensor:
    """Softmax over the few columns of an ``(N, C)`` tensor (faster than ``torch.softmax`` on
    the CPU for small C)."""
    exp = torch.exp(energy - energy.amax(1, keepdim=True))
    return exp / exp.sum(1, keepdim=True)


def _lattice(features: np.ndarray, device: torch.device) -> PermutohedralLattice:
    return PermutohedralLattice(torch.from_numpy(features).to(device))


@functools.lru_cache(maxsize=2)
def _grid_lattice(height: int, width: int, theta: float, device: str) -> PermutohedralLattice:
    """The Gaussian kernel's lattice for a whole tile of this shape (it ignores the image)."""
    return _lattice(position_features(height, width, theta), torch.device(device))



def forget_lattices() -> None:
    """Drop the Gaussian lattices kept per tile shape (:func:`deeplab_geo.shutdown` calls it)."""
    _grid_lattice.cache_clear()


def _enclosing_simplex(features: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per point: remainder-0 lattice point, rank of each axis, barycentric weights (densecrf).

    Takes float32 ``(d, N)`` features. Returns int64 ``(d + 1, N)`` remainder-0 coordinates and
    ranks, and float32 ``(d + 1, N)`` weights of the simplex's vertices in remainder order.
    Points are columns, so every step works on contiguous rows.
    """
    dim, count = features.shape
    device = features.device
    inv_std = float(np.float32(math.sqrt(2.0 / 3.0) * (dim + 1)))
    scale = torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(dim)],
                         dtype=torch.float32, device=device)
    scaled = features * scale[:, None]
    elevated = torch.empty(dim + 1, count, device=device)
    total = torch.zeros(count, device=device)
    for j in range(dim, 0, -1):  # densecrf's order of float operations
        elevated[j] = total - j * scaled[j - 1]
        total = total + scaled[j - 1]
    elevated[0] = total
    down = float(np.float32(1.0 / (dim + 1)))
    nearest = torch.round(elevated * down)
    remainder0 = nearest * (dim + 1)
    offset = elevated - remainder0
    rank = torch.zeros(dim + 1, count, dtype=torch.int16, device=device)
    for i in range(dim):
        for j in range(i + 1, dim + 1):
            smaller = offset[i] < offset[j]
            rank[i] += smaller
            rank[j] += ~smaller
    rank = rank.long() + nearest.sum(0).long()
    wrap = (rank < 0).long() - (rank > dim).long()
    rank += wrap * (dim + 1)
    remainder0 = remainder0.long() + wrap * (dim + 1)
    delta = (elevated - remainder0) * down
    barycentric = torch.zeros(dim + 2, count, device=device)
    barycentric.scatter_add_(0, dim - rank, delta)
    barycentric.scatter_add_(0, dim - rank + 1, -delta)
    barycentric[0] += 1.0 + barycentric[dim + 1]
    return remainder0, rank, barycentric[: dim + 1]


def _lattice_graph(remainder0: torch.Tensor, rank: torch.Tensor
                   ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], int,
                              torch.Tensor]:
    """The lattice vertices each point splats to and each vertex's blur neighbours.

    Vertex r of a point's simplex has densecrf's key ``remainder0 + canonical_r[rank]`` (first
    d coordinates); its neighbours along axis j are the keys shifted by -1 on every coordinate
    but j, which moves +d (and the opposite shift). Keys are packed into one int64 each, so
    finding the vertices is a sort and the neighbours are binary searches; keys too wide for
    that go through ``torch.unique(dim=...)``.

    Returns ``(N, d + 1)`` vertex indexes, per axis the ``(M,)`` indexes of both neighbours
    (-1 where absent), the vertex count M, and the entries ``n * (d + 1) + r`` ordered by
    vertex, then point.
    """
    dim, count = remainder0.shape[0] - 1, remainder0.shape[1]
    low = remainder0[:dim].amin(1) - 2 * (dim + 1)
    spans = (remainder0[:dim].amax(1) - low + 2 * (dim + 1) + 1).tolist()
    if math.prod(spans) >= _PACK_LIMIT:
        return _lattice_graph_unpacked(remainder0, rank)
    radix = [math.prod(spans[:i]) for i in range(dim)]
    base = torch.zeros(count, dtype=torch.long, device=rank.device)
    by_rank = torch.zeros(dim + 1, count, dtype=torch.long, device=rank.device)
    for i in range(dim):
        base += (remainder0[i] - int(low[i])) * radix[i]
        by_rank.scatter_add_(0, rank[i:i + 1], torch.full((1, count), radix[i],
                                                           device=rank.device))
    # Key of vertex r: base + Σ_i (r - (d+1) [rank_i > d - r]) radix_i.
    keys = torch.empty(dim + 1, count, dtype=torch.long, device=rank.device)
    keys[0] = base
    above = torch.zeros_like(base)
    for r in range(1, dim + 1):
        above += by_rank[dim + 1 - r]
        keys[r] = base + r * sum(radix) - (dim + 1) * above
    vertices, order, distinct = _group(keys.T.reshape(-1), math.prod(spans))
    neighbours = []
    for j in range(dim + 1):
        step = -sum(radix) + ((dim + 1) * radix[j] if j < dim else 0)
        neighbours.append((_search(distinct, distinct + step),
                           _search(distinct, distinct - step)))
    return vertices.reshape(count, dim + 1), neighbours, distinct.shape[0], order


def _group(keys: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense ranks of non-negative int64 keys below ``limit``, the entries ordered by (key,
    entry), and the distinct keys in increasing order.

    Where key and entry index fit in 63 bits together this is one sort of
    ``key << b | entry``; otherwise an argsort followed by a sort by (rank, entry).
    """
    count = keys.shape[0]
    bits = max(1, (count - 1).bit_length())
    entries = torch.arange(count, device=keys.device)
    exact = (limit - 1).bit_length() + bits <= 63
    if exact:
        combined = _sort((keys << bits) | entries)
        order, ordered = combined & ((1 << bits) - 1), combined >> bits
    else:
        order = _argsort(keys)
        ordered = keys[order]
    first = torch.ones(count, dtype=torch.bool, device=keys.device)
    first[1:] = ordered[1:] != ordered[:-1]
    ranks = torch.empty_like(keys)
    ranks[order] = torch.cumsum(first, 0) - 1
    if not exact:
        order = _sort((ranks << bits) | entries) & ((1 << bits) - 1)
    return ranks, order, ordered[first]


def _lattice_graph_unpacked(remainder0: torch.Tensor, rank: torch.Tensor
                            ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]],
                                       int, torch.Tensor]:
    """:func:`_lattice_graph` with explicit keys (slow; for keys wider than 62 bits)."""
    dim = remainder0.shape[0] - 1
    remainder = torch.arange(dim + 1, device=rank.device)
    shift = remainder[:, None, None] - (dim + 1) * (rank[None, :dim] + remainder[:, None, None]
                                                      > dim).long()
    keys = (remainder0[None, :dim] + shift).permute(1, 2, 0).reshape(dim, -1)  # point-major
    table, vertices = torch.unique(keys, dim=1, return_inverse=True)
    size = table.shape[1]
    queries = []
    for j in range(dim + 1):
        step = torch.full((dim, 1), -1, dtype=table.dtype, device=table.device)
        if j < dim:
            step[j] = dim
        queries += [table + step, table - step]
    _, found = torch.unique(torch.cat([table, *queries], 1), dim=1, return_inverse=True)
    owner = torch.full((int(found.max()) + 1,), -1, dtype=torch.long, device=table.device)
    owner[found[:size]] = torch.arange(size, device=table.device)
    pairs = owner[found[size:]].reshape(dim + 1, 2, size)
    bits = max(1, (vertices.shape[0] - 1).bit_length())
    entries = torch.arange(vertices.shape[0], device=vertices.device)
    order = _sort((vertices << bits) | entries) & ((1 << bits) - 1)
    return (vertices.reshape(-1, dim + 1), [(pair[0], pair[1]) for pair in pairs], size,
            order)


def _sort(values: torch.Tensor) -> torch.Tensor:
    """Sorted int64 values; on the CPU through NumPy, whose SIMD sort is several times faster."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.sort(values.numpy()))
    return torch.sort(values).values


def _argsort(values: torch.Tensor) -> torch.Tensor:
    if values.device.type == "cpu":
        return torch.from_numpy(np.argsort(values.numpy()))
    return torch.argsort(values)


def _search(table: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Index of each query in a sorted table of distinct values, -1 where absent."""
    if table.device.type == "cpu":
        position = torch.from_numpy(np.searchsorted(table.numpy(), queries.numpy()))
    else:
        position = torch.searchsorted(table, queries)
    position.clamp_(max=table.shape[0] - 1)
    return torch.where(table[position] == queries, position, -1)


def _slice_matrix(vertices: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """The ``(N, M)`` CSR matrix whose row i holds point i's vertex weights."""
    count, corners = vertices.shape
    columns, order = torch.sort(vertices, 1)
    rows = torch.arange(0, count * corners + 1, corners, device=vertices.device)
    return _csr_tensor(rows, columns.reshape(-1), weights.gather(1, order).reshape(-1),
                       (count, size))


def _splat_matrix(vertices: torch.Tensor, weights: torch.Tensor, size: int,
                  order: torch.Tensor) -> torch.Tensor:
    """The ``(M, N)`` CSR transpose of the slice matrix (without its scaling); ``order`` lists
    the entries ``n * (d + 1) + r`` by vertex, then point."""
    count, corners = vertices.shape
    rows = torch.zeros(size + 1, dtype=torch.long, device=vertices.device)
    rows[1:] = torch.cumsum(torch.bincount(vertices.reshape(-1), minlength=size), 0)
    return _csr_tensor(rows, order // corners, weights.reshape(-1)[order], (size, count))


def _blur_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """One blur pass as an ``(M, M)`` CSR matrix: ``v_i + (v_first + v_second) / 2``."""
    size = first.shape[0]
    own = torch.arange(size, device=first.device)
    first = torch.where(first < 0, size, first)  # absent neighbours sort last, then drop out
    second = torch.where(second < 0, size, second)
    low, high = torch.minimum(first, second), torch.maximum(first, second)
    smallest, largest = torch.minimum(own, low), torch.maximum(own, high)
    columns = torch.stack([smallest, own + low + high - smallest - largest, largest], 1)
    weights = torch.where(columns == own[:, None], 1.0, 0.5)
    present = columns < size
    rows = torch.zeros(size + 1, dtype=torch.long, device=first.device)
    rows[1:] = torch.cumsum(present.sum(1), 0)
    return _csr_tensor(rows, columns[present], weights[present], (size, size))


def _scale_columns(matrix: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _csr_tensor(matrix.crow_indices(), matrix.col_indices(),
                       matrix.values() * scale[matrix.col_indices()], tuple(matrix.shape))


def _scale_rows(matrix: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    rows = matrix.crow_indices()
    counts = rows[1:] - rows[:-1]
    return _csr_tensor(rows, matrix.col_indices(),
                       matrix.values() * torch.repeat_interleave(scale, counts),
                       tuple(matrix.shape))


def _csr_tensor(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor,
                shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(rows, columns, values, shape, check_invariants=False)

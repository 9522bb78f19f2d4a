"""Window grids: pure functions that cut a raster into overlapping tiles.

Overlap rule (one axis of length ``n``, tile size ``t``, overlap ``o``, stride ``s = t - o``):

* If ``n <= t`` there is one tile covering ``[0, n)``; it is smaller than ``t`` and the model
  pads it itself.
* Otherwise the axis gets the fewest tiles of size ``t`` whose overlaps are all at least ``o``,
  ``k = ceil((n - o) / s)``, spread evenly: tile ``i`` starts at ``round(i * (n - t) / (k - 1))``,
  so the first starts at 0 and the last ends at ``n``. Every tile lies inside the raster.
* Fitted grids (``fit=True``, unaligned; for models that take any input size) keep those
  ``k`` tiles but shrink them to the least multiple of :data:`FIT_STEP` pixels (at most
  ``t``) that still covers the axis with overlaps of at least ``o``, that is
  ``ceil((n + (k - 1) * o) / k)`` rounded up. The model then sees fewer pixels twice (on
  8192 px with ``t = 512``, ``o = 64``: 19 tiles of 496 px instead of 512, 1.32 instead of
  1.41 times the raster's pixels).
* Each tile owns a *core*: the cut between two neighbouring cores is the middle of their
  overlap, so cores partition ``[0, n)`` exactly, and every core pixel not on the raster edge is
  at least ``o // 2`` pixels from its tile's border. Stitching keeps only the cores, so every
  pixel is predicted with context on all sides and no pixel is written twice.

Aligned grids (``align > 1``) serve models whose output shifts exactly with their input only
in steps of ``align`` pixels (a strided network's total stride, a windowed pool's cell): every
tile starts at a multiple of ``align``, one step ``max(align, floor((t - o) / align) * align)``
apart (so overlaps are at least ``min(o, t - align)``), and the
last tile is cut off at ``n`` instead of being moved back (it is then smaller than ``t``).
Tiles of one size are batched together (:func:`batches`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from rasterio.windows import Window


@dataclass(frozen=True)
class Span:
    """A half-open interval ``[start, stop)`` of pixel indices."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Tile:
    """One window to predict (``read``) and the part of it that is kept (``core``).

    Both are in raster pixel coordinates; ``core`` lies inside ``read``.
    """

    row: Span
    col: Span
    core_row: Span
    core_col: Span

    @property
    def read_window(self) -> Window:
        return Window(self.col.start, self.row.start, self.col.size, self.row.size)

    @property
    def core_window(self) -> Window:
        return Window(self.core_col.start, self.core_row.start, self.core_col.size,
                      self.core_row.size)

    @property
    def core_slices(self) -> tuple[slice, slice]:
        """Slices that cut the core out of an array covering the read window."""
        r0 = self.core_row.start - self.row.start
        c0 = self.core_col.start - self.col.start
        return slice(r0, r0 + self.core_row.size), slice(c0, c0 + self.core_col.size)


FIT_STEP = 16
"""Fitted tiles are multiples of this many pixels (a strided network's feature grid stays whole)."""


def axis_spans(length: int, tile_size: int, overlap: int, align: int = 1, fit: bool = False
               ) -> list[tuple[Span, Span]]:
    """Cut one axis into (tile, core) spans following the module's overlap rule."""
    if length < 1:
        raise ValueError(f"axis length must be positive, got {length}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"need 0 <= overlap < tile_size, got {overlap} and {tile_size}")
    if align < 1:
        raise ValueError(f"align must be positive, got {align}")
    if length <= tile_size:
        whole = Span(0, length)
        return [(whole, whole)]
    if align > 1:
        step = max(align, (tile_size - overlap) // align * align)
        count = 1 + -(-(length - tile_size) // step)
        tiles = [Span(i * step, min(i * step + tile_size, length)) for i in range(count)]
    else:
        count = -(-(length - overlap) // (tile_size - overlap))
        if fit:
            least = -(-(length + (count - 1) * overlap) // count)
            tile_size = min(tile_size, -(-least // FIT_STEP) * FIT_STEP)
        starts = [round(i * (length - tile_size) / (count - 1)) for i in range(count)]
        tiles = [Span(s, s + tile_size) for s in starts]
    cuts = [0] + [(a.stop + b.start) // 2 for a, b in zip(tiles, tiles[1:])] + [length]
    return [(t, Span(c0, c1)) for t, c0, c1 in zip(tiles, cuts, cuts[1:])]


def tile_grid(height: int, width: int, tile_size: int, overlap: int, align: int = 1,
              fit: bool = False) -> list[Tile]:
    """All tiles of a ``height`` x ``width`` raster, in row-major order."""
    rows = axis_spans(height, tile_size, overlap, align, fit)
    cols = axis_spans(width, tile_size, overlap, align, fit)
    return [Tile(r, c, rc, cc) for (r, rc), (c, cc) in product(rows, cols)]


STRIP_PIXELS = 1 << 23
"""Default pixels per strip (8 Mpx), rounded to whole block rows (see :func:`strip_bounds`)."""


def strip_bounds(height: int, width: int, block_rows: int,
                 strip_rows: int | None = None) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the strips that cover a raster, top to bottom.

    Strips are ``strip_rows`` high, or by default the whole number of blocks (at least one) that
    holds about :data:`STRIP_PIXELS` pixels. The last strip ends at the last row and may be
    shorter; strips never overlap. Stitching hands finished rows on in these strips and the
    vectorizer reads them, so every block is written and decoded once.
    """
    if strip_rows is None:
        blocks = max(1, round(STRIP_PIXELS / max(1, width * block_rows)))
        strip_rows = blocks * block_rows
    strip_rows = max(1, int(strip_rows))
    return [(r, min(r + strip_rows, height)) for r in range(0, height, strip_rows)]


def batches(tiles: list[Tile], size: int) -> list[list[Tile]]:
    """Consecutive tiles of one read size, at most ``size`` per batch (a batch is one array)."""
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    out: list[list[Tile]] = []
    for tile in tiles:
        if out and len(out[-1]) < size and (out[-1][0].row.size, out[-1][0].col.size) == \
                (tile.row.size, tile.col.size):
            out[-1].append(tile)
        else:
            out.append([tile])
    return out


def batched(items: list, size: int) -> list[list]:
    """Split ``items`` into consecutive lists of at most ``size`` elements."""
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]

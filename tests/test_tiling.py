import numpy as np
import pytest

from deeplab_geo.raster.tiling import FIT_STEP, Span, axis_spans, batched, batches, tile_grid


@pytest.mark.parametrize("length", [1, 7, 31, 32, 33, 63, 64, 100, 257, 1000, 2049])
@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 8), (64, 16), (64, 63)])
def test_axis_spans_partition_and_rules(length, tile, overlap):
    spans = axis_spans(length, tile, overlap)
    cores = [core for _, core in spans]
    # cores partition [0, length) exactly, in order
    assert cores[0].start == 0 and cores[-1].stop == length
    assert all(a.stop == b.start for a, b in zip(cores, cores[1:]))
    for span, core in spans:
        assert 0 <= span.start <= core.start < core.stop <= span.stop <= length
        assert span.size == min(tile, length)
    # neighbouring tiles overlap by at least `overlap`; interior core edges keep overlap // 2
    for (a, _), (b, core_b) in zip(spans, spans[1:]):
        assert a.stop - b.start >= overlap
        assert core_b.start - b.start >= overlap // 2
        assert a.stop - core_b.start >= overlap // 2


@pytest.mark.parametrize("length", [33, 100, 257, 1000, 2049, 8192])
@pytest.mark.parametrize("tile,overlap", [(32, 8), (64, 16), (64, 63), (512, 64)])
def test_fitted_spans_keep_the_count_and_the_rules_with_smaller_tiles(length, tile, overlap):
    plain, fitted = axis_spans(length, tile, overlap), axis_spans(length, tile, overlap, fit=True)
    assert len(fitted) == len(plain)
    cores = [core for _, core in fitted]
    assert cores[0].start == 0 and cores[-1].stop == length
    assert all(a.stop == b.start for a, b in zip(cores, cores[1:]))
    sizes = {span.size for span, _ in fitted}
    assert len(sizes) == 1  # one size: the tiles batch together
    size = sizes.pop()
    assert size <= min(tile, length) and (size in (tile, length) or size % FIT_STEP == 0)
    for (a, _), (b, core_b) in zip(fitted, fitted[1:]):
        assert a.stop - b.start >= overlap
        assert core_b.start - b.start >= overlap // 2 and a.stop - core_b.start >= overlap // 2
    if len(fitted) > 1 and size > FIT_STEP:  # the least such size: one step less cannot cover
        assert len(fitted) * (size - FIT_STEP) < length + (len(fitted) - 1) * overlap \
            or size - FIT_STEP <= overlap


def test_fitted_tiles_on_the_peer_scene():
    fitted = axis_spans(8192, 512, 64, fit=True)
    assert len(fitted) == 19 and fitted[0][0].size == 496  # 512 px tiles: 1.41x the pixels
    assert (19 * 496 / 8192) ** 2 < 1.33


def test_axis_spans_spread_evenly():
    spans = axis_spans(1000, 512, 64)
    assert [s.start for s, _ in spans] == [0, 244, 488]


def test_tile_grid_covers_every_pixel_once_including_last_partial_row_and_column():
    height, width = 130, 77
    hits = np.zeros((height, width), int)
    for tile in tile_grid(height, width, 32, 8):
        rows, cols = tile.core_slices
        window = tile.read_window
        assert window.width == 32 and window.height == 32
        block = np.zeros((32, 32), int)
        block[rows, cols] = 1
        hits[window.row_off:window.row_off + 32, window.col_off:window.col_off + 32] += block
    assert (hits == 1).all()


def test_raster_smaller_than_a_tile_is_one_tile():
    (tile,) = tile_grid(10, 20, 512, 64)
    assert (tile.read_window.height, tile.read_window.width) == (10, 20)
    assert tile.core_window == tile.read_window


@pytest.mark.parametrize("tile,overlap", [(32, 32), (32, 40), (32, -1)])
def test_invalid_overlap_rejected(tile, overlap):
    with pytest.raises(ValueError, match="overlap"):
        axis_spans(100, tile, overlap)


def test_batched():
    assert batched(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        batched([1], 0)


@pytest.mark.parametrize("length,tile,overlap,align", [(1000, 512, 64, 32), (1100, 768, 384, 32),
                                                      (97, 40, 20, 8), (64, 40, 39, 8)])
def test_aligned_spans_start_on_the_grid_and_cut_the_last_tile_off(length, tile, overlap, align):
    spans = axis_spans(length, tile, overlap, align)
    tiles = [t for t, _ in spans]
    assert all(t.start % align == 0 and 0 < t.size <= tile for t in tiles)
    assert tiles[0].start == 0 and tiles[-1].stop == length
    assert all(t.size == tile for t in tiles[:-1])
    # a step is at least one align: the overlap is then at most tile - align
    assert all(a.stop - b.start >= min(overlap, tile - align) for a, b in zip(tiles, tiles[1:]))
    cores = [c for _, c in spans]
    assert cores[0].start == 0 and cores[-1].stop == length
    assert all(a.stop == b.start for a, b in zip(cores, cores[1:]))
    assert all(t.start <= c.start and c.stop <= t.stop for t, c in spans)
    assert axis_spans(30, 40, 8, 8) == [(Span(0, 30), Span(0, 30))]


def test_batches_hold_tiles_of_one_size():
    grid = tile_grid(100, 90, 40, 8, align=16)  # the last row and column are smaller
    groups = batches(grid, 2)
    assert [t for group in groups for t in group] == grid
    assert all(len(g) <= 2 and len({(t.row.size, t.col.size) for t in g}) == 1 for g in groups)
    with pytest.raises(ValueError):
        batches(grid, 0)

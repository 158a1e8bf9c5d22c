import pytest

from cdtool.windows import Tile, aligned_spans, fitted_spans, grid, starts


def test_starts_cover_and_end_at_edge():
    s = starts(1000, 256, 200)
    assert s[0] == 0 and s[-1] == 1000 - 256
    assert all(b - a <= 200 for a, b in zip(s, s[1:]))


def test_short_axis_gets_one_window():
    assert starts(100, 256, 200) == [0]
    assert grid(100, 50, 256, 200) == [[Tile(0, 0, 100, 50)]]


@pytest.mark.parametrize("h,w,size,stride", [(517, 300, 128, 100), (256, 256, 256, 256), (1000, 33, 64, 1)])
def test_grid_covers_every_pixel_inside_the_raster(h, w, size, stride):
    import numpy as np

    hits = np.zeros((h, w), int)
    for t in (t for row in grid(h, w, size, stride) for t in row):
        assert 0 <= t.row and t.row_stop <= h and 0 <= t.col and t.col_stop <= w
        hits[t.slices()] += 1
    assert hits.min() >= 1


def test_grid_with_column_offset_for_wrapping():
    rows = grid(100, 300, 128, 96, col_begin=-50)
    assert rows[0][0].col == -50 and rows[0][-1].col_stop == 250


def test_tile_intersection():
    assert Tile(0, 0, 10, 10).intersection(Tile(5, 5, 10, 10)) == Tile(5, 5, 5, 5)
    assert Tile(0, 0, 10, 10).intersection(Tile(10, 0, 5, 5)) is None


def test_invalid_stride():
    with pytest.raises(ValueError):
        starts(10, 5, 0)


def test_fitted_spans_cover_with_the_overlap_and_never_score_more():
    import random

    assert fitted_spans(2048, 512, 64, 0, 16) == [(0, 464), (400, 464), (800, 464), (1200, 464), (1584, 464)]
    rng = random.Random(0)
    better = 0
    for _ in range(3000):
        align = rng.choice([1, 2, 16, 32])
        size = rng.randint(2 * align, 1100)
        overlap, length = rng.randint(0, size - align - 1), rng.randint(1, 5000)
        begin = -align * rng.randint(0, 3)
        spans = fitted_spans(length, size, overlap, begin, align)
        plain = aligned_spans(length, size, max(align, (size - overlap) // align * align), begin, align)
        assert spans[0][0] == begin and sum(spans[-1]) == begin + length
        for (s0, n0), (s1, _) in zip(spans, spans[1:]):
            assert s0 + n0 - s1 >= overlap and (s1 - begin) % align == 0
        assert max(n for _, n in spans) <= size + 2 * (align - 1)
        scored, before = sum(n for _, n in spans), sum(n for _, n in plain)
        assert scored <= before
        better += scored < before
    assert better > 1000

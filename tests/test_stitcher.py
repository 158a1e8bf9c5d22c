import numpy as np
import pytest

from cdtool.inference.stitcher import Stitcher, taper
from cdtool.inference.threshold import ScoreHistogram
from cdtool.windows import grid


def _stitch(field, size, stride, halo=0, blend="cosine", pad=0):
    h, w = field.shape
    rows = grid(h, w + 2 * pad, size, stride, col_begin=-pad)
    st = Stitcher(h, w, rows[0][0].height, halo=halo, blend=blend, wrap_pad=pad)
    out = np.full(field.shape, np.nan, np.float32)
    valid = np.zeros(field.shape, bool)
    for i, row in enumerate(rows):
        for t in row:
            cols = np.arange(t.col, t.col_stop) % w
            st.add(t, field[t.row:t.row_stop][:, cols], np.ones((t.height, t.width), bool))
        bands = st.flush(rows[i + 1][0].row) if i + 1 < len(rows) else st.finish()
        for b in bands:
            out[b.row:b.row + b.score.shape[0]] = b.score
            valid[b.row:b.row + b.score.shape[0]] = b.valid
    return out, valid


@pytest.mark.parametrize("blend", ["cosine", "gaussian"])
@pytest.mark.parametrize("halo", [0, 8])
def test_identical_tile_outputs_stitch_exactly(blend, halo):
    rng = np.random.default_rng(0)
    field = rng.random((203, 171)).astype(np.float32)
    out, valid = _stitch(field, 64, 40, halo=halo, blend=blend)
    assert valid.all()
    np.testing.assert_allclose(out, field, atol=1e-6)


def test_wrap_folds_padding_back_onto_the_other_edge():
    rng = np.random.default_rng(1)
    field = rng.random((80, 150)).astype(np.float32)
    out, valid = _stitch(field, 64, 40, halo=4, pad=24)
    assert valid.all()
    np.testing.assert_allclose(out, field, atol=1e-6)


def test_rows_cannot_be_added_after_flush():
    st = Stitcher(100, 100, 50)
    list(st.flush(60))
    from cdtool.windows import Tile

    with pytest.raises(ValueError):
        st.add(Tile(10, 0, 50, 50), np.zeros((50, 50)), np.ones((50, 50), bool))


def test_taper_is_zero_in_halo_and_positive_inside():
    w = taper(32, "cosine", 4, 0)
    assert (w[:4] == 0).all() and (w[4:] > 0).all()
    with pytest.raises(ValueError):
        taper(8, "cosine", 4, 4)


def test_otsu_separates_two_modes():
    rng = np.random.default_rng(0)
    h = ScoreHistogram()
    low, high = rng.normal(0.2, 0.03, 5000), rng.normal(0.7, 0.03, 500)
    h.add(np.concatenate([low, high]))
    t = h.otsu()
    assert 0.25 < t < 0.6
    assert (low >= t).mean() < 0.01 and (high < t).mean() < 0.01
    assert ScoreHistogram().otsu() == 0.5


def test_histogram_counts_as_numpy_does_edges_included():
    rng = np.random.default_rng(1)
    scores = rng.random(300_000, dtype=np.float32)
    edges = np.array([0, 1, 0.5, 1 / 1024, 1023 / 1024, np.nextafter(np.float32(1), np.float32(0)), 1e-45,
                      -0.2, 1.3], np.float32)  # bin edges, the largest float below 1, a denormal, out of range
    scores[:edges.size] = edges
    h = ScoreHistogram()
    h.add(scores[:123_453])
    h.add(scores[123_453:].reshape(-1, 7))  # any shape
    expected = np.histogram(np.clip(scores, 0, 1), bins=1024, range=(0, 1))[0]
    assert np.array_equal(h.counts, expected) and h.total == scores.size

"""Properties of the window grid and the stitcher for any raster and tile geometry (hypothesis): every
pixel is covered, no window reads past the edge, and a pixel-wise model's stitched map equals its
whole-image map whatever the tile size, overlap, halo or blend."""

import numpy as np
from hypothesis import given, settings, strategies as st

from cdtool.inference.stitcher import Stitcher
from cdtool.windows import grid, starts

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(length=st.integers(1, 500), size=st.integers(1, 128), stride=st.integers(1, 128), begin=st.integers(-50, 50))
def test_starts_cover_the_line_and_stay_inside(length, size, stride, begin):
    out = starts(length, size, stride, begin)
    span = min(size, length)
    assert out[0] == begin and out == sorted(set(out))
    assert out[-1] + span == begin + length  # the last window ends exactly at the edge
    assert all(b - a <= stride for a, b in zip(out, out[1:]))  # no gap wider than the stride
    covered = np.zeros(length, bool)
    for s in out:
        covered[s - begin:s - begin + span] = True
    assert covered.all() or stride > size  # windows further apart than their size leave gaps, by request


def _stitched(field: np.ndarray, size: int, stride: int, halo: int, blend: str) -> tuple[np.ndarray, np.ndarray]:
    """Stream `field` through the stitcher as a pixel-wise model would score it, tile by tile."""
    h, w = field.shape
    rows = grid(h, w, size, stride)
    stitcher = Stitcher(h, w, rows[0][0].height, halo=halo, blend=blend)
    out, valid = np.full(field.shape, np.nan, np.float32), np.zeros(field.shape, bool)
    for i, row in enumerate(rows):
        for t in row:
            stitcher.add(t, field[t.slices()], np.ones((t.height, t.width), bool))
        for band in stitcher.flush(rows[i + 1][0].row) if i + 1 < len(rows) else stitcher.finish():
            out[band.row:band.row + len(band.score)] = band.score
            valid[band.row:band.row + len(band.score)] = band.valid
    return out, valid


@FAST
@given(h=st.integers(1, 150), w=st.integers(1, 150), size=st.integers(8, 64), overlap=st.integers(0, 32),
       halo=st.integers(0, 6), blend=st.sampled_from(["cosine", "gaussian"]), seed=st.integers(0, 2**16))
def test_a_pixelwise_model_stitches_to_its_whole_image_map(h, w, size, overlap, halo, blend, seed):
    overlap = max(overlap, 2 * halo)  # as detect raises it: every pixel then has weight in some tile
    stride = size - overlap
    if stride < 1 or (min(h, w) > size and size <= 2 * halo):
        return
    field = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    out, valid = _stitched(field, size, stride, halo, blend)
    assert valid.all()  # every pixel covered by positive weight, exactly once per band
    np.testing.assert_allclose(out, field, atol=1e-5)  # float32 sums of a few weights

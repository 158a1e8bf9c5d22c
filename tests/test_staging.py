"""The staged score map's overviews, built as bands stream, are the exact mean of the valid pixels below each
coarse pixel, and detect's COG carries them."""

import numpy as np
import rasterio
from affine import Affine

from cdtool.io.staging import OverviewPyramid
from cdtool.io.writers import overview_factors


def _block_mean(score, valid, f):
    h, w = -(-score.shape[0] // f), -(-score.shape[1] // f)
    sums, counts = np.zeros((h, w)), np.zeros((h, w))
    np.add.at(sums, (np.arange(score.shape[0])[:, None] // f, np.arange(score.shape[1])[None] // f),
              np.where(valid, score, 0))
    np.add.at(counts, (np.arange(score.shape[0])[:, None] // f, np.arange(score.shape[1])[None] // f), valid)
    return np.where(counts > 0, sums / np.maximum(counts, 1), -1.0)


def test_streamed_overviews_are_exact_means_of_valid_pixels(tmp_path):
    rng = np.random.default_rng(3)
    height, width = 1031, 517  # odd both ways: the last coarse row and column take what there is
    score = rng.random((height, width)).astype(np.float32)
    valid = rng.random((height, width)) > 0.3
    valid[200:400, :] = False  # a hole larger than the coarsest pixel: nodata there
    pyramid = OverviewPyramid(tmp_path, height, width, -1.0, None, Affine.identity())
    row = 0
    for rows in (7, 256, 1, 300, 467):  # band heights odd and even, as the stitcher emits them
        pyramid.add(score[row:row + rows], valid[row:row + rows])
        row += rows
    paths = pyramid.close()
    assert len(paths) == len(overview_factors(height, width)) == 3
    for factor, path in zip(overview_factors(height, width), paths):
        with rasterio.open(path) as ds:
            level = ds.read(1)
            assert ds.nodata == -1.0
        expected = _block_mean(score, valid, factor)
        assert level.shape == expected.shape == (-(-height // factor), -(-width // factor))
        assert np.allclose(level, expected, atol=1e-5)
        assert (level == -1).any()


def test_detect_output_carries_the_streamed_overviews(small_pair, tmp_path):
    from cdtool.inference.detect import DetectOptions, detect

    before, after, _ = small_pair
    detect(before, after, tmp_path / "o", DetectOptions(model="cva", preview=False, polygons=False))
    with rasterio.open(tmp_path / "o/change_prob.tif") as ds:
        full = ds.read(1)
        factors = ds.overviews(1)
        assert factors == overview_factors(ds.height, ds.width) and factors
        coarse = ds.read(1, out_shape=(-(-ds.height // factors[0]), -(-ds.width // factors[0])))
    assert np.allclose(coarse, _block_mean(full, full != -1, factors[0]), atol=1e-5)

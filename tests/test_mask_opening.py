"""The mask's morphological opening: streamed band by band it equals the whole-mask opening, and in detect it
removes specks without touching large changes."""

import numpy as np
import pytest

from cdtool.inference.mask_opening import open_mask, opened_bands
from cdtool.inference.detect import DetectOptions, detect


@pytest.mark.parametrize("radius", [1, 2])
def test_streamed_opening_equals_whole_mask(radius):
    rng = np.random.default_rng(radius)
    hit = rng.random((700, 90)) > 0.6
    hit[100:300, 20:70] = True  # a large change survives
    valid = np.ones_like(hit)
    bands = [(i, hit[i:i + 256], valid[i:i + 256], None) for i in range(0, 700, 256)]
    got = np.concatenate([b[1] for b in opened_bands(iter(bands), radius)])
    assert np.array_equal(got, open_mask(hit, radius))
    assert got[100 + radius:300 - radius, 20 + radius:70 - radius].all() and got.sum() < hit.sum() / 2


def test_detect_clean_removes_specks(small_pair, tmp_path):
    before, after, _ = small_pair
    raw = detect(before, after, tmp_path / "raw", DetectOptions(model="cva", min_area=0, min_pixels=1))
    clean = detect(before, after, tmp_path / "clean", DetectOptions(model="cva", min_area=0, min_pixels=1, clean=1))
    assert clean.regions < raw.regions and clean.changed_pixels > 0.5 * raw.changed_pixels

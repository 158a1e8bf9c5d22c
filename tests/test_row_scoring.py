"""Detection as Dask tasks on a two-worker local cluster equals the in-process run, polygons included."""

import numpy as np
import pytest
import rasterio

from cdtool.inference.detect import DetectOptions, detect

pytest.importorskip("distributed")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cva", "siam_diff_unet_rgb"])
def test_two_workers_equal_one_process(shared_data, tmp_path, model):
    a, b = shared_data / "oscd/rennes/imgs_1", shared_data / "oscd/rennes/imgs_2"
    bands = [4, 3, 2] if model != "cva" else None
    opts = dict(model=model, tile=128, overlap=96 if model != "cva" else 16, preview=False, bands=bands)
    one = detect(a, b, tmp_path / "one", DetectOptions(**opts))
    two = detect(a, b, tmp_path / "two", DetectOptions(workers=2, **opts))
    with rasterio.open(tmp_path / "one/change_prob.tif") as p1, rasterio.open(tmp_path / "two/change_prob.tif") as p2:
        diff = np.abs(p1.read(1) - p2.read(1)).max()
    assert diff < 1e-5 and one.regions == two.regions and one.changed_pixels == two.changed_pixels


def test_workers_must_not_be_negative(small_pair, tmp_path):
    from cdtool.errors import InputError

    before, after, _ = small_pair
    with pytest.raises(InputError, match="^workers must be 0"):
        detect(before, after, tmp_path / "o", DetectOptions(workers=-1))


@pytest.mark.parametrize("how", [dict(readers=2), pytest.param(dict(workers=2), marks=pytest.mark.slow)])
def test_blocks_skipped_by_other_readers_or_workers_are_counted(tmp_path, how):
    """A corrupt block read as nodata by a second reader thread or a Dask worker still reaches detect.json."""
    from test_faults import _corrupt_tif

    bad = _corrupt_tif(tmp_path / "bad.tif")
    opts = dict(model="cva", tile=128, overlap=16, preview=False, polygons=False, skip_bad_windows=True)
    one = detect(bad, bad, tmp_path / "one", DetectOptions(**opts))
    other = detect(bad, bad, tmp_path / "other", DetectOptions(**opts, **how))
    assert one.extra["bad_blocks"] == other.extra["bad_blocks"] == 1
    assert one.valid_pixels == other.valid_pixels == 512 * 512 - 256 * 256

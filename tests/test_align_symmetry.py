"""`--align` compares the dates equally smooth, whichever comes first: warping AFTER onto BEFORE's grid smooths
it (bilinear), so BEFORE is given the same loss of noise, else swapping the dates moves the automatic
threshold."""

import glob
import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.io.pair import _taps, resampling_match


def _stack(folder, path, crop=0, transform=None):
    files = [sorted(glob.glob(f"{folder}/*{b}.tif"))[0] for b in ("B04", "B03", "B02", "B08")]
    with rasterio.open(files[0]) as first:
        profile = first.profile | {"count": 4, "dtype": "uint16", "driver": "GTiff"}
    data = np.stack([rasterio.open(f).read(1) for f in files]).astype("uint16")
    if crop:
        data = data[:, crop:-crop, crop:-crop]
    profile |= {"height": data.shape[1], "width": data.shape[2]}
    if transform is not None:
        profile["transform"] = transform(profile["transform"])
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _share(before, after, out):
    r = CliRunner().invoke(app, ["detect", str(before), str(after), "-o", str(out), "--align", "-q",
                                 "--model", "cva", "--no-polygons"])
    assert r.exit_code == 0, r.output
    return json.loads((out / "detect.json").read_text())["changed_share"]


def test_swapping_the_dates_keeps_the_flagged_share(shared_data, tmp_path):
    """Rennes, the second date on a grid 0.3 pixel off and 0.7 % coarser (as two products cut differently):
    11.6 % apart before BEFORE was smoothed to match, 7 % after."""
    city = shared_data / "oscd" / "rennes"
    scale = 1 / (1 - 2 / 1000)
    b = _stack(city / "imgs_1", tmp_path / "b.tif")
    a = _stack(city / "imgs_2", tmp_path / "a.tif", crop=1,
               transform=lambda t: Affine(t.a * scale, 0, t.c + 0.3 * t.a, 0, t.e * scale, t.f + 0.3 * t.e))
    forward, backward = _share(b, a, tmp_path / "ba"), _share(a, b, tmp_path / "ab")
    assert 0.02 < forward < 0.1
    assert abs(forward - backward) / max(forward, backward) < 0.1, (forward, backward)


def test_the_filter_removes_what_bilinear_removes():
    class Grid:
        def __init__(self, transform, crs="EPSG:32631"):
            self.transform, self.crs = transform, crs

    base = Affine(10, 0, 500000, 0, -10, 4000000)
    half = resampling_match(Grid(base), Grid(base * Affine.translation(0.5, 0.25)))
    assert half == pytest.approx(((2 - 1.75 ** 0.5) / 6, 1 / 6))  # rows 1/4 pixel off: 5/8 of the noise kept
    assert resampling_match(Grid(base), Grid(base * Affine.translation(3, -2))) == pytest.approx((0.0, 0.0))
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(400, 400))
    kept = _taps(_taps(noise, 1 / 6, 0), 1 / 6, 1).var() / noise.var()
    bilinear = 0.25 * (noise[:-1, :-1] + noise[1:, :-1] + noise[:-1, 1:] + noise[1:, 1:])
    assert kept == pytest.approx(bilinear.var() / noise.var(), rel=0.05)

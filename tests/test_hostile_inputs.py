"""Inputs real products and hostile files hold that must be read right rather than refused or silently changed:
valid data on an island between the windows sampled for statistics, band folders of mixed types or on a
rotated grid, uint32 values near 2^31, paletted PNGs, and the size line and pixel limit of huge inputs.
(The refusals, one line each, are in test_probes.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.inference.detect import DetectOptions, detect
from cdtool.io.pair import open_pair
from cdtool.normalization import pair_statistics, sample_tiles
from tests.conftest import write_tif

runner = CliRunner()
LEAN = dict(model="cva", polygons=False, preview=False)


def island_pair(tmp_path, size: int = 4096, top: int = 300, side: int = 400):
    """Two rasters of nodata (0) but for one side² island lying between the windows sampled for statistics."""
    rng = np.random.default_rng(0)
    paths = []
    for name in ("before", "after"):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", nodata=0,
                           crs="EPSG:32632", transform=Affine(10, 0, 6e5, 0, -10, 5e6), tiled=True,
                           compress="deflate", sparse_ok=True) as ds:
            ds.write(rng.integers(1, 255, (side, side)).astype(np.uint8), 1,
                     window=((top, top + side), (top, top + side)))
        paths.append(path)
    return paths


def test_the_island_lies_between_the_sampled_windows(tmp_path):
    """The premise of the two tests below: no sampled window touches the island."""
    for t in sample_tiles(4096, 4096):
        assert t.row_stop <= 300 or t.row >= 700 or t.col_stop <= 300 or t.col >= 700, t


def test_statistics_find_valid_pixels_between_the_sampled_windows(tmp_path):
    before, after = island_pair(tmp_path)
    with open_pair(before, after) as pair:
        mean, std = pair_statistics(pair)
        with rasterio.open(before) as ds:
            island = ds.read(1, window=((300, 700), (300, 700))).astype(np.float64)
    assert mean[0, 0] == pytest.approx(island.mean(), rel=1e-5)
    assert std[0, 0] == pytest.approx(island.std(), rel=1e-4)


@pytest.mark.slow
def test_detect_scores_an_island_the_sample_missed(tmp_path):
    """Refused before as "no pixel is valid in both dates"; now scored, and only the island is valid."""
    before, after = island_pair(tmp_path)
    res = detect(before, after, tmp_path / "out", DetectOptions(**LEAN))
    assert res.valid_pixels == 400 * 400
    assert 0 < res.changed_pixels < res.valid_pixels


def band_folder(root, bands: dict[str, np.ndarray], transform: Affine = Affine(10, 0, 6e5, 0, -10, 5e6)):
    root.mkdir()
    for name, data in bands.items():
        write_tif(root / f"{name}.tif", data, transform=transform)
    return root


def test_band_folder_of_mixed_types_is_read_in_their_common_type(tmp_path):
    """Sentinel-2 L2A keeps its uint8 scene classification beside uint16 reflectances: ended in "unexpected
    ValueError: more than one 'dtype' found"; now every band is read as uint16, values unchanged."""
    rng = np.random.default_rng(1)
    folders = []
    for date in ("a", "b"):
        bands = {"B02": rng.integers(0, 10000, (64, 64)).astype(np.uint16),
                 "B03": rng.integers(0, 10000, (64, 64)).astype(np.uint16),
                 "SCL": rng.integers(0, 12, (64, 64)).astype(np.uint8)}
        folders.append((band_folder(tmp_path / date, bands), bands))
    with open_pair(folders[0][0], folders[1][0]) as pair:
        assert pair.before.dtypes == ("uint16",) * 3
        data, valid = pair.read(pair_tile := sample_tiles(64, 64)[0])
        assert valid.all() and pair_tile.height == 64
        for k, name in enumerate(("B02", "B03", "SCL")):
            np.testing.assert_array_equal(data[0, k], folders[0][1][name].astype(np.float32))
    res = detect(folders[0][0], folders[1][0], tmp_path / "out", DetectOptions(**LEAN))
    assert res.valid_pixels == 64 * 64


@pytest.mark.parametrize("degrees", [90, 30])
def test_band_folder_on_a_rotated_grid_keeps_its_grid(tmp_path, degrees):
    """Band files on a rotated grid ended in "unexpected ZeroDivisionError"; bands rotated alike now stack (a 20 m
    band onto the 10 m grid as well, its pixels where they lie), and the outputs lie on the same rotated grid."""
    rng = np.random.default_rng(2)
    fine = Affine.translation(6e5, 5e6) * Affine.rotation(degrees) * Affine.scale(10, -10)
    folders = []
    for date in ("a", "b"):
        root = band_folder(tmp_path / date, {"B02": rng.integers(0, 255, (64, 64)).astype(np.uint16)}, fine)
        ramp = 8 * np.arange(32)[:, None] + 4 * np.arange(32)[None, :]  # bilinear keeps a ramp exact
        write_tif(root / "B11.tif", ramp.astype(np.uint16), transform=fine * Affine.scale(2))
        folders.append(root)
    with open_pair(folders[0], folders[1]) as pair:
        data, _ = pair.read(sample_tiles(64, 64)[0])
    rows, cols = np.mgrid[1:63, 1:63]
    np.testing.assert_array_equal(data[0, 1, 1:63, 1:63], 4 * rows + 2 * cols - 3)  # the coarse band in place
    res = detect(folders[0], folders[1], tmp_path / "out", DetectOptions(**LEAN))
    with rasterio.open(res.outputs["change_prob.tif"]) as ds:
        assert ds.transform.almost_equals(fine) and ds.shape == (64, 64)
    assert res.valid_pixels == 64 * 64


def test_uint32_near_2_31_flags_what_the_same_uint8_data_flags(tmp_path):
    """uint32 values near 2^31 were rounded to float32 (steps of 256) and 41 % flagged where the same data as
    uint8 flags 3-4 %; now read less a per-band offset, with a note saying so, and the shares are equal."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 200, (3, 128, 128)).astype(np.uint8)
    b = a.copy()
    b[:, 40:64, 40:64] = 250
    b = np.clip(b.astype(int) + rng.integers(-3, 4, b.shape), 0, 255).astype(np.uint8)
    shares = {}
    for dtype, offset in (("uint8", 0), ("uint32", 2**31)):
        pa = write_tif(tmp_path / f"{dtype}_a.tif", (a.astype(np.int64) + offset).astype(dtype))
        pb = write_tif(tmp_path / f"{dtype}_b.tif", (b.astype(np.int64) + offset).astype(dtype))
        res = detect(pa, pb, tmp_path / dtype, DetectOptions(**LEAN))
        shares[dtype] = (res.changed_share, res.threshold)
        notes = res.extra["notes"]
        assert any("offset" in n and "uint32" in n for n in notes) == (dtype == "uint32"), notes
    assert 0.02 < shares["uint8"][0] < 0.1
    assert shares["uint32"] == pytest.approx(shares["uint8"], abs=1e-4)


def test_fixed_normalisation_sees_raw_values_of_an_offset_pair(tmp_path):
    """The offset is taken back out where a model expects raw units (fixed mean/std)."""
    from cdtool.normalization import Normalizer

    data = (np.arange(64 * 64).reshape(1, 64, 64) % 50 + 2**31).astype(np.uint32)
    pa, pb = write_tif(tmp_path / "a.tif", data), write_tif(tmp_path / "b.tif", data)
    with open_pair(pa, pb, offset="auto") as pair:  # as detect opens it
        assert pair.offset is not None
        norm = Normalizer({"mode": "fixed", "mean": [2**31 + 20.0], "std": [5.0]}, pair)
        raw, _ = pair.read(sample_tiles(64, 64)[0])
        z = norm(raw)
    np.testing.assert_allclose(z[0, 0], (data[0].astype(np.float64) - (2**31 + 20)) / 5, atol=1e-5)


def paletted_png(path, index: np.ndarray, palette: np.ndarray, transparent: int | None = None):
    image = Image.fromarray(index.astype(np.uint8), mode="P")
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    image.save(path, **({"transparency": transparent} if transparent is not None else {}))
    return path


def test_paletted_pngs_are_compared_by_colour_not_by_index(tmp_path):
    """The same picture saved with its palette in another order was compared index by index (10 % flagged);
    palettes are expanded to their colours, so it is the same picture, and equal to its RGB twin."""
    rng = np.random.default_rng(4)
    palette = rng.integers(0, 256, (16, 3))
    index = rng.integers(0, 16, (96, 96))
    order = rng.permutation(16)  # the second file lists colour order[k] at k
    first = paletted_png(tmp_path / "first.png", index, palette)
    second = paletted_png(tmp_path / "second.png", np.argsort(order)[index], palette[order])
    res = detect(first, second, tmp_path / "out", DetectOptions(**LEAN, gsd=1.0))
    assert res.changed_pixels == 0
    rgb = tmp_path / "rgb.png"
    Image.fromarray(palette[index].astype(np.uint8)).save(rgb)
    with open_pair(first, rgb) as pair:
        data, valid = pair.read(sample_tiles(96, 96)[0])
        assert pair.info.count == 3 and valid.all()
        np.testing.assert_array_equal(data[0], data[1])


def test_a_transparent_palette_entry_is_nodata(tmp_path):
    rng = np.random.default_rng(5)
    index = rng.integers(0, 8, (64, 64))
    path = paletted_png(tmp_path / "t.png", index, rng.integers(0, 256, (8, 3)), transparent=3)
    with open_pair(path, path) as pair:
        _, valid = pair.read(sample_tiles(64, 64)[0])
    np.testing.assert_array_equal(valid, index != 3)


def test_size_and_estimate_before_starting_unless_quiet(tmp_path):
    rng = np.random.default_rng(6)
    a, b = (write_tif(tmp_path / f"{n}.tif", rng.integers(0, 255, (3, 64, 64)).astype(np.uint8)) for n in "ab")
    args = ["detect", str(a), str(b), "--model", "cva", "--threshold", "0.5", "--no-preview", "--no-polygons", "-o"]
    r = runner.invoke(app, args + [str(tmp_path / "loud")])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "64x64 px" in lines[0] and "3 band(s)" in lines[0] and "about" in lines[0], lines
    r = runner.invoke(app, args + [str(tmp_path / "quiet"), "-q"])
    assert r.exit_code == 0 and r.stderr == "", r.output


def test_max_pixels_raises_the_limit(tmp_path):
    rng = np.random.default_rng(7)
    a, b = (write_tif(tmp_path / f"{n}.tif", rng.integers(0, 255, (3, 64, 64)).astype(np.uint8)) for n in "ab")
    args = ["detect", str(a), str(b), "--model", "cva", "-q", "--no-preview", "--no-polygons", "-o"]
    r = runner.invoke(app, args + [str(tmp_path / "at"), "--max-pixels", "4096"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "at" / "detect.json").read_text())["options"]["max_pixels"] == 4096
    r = runner.invoke(app, args + [str(tmp_path / "below"), "--max-pixels", "4095"])
    assert r.exit_code == 2 and "--max-pixels 4096" in r.stderr and not (tmp_path / "below").exists()

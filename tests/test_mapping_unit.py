"""The minimum mapping unit: the polygons apply it; the summary says how much of the mask lies in regions that
make it; --mmu-mask applies it to the mask too, so mask, polygons and area count the same pixels."""

import json

import numpy as np
import pyogrio
import pytest
import rasterio
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.inference.mapping_unit import mapping_unit
from tests.conftest import write_tif


@pytest.fixture
def specks(tmp_path):
    """Two large changes and 25 single-pixel specks at 10 m; with --min-area 500 m² (5 pixels) the specks
    fall below the unit."""
    rows, cols = np.mgrid[0:200, 0:200]
    a = np.stack([60 + rows // 4, 60 + cols // 4, 90 + (rows + cols) // 8]).astype("uint8")  # the same twice
    b = a.copy()
    b[:, 20:60, 20:70] = 250
    b[:, 120:150, 100:180] = 250
    for i in range(5):
        for j in range(5):
            b[:, 85 + 6 * i, 85 + 6 * j] = 250
    return write_tif(tmp_path / "a.tif", a), write_tif(tmp_path / "b.tif", b)


def _run(specks, out, *extra):
    r = CliRunner().invoke(app, ["detect", str(specks[0]), str(specks[1]), "-o", str(out), "--model", "cva",
                                 "--threshold", "0.9", "--min-area", "500", "--no-preview", "--no-report", *extra])
    assert r.exit_code == 0, r.output
    return r, json.loads((out / "detect.json").read_text())


def _components(mask: np.ndarray) -> np.ndarray:
    """Pixels per 4-connected changed region of a mask."""
    from scipy import ndimage

    labels, n = ndimage.label(mask == 1)
    return np.bincount(labels.ravel())[1:]


def test_the_summary_tells_mask_and_regions_apart(specks, tmp_path):
    r, summary = _run(specks, tmp_path / "o")
    areas = summary["summary"]
    polygons = pyogrio.read_dataframe(tmp_path / "o" / "changes.gpkg")
    with rasterio.open(tmp_path / "o" / "change_mask.tif") as ds:
        sizes = _components(ds.read(1))
    assert areas["region_pixels"] == polygons.pixels.sum() == sizes[sizes >= 5].sum() > 1000
    assert summary["changed_pixels"] == sizes.sum() and (sizes < 5).sum() >= 20  # the specks stay in the mask
    assert areas["region_area_m2"] == pytest.approx(areas["region_pixels"] * 100, rel=0.01)  # UTM scale
    assert "in regions of the minimum mapping unit" in r.output


def test_mmu_mask_makes_mask_polygons_and_area_agree(specks, tmp_path):
    _, plain = _run(specks, tmp_path / "plain")
    r, summary = _run(specks, tmp_path / "o", "--mmu-mask")
    with rasterio.open(tmp_path / "o" / "change_mask.tif") as ds:
        mask = ds.read(1)
    polygons = pyogrio.read_dataframe(tmp_path / "o" / "changes.gpkg")
    sizes = _components(mask)
    assert (mask == 1).sum() == summary["changed_pixels"] == polygons.pixels.sum()
    assert summary["changed_pixels"] == plain["summary"]["region_pixels"] and sizes.min() >= 5
    assert (mask[20:60, 20:70] == 1).all() and (mask[80:115, 80:115] == 1).sum() == 0
    assert "in regions of the minimum mapping unit" not in r.output


def test_mmu_mask_needs_polygons(specks, tmp_path):
    r = CliRunner().invoke(app, ["detect", str(specks[0]), str(specks[1]), "-o", str(tmp_path / "o"),
                                 "--mmu-mask", "--no-polygons"])
    assert r.exit_code == 2 and "--mmu-mask" in r.output and "--no-polygons" in r.output


def test_the_unit_in_pixels_and_square_metres():
    assert mapping_unit(None, None, 10.0, True) == (4, 20.0)
    assert mapping_unit(None, 500.0, 10.0, True) == (1, 500.0)
    assert mapping_unit(None, 10.0, 0.5, False) == (40, 10.0)  # a PNG pair with --gsd: exact in pixels
    assert mapping_unit(2, None, None, False) == (2, 0.0)

"""--aoi and --exclude: pixels outside the area of interest or inside an exclusion are nodata in every output
and area, on any CRS or grid; --exclude water leaves out what is water on both dates."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import Polygon, box
from typer.testing import CliRunner

from cdtool.cli import app
from tests.conftest import write_tif

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def pisa(shared_data):
    return shared_data / "oscd" / "pisa"


def _triangle(tmp_path, crs="EPSG:3857"):
    """A triangle over part of Pisa (lon/lat corners), written in another CRS."""
    tri = Polygon([(10.37, 43.69), (10.42, 43.69), (10.37, 43.74)])
    frame = gpd.GeoDataFrame(geometry=[tri], crs="EPSG:4326").to_crs(crs)
    frame.to_file(tmp_path / "aoi.gpkg")
    return tmp_path / "aoi.gpkg", tri


def test_aoi_crops_to_its_extent_and_masks_outside(pisa, tmp_path):
    aoi, tri = _triangle(tmp_path)
    r = invoke("detect", pisa / "imgs_1", pisa / "imgs_2", "-o", tmp_path / "o", "--aoi", aoi, "--model", "cva",
               "-q", "--no-preview")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "o" / "change_prob.tif") as p, rasterio.open(tmp_path / "o" / "change_mask.tif") as m:
        left, bottom, right, top = p.bounds
        assert abs(left - 10.37) < 2 * p.res[0] and abs(top - 43.74) < 2 * p.res[1]
        assert abs(right - 10.42) < 2 * p.res[0] and abs(bottom - 43.69) < 2 * p.res[1]
        prob, mask = p.read(1), m.read(1)
        inside = rasterio.features.geometry_mask([tri], prob.shape, p.transform, invert=True)
    assert (prob[~inside] == -1).all() and (mask[~inside] == 255).all()
    assert (prob[inside] >= 0).mean() > 0.99
    summary = json.loads((tmp_path / "o" / "detect.json").read_text())
    assert summary["valid_pixels"] == pytest.approx(inside.sum(), rel=0.01)
    assert summary["changed_pixels"] == int((mask == 1).sum())


def test_exclude_layer_and_raster(pisa, tmp_path):
    aoi, tri = _triangle(tmp_path, crs="EPSG:32632")
    r = invoke("detect", pisa / "imgs_1", pisa / "imgs_2", "-o", tmp_path / "a", "--exclude", aoi,
               "--model", "cva", "-q", "--no-preview", "--no-polygons")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "a" / "change_mask.tif") as m:
        mask, transform = m.read(1), m.transform
        grid = dict(crs=m.crs, transform=m.transform)
    inside = rasterio.features.geometry_mask([tri], mask.shape, transform, invert=True)
    assert (mask[inside] == 255).all() and (mask[~inside] != 255).mean() > 0.99
    # the same exclusion as a 0/1 raster on a coarser UTM grid: warped onto the inputs' grid
    utm = gpd.GeoSeries([tri], crs="EPSG:4326").to_crs("EPSG:32632")
    x0, y0, x1, y1 = utm.total_bounds
    t = rasterio.transform.from_origin(x0 - 500, y1 + 500, 20, 20)
    h, w = int((y1 - y0 + 1000) / 20), int((x1 - x0 + 1000) / 20)
    excl = rasterio.features.rasterize([utm[0]], (h, w), transform=t).astype("uint8")
    write_tif(tmp_path / "excl.tif", excl, crs="EPSG:32632", transform=t)
    r = invoke("detect", pisa / "imgs_1", pisa / "imgs_2", "-o", tmp_path / "b", "--exclude", tmp_path / "excl.tif",
               "--model", "cva", "-q", "--no-preview", "--no-polygons")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "b" / "change_mask.tif") as m:
        raster_mask = m.read(1)
    assert ((raster_mask == 255) == inside).mean() > 0.98  # 20 m cells against 10 m pixels: edges differ
    # painted as 0/255 it excludes the same pixels: read by the one mask rule, not as "1 or nothing"
    write_tif(tmp_path / "excl255.tif", excl * 255, crs="EPSG:32632", transform=t)
    r = invoke("detect", pisa / "imgs_1", pisa / "imgs_2", "-o", tmp_path / "c", "--exclude", tmp_path / "excl255.tif",
               "--model", "cva", "-q", "--no-preview", "--no-polygons")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "c" / "change_mask.tif") as m:
        assert np.array_equal(m.read(1) == 255, raster_mask == 255)


def test_exclude_water_leaves_out_water_on_both_dates(shared_data, tmp_path):
    city = shared_data / "oscd" / "mumbai"
    r = invoke("detect", city / "imgs_1", city / "imgs_2", "-o", tmp_path / "w", "--exclude", "water",
               "--model", "cva", "-q", "--no-preview", "--no-polygons")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "w" / "change_mask.tif") as m:
        mask = m.read(1)
    assert 0.01 < (mask == 255).mean() < 0.1  # Mumbai's creek and ponds in a scene of mangroves and city
    assert (mask[478:483, 395:401] == 255).all()  # the creek
    assert (mask[700:750, 100:150] != 255).all()  # city blocks


@pytest.mark.parametrize("flag, make, words", [
    ("--aoi", lambda d: gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs="EPSG:4326").to_file(d / "x.gpkg"),
     "do not overlap"),
    ("--aoi", lambda d: (d / "x.gpkg").write_text("not a layer"), "cannot read as a polygon layer"),
    ("--aoi", lambda d: gpd.GeoDataFrame(geometry=[box(10.37, 43.7, 10.4, 43.72)]).to_file(d / "x.gpkg"),
     "has no CRS"),
])
def test_bad_areas_are_refused_in_one_line(pisa, tmp_path, flag, make, words):
    make(tmp_path)
    r = invoke("detect", pisa / "imgs_1", pisa / "imgs_2", "-o", tmp_path / "o", flag, tmp_path / "x.gpkg",
               "--model", "cva")
    assert r.exit_code == 2 and words in r.output and "x.gpkg" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_water_needs_named_bands(shared_data, tmp_path):
    name = "test_2_0000_0000.png"
    r = invoke("detect", shared_data / "levir" / "A" / name, shared_data / "levir" / "B" / name,
               "-o", tmp_path / "o", "--exclude", "water")
    assert r.exit_code == 2 and "B03 and B08" in r.output


def test_dst_crs_puts_the_polygons_in_another_crs(pisa, tmp_path):
    args = ["detect", pisa / "imgs_1", pisa / "imgs_2", "--model", "cva", "-q", "--no-preview", "--no-report"]
    assert invoke(*args, "-o", tmp_path / "native").exit_code == 0
    r = invoke(*args, "-o", tmp_path / "merc", "--dst-crs", "EPSG:3857")
    assert r.exit_code == 0, r.output
    native = gpd.read_file(tmp_path / "native" / "changes.gpkg")
    merc = gpd.read_file(tmp_path / "merc" / "changes.gpkg")
    assert merc.crs.to_epsg() == 3857 and len(merc) == len(native) > 10
    np.testing.assert_allclose(merc.area_m2, native.area_m2)  # on the ground: the same
    np.testing.assert_allclose(merc.area, merc.geometry.area)  # in the layer's units
    assert merc.to_crs(native.crs).geometry.iloc[0].equals_exact(native.geometry.iloc[0], 1e-9)
    with rasterio.open(tmp_path / "merc" / "change_prob.tif") as ds:
        assert ds.crs.to_epsg() == 4326  # rasters stay on BEFORE's grid
    bad = invoke(*args, "-o", tmp_path / "bad", "--dst-crs", "EPSG:99999999")
    assert bad.exit_code == 2 and "--dst-crs" in bad.output and len(bad.output.strip().splitlines()) == 1

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from cdtool.io.vectors import Polygonizer


def _polygons(tmp_path, mask, score, band_rows, crs=CRS.from_epsg(32618)):
    path = tmp_path / f"p{band_rows}.gpkg"
    p = Polygonizer(path, crs, Affine(10, 0, 1000, 0, -10, 5000))
    for r in range(0, mask.shape[0], band_rows):
        p.add(r, mask[r:r + band_rows], score[r:r + band_rows])
    n = p.close()
    return n, gpd.read_file(path)


@pytest.mark.parametrize("band_rows", [1, 7, 64])
def test_banded_polygons_equal_whole_image_polygons(tmp_path, band_rows):
    rng = np.random.default_rng(0)
    mask = rng.random((120, 90)) > 0.55  # many regions winding across band boundaries
    score = rng.random(mask.shape).astype(np.float32)
    n_whole, whole = _polygons(tmp_path, mask, score, 120)
    n_band, banded = _polygons(tmp_path, mask, score, band_rows)
    assert n_whole == n_band == len(whole) == len(banded)
    key = ["pixels", "mean_prob", "max_prob", "area"]
    a = whole.sort_values(key)[key].to_numpy()
    b = banded.sort_values(key)[key].to_numpy()
    np.testing.assert_allclose(a, b)
    assert banded.geometry.is_valid.all()
    assert np.isclose(banded["area"].sum(), mask.sum() * 100)
    assert (banded["area"] == banded["area_m2"]).all()


def test_min_pixels_drops_small_regions(tmp_path):
    mask = np.zeros((20, 20), bool)
    mask[1, 1] = True
    mask[5:10, 5:10] = True
    path = tmp_path / "m.gpkg"
    p = Polygonizer(path, None, Affine.identity(), min_pixels=2)
    p.add(0, mask, np.ones((20, 20), np.float32))
    assert p.close() == 1
    assert gpd.read_file(path)["pixels"].tolist() == [25]


def test_geographic_crs_gets_geodesic_area(tmp_path):
    mask = np.ones((10, 10), bool)
    path = tmp_path / "g.gpkg"
    p = Polygonizer(path, CRS.from_epsg(4326), Affine(0.0001, 0, 10, 0, -0.0001, 45))
    p.add(0, mask, np.ones((10, 10), np.float32))
    p.close()
    g = gpd.read_file(path)
    # 0.001° x 0.001° at 45°N is about 111 m x 79 m
    assert 8000 < g["area_m2"][0] < 9500

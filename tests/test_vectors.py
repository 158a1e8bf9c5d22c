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


# -- bounded memory and time whatever the mask (a changed half of a scene, a speckle storm) ----------------------

def _feed(p, mask, score, band_rows):
    for r in range(0, mask.shape[0], band_rows):
        p.add(r, mask[r:r + band_rows], score[r:r + band_rows])
    return p.close()


def _regions(gdf):
    """One row per region: pieces sharing a region_id dissolved, their pixels summed."""
    return gdf.dissolve(by="region_id", aggfunc={"pixels": "sum", "rank": "first", "max_prob": "max"})


def test_large_regions_are_split_with_a_shared_region_id_and_equal_the_whole(tmp_path):
    """Open regions past `held_vertices` are written as pieces split at band boundaries: the pieces of a region
    share its region_id and rank, each row's pixels and area are its piece's, and dissolved by region_id they
    are the whole-image polygons (a U whose arms are split before they join included)."""
    rng = np.random.default_rng(3)
    mask = rng.random((96, 80)) > 0.35  # above percolation: one region winding through every band
    mask[:60, 2:6] = mask[:60, 70:74] = True  # the arms of a U, joined at the bottom
    mask[56:60, 2:74] = True
    score = rng.random(mask.shape).astype(np.float32)
    crs = CRS.from_epsg(32618)
    whole_p = Polygonizer(tmp_path / "w.gpkg", crs, Affine(10, 0, 1000, 0, -10, 5000))
    split_p = Polygonizer(tmp_path / "s.gpkg", crs, Affine(10, 0, 1000, 0, -10, 5000), held_vertices=40)
    n_whole, n_split = _feed(whole_p, mask, score, 96), _feed(split_p, mask, score, 8)
    whole, split = gpd.read_file(tmp_path / "w.gpkg"), gpd.read_file(tmp_path / "s.gpkg")
    assert n_whole == n_split == len(whole) == split["region_id"].nunique() < len(split)
    assert split.geometry.is_valid.all() and (split["area"] == split["pixels"] * 100).all()
    assert (whole["region_id"] == whole["id"]).all()
    assert split.groupby("region_id")["rank"].nunique().max() == 1  # a region's pieces share its rank
    regions = _regions(split)
    assert sorted(regions["pixels"]) == sorted(whole["pixels"])
    for rid, reg in regions.iterrows():
        match = whole[whole.geometry.contains(reg.geometry.representative_point())]
        assert len(match) == 1 and match["pixels"].item() == reg["pixels"]
        assert reg.geometry.symmetric_difference(match.geometry.item()).area < 1e-6
        assert reg["max_prob"] == match["max_prob"].item()
    by_rank = regions.sort_values("rank")
    assert list(by_rank["rank"]) == list(range(1, len(regions) + 1))
    assert by_rank["pixels"].is_monotonic_decreasing
    biggest = split_p.largest_regions()[0]
    assert biggest["pixels"] == whole["pixels"].max() and biggest["id"] == by_rank.index[0]


def test_open_pieces_stay_within_the_vertex_budget(tmp_path):
    """A region spanning the whole height (a changed lower part of a scene) holds no more than the budget
    between bands: its pieces are written as the bands pass, not kept until it closes."""
    rng = np.random.default_rng(4)
    mask = np.zeros((512, 256), bool)
    mask[64:] = rng.random((448, 256)) > 0.3
    score = np.ones(mask.shape, np.float32)
    p = Polygonizer(tmp_path / "b.gpkg", CRS.from_epsg(32618), Affine(10, 0, 1000, 0, -10, 5000), held_vertices=4000)
    held = []
    for r in range(0, 512, 32):
        p.add(r, mask[r:r + 32], score[r:r + 32])
        held.append(sum(reg.vertices for reg in p.regions.values()))
    n = p.close()
    band_vertices = 2 * 32 * 256  # the most one band's pieces of it can have
    assert max(held) <= 4000 + band_vertices, held
    out = gpd.read_file(tmp_path / "b.gpkg")
    assert out["region_id"].nunique() == n and len(out) > n and out["pixels"].sum() <= mask.sum()


def test_speckle_storm_stops_polygons_and_counts_the_regions(tmp_path):
    """Past max_regions nothing more is polygonised: the regions are only counted (exactly, on a projected
    grid), the partial layer is removed, and no region summaries are given (they would be the raster's top)."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    mask = rng.random((300, 200)) > 0.5
    labels, n = ndimage.label(mask)
    expected = int((np.bincount(labels.ravel())[1:] >= 4).sum())  # 4 px, 20 m² (under one 10 m pixel)
    path = tmp_path / "storm.gpkg"
    p = Polygonizer(path, CRS.from_epsg(32618), Affine(10, 0, 1000, 0, -10, 5000), min_pixels=4, min_area_m2=20,
                    max_regions=500)
    assert _feed(p, mask, np.ones(mask.shape, np.float32), 64) == expected > 500
    assert p.overflow and not path.exists() and p.largest_regions() == []
    q = Polygonizer(tmp_path / "all.gpkg", CRS.from_epsg(32618), Affine(10, 0, 1000, 0, -10, 5000), min_pixels=4,
                    min_area_m2=20)
    assert _feed(q, mask, np.ones(mask.shape, np.float32), 64) == expected == len(gpd.read_file(tmp_path / "all.gpkg"))


def test_polygon_writer_keeps_pace_with_a_speckle_storm(tmp_path):
    """Regions per CPU second on independent noise (10,000+ regions): the ranks were set by one unindexed UPDATE
    per row (quadratic: 75 regions/s at 42,000 regions), and one shapely object built per GeoJSON ring."""
    import time

    rng = np.random.default_rng(6)
    mask = rng.random((512, 1024)) > 0.5
    p = Polygonizer(tmp_path / "fast.gpkg", CRS.from_epsg(32618), Affine(10, 0, 1000, 0, -10, 5000), min_pixels=4,
                    min_area_m2=20)
    start = time.process_time()
    n = _feed(p, mask, rng.random(mask.shape).astype(np.float32), 256)
    rate = n / (time.process_time() - start)
    assert n > 10_000 and rate > 2000, (n, rate)
    ranks = gpd.read_file(tmp_path / "fast.gpkg")[["rank", "area"]].sort_values("rank")
    assert list(ranks["rank"]) == list(range(1, n + 1)) and ranks["area"].is_monotonic_decreasing


def test_detect_past_max_regions_writes_the_rasters_and_says_so(tmp_path):
    """detect on independent noise with --max-regions: exit 0, the score map and mask complete, no polygon file
    (an older run's removed with --overwrite), one warning line with the count and the remedies."""
    import json

    import rasterio
    from typer.testing import CliRunner

    from cdtool.cli import app
    from tests.conftest import write_tif

    rng = np.random.default_rng(7)
    before, after = (write_tif(tmp_path / f"{n}.tif", rng.integers(0, 255, (3, 256, 256)).astype(np.uint8))
                     for n in "ab")
    out = tmp_path / "out"
    args = ["detect", str(before), str(after), "--out", str(out), "--no-preview", "-q"]
    r = CliRunner().invoke(app, args + ["--max-regions", "0"])
    assert r.exit_code == 2 and "--max-regions must be at least 1" in r.stderr and not out.exists(), r.output
    assert CliRunner().invoke(app, args + ["--max-regions", "100000"]).exit_code == 0
    assert (out / "changes.gpkg").exists()
    r = CliRunner().invoke(app, args + ["--max-regions", "50", "--overwrite"])
    assert r.exit_code == 0, r.output
    # noise: Otsu flags a third of it, which detect questions in a line of its own
    lines = [line for line in r.stderr.splitlines() if line.strip() and "automatic threshold" not in line]
    summary = json.loads((out / "detect.json").read_text())
    assert len(lines) == 1 and lines[0].startswith("warning: polygons not written"), r.stderr
    assert f"{summary['regions']:,} change regions" in lines[0] and summary["regions"] > 50
    assert all(w in lines[0] for w in ("--min-area", "--clean", "--no-polygons", "--max-regions"))
    assert summary["polygons_skipped"] == lines[0][len("warning: "):]
    assert not (out / "changes.gpkg").exists() and not (out / "changes.qml").exists()
    with rasterio.open(out / "change_mask.tif") as ds:
        assert ds.read(1).mean() > 0.05  # the mask is complete
    assert (out / "change_prob.tif").exists()

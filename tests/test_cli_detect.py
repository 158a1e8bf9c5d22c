"""`cdtool detect` through the CLI on the shared real data, and every kind of bad input."""

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject
from typer.testing import CliRunner

from cdtool.cli import app
from tests.conftest import write_tif

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_oscd_city_from_band_folders(shared_data, tmp_path):
    city = shared_data / "oscd" / "pisa"
    r = invoke("detect", city / "imgs_1", city / "imgs_2", "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "o" / "change_prob.tif") as p, \
            rasterio.open(sorted((city / "imgs_1").glob("*B02.tif"))[0]) as b02:
        assert p.crs == b02.crs and p.transform.almost_equals(b02.transform) and p.shape == b02.shape
    assert (tmp_path / "o" / "changes.gpkg").exists()


def test_levir_png_pair_writes_pngs(shared_data, tmp_path):
    name = "test_2_0000_0000.png"
    r = invoke("detect", shared_data / "levir" / "A" / name, shared_data / "levir" / "B" / name, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "change_prob.png").exists() and (tmp_path / "o" / "change_mask.png").exists()
    assert "changed" in r.output


def _shifted_copy(src_path, dst_path, dx_px=10.5, dy_px=-7.25):
    """RGB.byte.tif resampled onto a grid shifted by a fraction of pixels (same CRS)."""
    with rasterio.open(src_path) as src:
        t = src.transform * Affine.translation(dx_px, dy_px)
        profile = src.profile | {"transform": t}
        with rasterio.open(dst_path, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b), resampling=Resampling.bilinear)
    return dst_path


def _reprojected_copy(src_path, dst_path, crs="EPSG:4326"):
    with rasterio.open(src_path) as src:
        t, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        profile = src.profile | {"crs": crs, "transform": t, "width": w, "height": h}
        with rasterio.open(dst_path, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b), resampling=Resampling.bilinear)
    return dst_path


def test_align_warps_after_onto_before(shared_data, tmp_path):
    rgb = shared_data / "rasterio" / "RGB.byte.tif"
    shifted = _shifted_copy(rgb, tmp_path / "shifted.tif")
    refused = invoke("detect", rgb, shifted, "-o", tmp_path / "refused")
    assert refused.exit_code == 2 and "--align" in refused.output and "origin" in refused.output
    assert not (tmp_path / "refused").exists() or not list((tmp_path / "refused").iterdir())
    r = invoke("detect", rgb, shifted, "-o", tmp_path / "o", "--align", "-q", "--model", "cva")
    assert r.exit_code == 0, r.output
    with rasterio.open(rgb) as b, rasterio.open(tmp_path / "o" / "change_prob.tif") as p:
        assert p.crs == b.crs and p.res == b.res
        # only the common extent is processed, on BEFORE's pixel grid
        assert p.width < b.width and p.height < b.height
        col, row = ~b.transform * (p.transform.c, p.transform.f)
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
        # RGB.byte has nodata 0 around the scene: it must stay nodata in the result
        prob = p.read(1)
        assert (prob == -1).any() and (prob >= 0).any()
    # same scene: the share flagged as changed is small
    import json

    summary = json.loads((tmp_path / "o" / "detect.json").read_text())
    assert summary["changed_share"] < 0.2


def test_align_handles_another_crs(shared_data, tmp_path):
    rgb = shared_data / "rasterio" / "RGB.byte.tif"
    geo = _reprojected_copy(rgb, tmp_path / "geo.tif")
    refused = invoke("detect", rgb, geo, "-o", tmp_path / "x")
    assert refused.exit_code == 2 and "CRS EPSG:32618 vs EPSG:4326" in refused.output
    r = invoke("detect", rgb, geo, "-o", tmp_path / "o", "--align", "-q")
    assert r.exit_code == 0, r.output


# -- bad input -------------------------------------------------------------------------------------------

def _no_outputs(folder):
    return not folder.exists() or not any(folder.iterdir())


def _assert_one_line_error(result, *words):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for w in words:
        assert w in result.output, result.output


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    b = write_tif(tmp_path / "b.tif", rng.integers(0, 255, (3, 64, 64)).astype("uint8"))
    a = write_tif(tmp_path / "a.tif", rng.integers(0, 255, (3, 64, 64)).astype("uint8"))
    return b, a


def test_unreadable_file(pair, tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    r = invoke("detect", pair[0], junk, "-o", tmp_path / "o")
    _assert_one_line_error(r, "junk.tif", "cannot read")
    assert r.exit_code == 2 and _no_outputs(tmp_path / "o")


def test_missing_file(pair, tmp_path):
    r = invoke("detect", pair[0], tmp_path / "nope.tif", "-o", tmp_path / "o")
    _assert_one_line_error(r, "nope.tif", "no such file")


def test_mismatched_crs_without_align(pair, tmp_path):
    rng = np.random.default_rng(1)
    other = write_tif(tmp_path / "utm33.tif", rng.integers(0, 255, (3, 64, 64)).astype("uint8"), crs="EPSG:32633")
    r = invoke("detect", pair[0], other, "-o", tmp_path / "o")
    _assert_one_line_error(r, "utm33.tif", "CRS EPSG:32632 vs EPSG:32633", "--align")
    assert _no_outputs(tmp_path / "o")


def test_no_overlap(pair, tmp_path):
    far = write_tif(tmp_path / "far.tif", np.ones((3, 64, 64), "uint8"),
                    transform=Affine(10, 0, 900000, 0, -10, 5000000))
    r = invoke("detect", pair[0], far, "-o", tmp_path / "o", "--align")
    _assert_one_line_error(r, "far.tif", "does not overlap")
    assert _no_outputs(tmp_path / "o")


def test_different_band_counts(pair, tmp_path):
    four = write_tif(tmp_path / "five.tif", np.ones((5, 64, 64), "uint8"))
    r = invoke("detect", pair[0], four, "-o", tmp_path / "o")
    _assert_one_line_error(r, "five.tif", "5 bands", "--bands")
    ok = invoke("detect", pair[0], four, "-o", tmp_path / "o2", "--bands", "1,2,3", "-q")
    assert ok.exit_code == 0, ok.output


def test_all_nodata_input(pair, tmp_path):
    empty = write_tif(tmp_path / "empty.tif", np.zeros((3, 64, 64), "uint8"), nodata=0)
    r = invoke("detect", pair[0], empty, "-o", tmp_path / "o")
    _assert_one_line_error(r, "no pixel is valid")
    assert _no_outputs(tmp_path / "o")


def test_output_folder_not_writable(pair, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = invoke("detect", *pair, "-o", blocker / "sub")
    _assert_one_line_error(r, "not writable")


def test_existing_outputs_are_not_overwritten(pair, tmp_path):
    out = tmp_path / "o"
    assert invoke("detect", *pair, "-o", out, "-q").exit_code == 0
    before = (out / "change_prob.tif").read_bytes()
    r = invoke("detect", *pair, "-o", out, "--threshold", "0.1")
    _assert_one_line_error(r, "already holds", "--overwrite")
    assert (out / "change_prob.tif").read_bytes() == before
    assert invoke("detect", *pair, "-o", out, "--threshold", "0.1", "--overwrite", "-q").exit_code == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_bad_option_values_are_usage_errors(pair, tmp_path):
    assert invoke("detect", *pair, "--threshold", "high").exit_code == 2
    assert invoke("detect", *pair, "--bands", "x").exit_code == 2
    r = invoke("detect", *pair, "-o", tmp_path / "o", "--tile", "64", "--overlap", "64")
    _assert_one_line_error(r, "--overlap")
    r = invoke("detect", *pair, "-o", tmp_path / "o", "--model", "nonexistent")
    _assert_one_line_error(r, "unknown model")


def test_min_pixels_one_keeps_single_pixel_regions(tmp_path):
    """--min-pixels 1 keeps a one-pixel change that the default (4 pixels) and --min-pixels 4 drop; 1 used to be
    taken for "not set" and raised to 4. detect.json records the minimum that applied."""
    import json

    from PIL import Image

    a = np.full((64, 64, 3), 100, np.uint8)
    b = a.copy()
    b[10, 10] = 250  # one pixel
    b[40:44, 40:44] = 250  # 16 pixels
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    for extra, regions, applied in (([], 1, 4), (["--min-pixels", "4"], 1, 4), (["--min-pixels", "1"], 2, 1)):
        out = tmp_path / f"o{len(extra)}{extra[-1] if extra else ''}"
        r = invoke("detect", tmp_path / "a.png", tmp_path / "b.png", "--model", "cva", "--threshold", "0.5",
                   "-o", out, "--no-preview", "-q", *extra)
        assert r.exit_code == 0, r.output
        summary = json.loads((out / "detect.json").read_text())
        assert summary["changed_pixels"] == 17  # the mask keeps every pixel; only the polygons are filtered
        assert (summary["regions"], summary["summary"]["min_pixels"]) == (regions, applied), extra


def test_stack_command_builds_a_vrt(shared_data, tmp_path):
    r = invoke("stack", tmp_path / "s.vrt", shared_data / "oscd" / "pisa" / "imgs_1")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "s.vrt") as ds:
        assert ds.count == 13 and ds.descriptions[8].endswith("B8A")
        # natural colour in any GIS (bands 1-2-3 shown by default), then the product's order
        assert [d[-3:] for d in ds.descriptions[:5]] == ["B04", "B03", "B02", "B01", "B05"]
        assert [c.name for c in ds.colorinterp[:3]] == ["red", "green", "blue"]


def test_stacked_bands_detect_as_the_band_folders_do(shared_data, tmp_path):
    """The Sentinel-2 model finds its bands by name: the reordered stack gives the folders' scores."""
    city = shared_data / "oscd" / "pisa"
    for d in ("imgs_1", "imgs_2"):
        assert invoke("stack", tmp_path / f"{d}.vrt", city / d).exit_code == 0
    folders = invoke("detect", city / "imgs_1", city / "imgs_2", "-o", tmp_path / "f", "-q", "--no-polygons")
    stacks = invoke("detect", tmp_path / "imgs_1.vrt", tmp_path / "imgs_2.vrt", "-o", tmp_path / "s", "-q",
                    "--no-polygons")
    assert folders.exit_code == 0 and stacks.exit_code == 0, folders.output + stacks.output
    import json

    assert json.loads((tmp_path / "s" / "detect.json").read_text())["model_choice"]["reason"].startswith("sentinel2")
    with rasterio.open(tmp_path / "f" / "change_prob.tif") as f, rasterio.open(tmp_path / "s" / "change_prob.tif") as s:
        np.testing.assert_allclose(s.read(1), f.read(1), atol=1e-5)


def test_gdal_dataset_names_and_subdatasets(shared_data, tmp_path):
    """Inputs GDAL accepts that are not plain paths: a NetCDF with subdatasets is refused with their names,
    one subdataset and a file inside a zip (/vsizip/) are read."""
    import zipfile

    nc = shared_data / "planet_2date" / "PLANET_SCOPE_3D.nc"
    r = runner.invoke(app, ["detect", str(nc), str(nc), "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "subdatasets" in r.output and f"netcdf:{nc}:blue" in r.output
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    r = runner.invoke(app, ["detect", f"netcdf:{nc}:blue", f"netcdf:{nc}:green", "-o", str(tmp_path / "b"), "-q"])
    assert r.exit_code == 0, r.output
    tif = shared_data / "rasterio" / "RGB.byte.tif"
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.write(tif, "RGB.byte.tif")
    r = runner.invoke(app, ["detect", f"/vsizip/{tmp_path}/z.zip/RGB.byte.tif", str(tif), "-o", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["detect", "NETCDF:missing.nc:x", str(tif), "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and "missing.nc" in r.output and "Traceback" not in r.output


def test_gsd_gives_a_png_pair_areas_in_square_metres(shared_data, tmp_path):
    """With --gsd, a pair without georeference has each polygon's area_m2 (pixels x gsd²), the minimum mapping
    unit and the largest regions in m², as a georeferenced pair does."""
    import json

    import pyogrio

    name = "test_2_0000_0000.png"
    r = invoke("detect", shared_data / "levir" / "A" / name, shared_data / "levir" / "B" / name, "-o", tmp_path / "o",
               "--gsd", "0.5", "--model", "cva", "--min-area", "10", "-q")
    assert r.exit_code == 0, r.output
    polygons = pyogrio.read_dataframe(tmp_path / "o" / "changes.gpkg")
    assert len(polygons) > 10 and polygons.area_m2.notna().all()
    np.testing.assert_allclose(polygons.area_m2, polygons.pixels * 0.25)
    assert polygons.pixels.min() >= 40  # 10 m² at 0.5 m
    summary = json.loads((tmp_path / "o" / "detect.json").read_text())["summary"]
    assert summary["min_area_m2"] == 10 and summary["min_pixels"] == 40
    largest = summary["largest_regions"][0]
    assert largest["area_m2"] == largest["pixels"] * 0.25 == polygons.area_m2.max()


def test_geojson_of_a_pair_without_georeference_is_refused(shared_data, tmp_path):
    """GeoJSON coordinates are WGS84 to every reader: pixel coordinates there would land at latitude -640."""
    name = "test_2_0000_0000.png"
    r = invoke("detect", shared_data / "levir" / "A" / name, shared_data / "levir" / "B" / name, "-o", tmp_path / "o",
               "--format", "geojson")
    _assert_one_line_error(r, "test_2_0000_0000.png", "no georeference", "--format gpkg")
    assert r.exit_code == 2 and _no_outputs(tmp_path / "o")


def test_no_polygons_does_not_claim_zero_regions(shared_data, tmp_path):
    name = "test_2_0000_0000.png"
    r = invoke("detect", shared_data / "levir" / "A" / name, shared_data / "levir" / "B" / name, "-o", tmp_path / "o",
               "--model", "cva", "--no-polygons")
    assert r.exit_code == 0, r.output
    assert "regions not counted (--no-polygons)" in r.output and " 0 regions" not in r.output

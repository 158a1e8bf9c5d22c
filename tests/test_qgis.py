"""Real-client check: the detect outputs open in QGIS (Debian's PyQGIS, run as a separate process),
with the right CRS and extent, the .qml styles apply, and a map renders."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import rasterio
from typer.testing import CliRunner

from cdtool.cli import app

QGIS_PYTHON = "/usr/bin/python3"


def _has_pyqgis() -> bool:
    try:
        return subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.qgis
def test_outputs_open_styled_and_render_in_qgis(shared_data, tmp_path):
    if not _has_pyqgis():
        pytest.skip("PyQGIS not installed (apt-get install qgis python3-qgis)")
    src = shared_data / "rasterio" / "RGB.byte.tif"
    from tests.test_cli_detect import _shifted_copy

    after = _shifted_copy(src, tmp_path / "after.tif", dx_px=3.0, dy_px=2.0)
    with rasterio.open(after, "r+") as ds:  # a few "new buildings" so there is change to show
        data = ds.read()
        data[:, 300:340, 300:360] = [[[250]], [[30]], [[30]]]
        data[:, 420:450, 500:520] = [[[20]], [[200]], [[240]]]
        ds.write(data)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["detect", str(src), str(after), "-o", str(out), "--align", "-q", "--model", "cva"])
    assert r.exit_code == 0, r.output
    png = tmp_path / "map.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": ""}
    proc = subprocess.run([QGIS_PYTHON, str(Path(__file__).with_name("qgis_check.py")), str(out), str(png)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with rasterio.open(out / "change_prob.tif") as ds:
        bounds = ds.bounds
        epsg = f"EPSG:{ds.crs.to_epsg()}"
    for key in ("prob", "mask", "polys"):
        layer = report[key]
        assert layer["valid"] and layer["style_loaded"], (key, layer)
        assert layer["crs"] == epsg
    for key in ("prob", "mask"):
        assert report[key]["extent"] == pytest.approx(list(bounds), abs=1e-6)
        assert report[key]["overviews"]
    assert report["prob"]["title"].startswith("out: change score (mask at 0.")  # the run's folder, its threshold
    assert (report["mask"]["title"], report["polys"]["title"]) == ("out: change mask", "out: change regions")
    assert report["prob"]["renderer"] == "singlebandpseudocolor"
    assert report["mask"]["renderer"] == "paletted"
    assert report["polys"]["features"] > 0
    # outlines sized on the ground (0.8 pixel), between 0.15 and 1.1 mm: thin over the whole scene
    with rasterio.open(src) as ds:
        gsd = ds.res[0]
    assert report["polys"]["outline"] == ["RenderMetersInMapUnits", pytest.approx(0.8 * gsd, rel=0.02), 0.15, 1.1]
    assert report["render"]["red_samples"] > 0 and png.stat().st_size > 1000
    import geopandas as gpd

    with rasterio.open(out / "change_mask.tif") as ds:  # every polygon sits over changed pixels of the mask
        mask, inverse = ds.read(1) == 1, ~ds.transform
    for point in gpd.read_file(out / "changes.gpkg").geometry.representative_point():
        col, row = inverse * (point.x, point.y)
        assert mask[int(row), int(col)]


@pytest.mark.qgis
def test_png_pair_polygons_land_on_their_changes_in_qgis(shared_data, tmp_path):
    """A PNG pair (no georeference): QGIS puts the PNGs (with their world files) and the polygons in the same
    place, each polygon over changed mask pixels, and the styles leave the background readable."""
    if not _has_pyqgis():
        pytest.skip("PyQGIS not installed (apt-get install qgis python3-qgis)")
    import geopandas as gpd

    name = "test_2_0000_0000.png"
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["detect", str(shared_data / "levir/A" / name), str(shared_data / "levir/B" / name),
                                 "-o", str(out), "--gsd", "0.5", "-q"])
    assert r.exit_code == 0, r.output
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": ""}
    png = tmp_path / "map.png"
    proc = subprocess.run([QGIS_PYTHON, str(Path(__file__).with_name("qgis_check.py")), str(out), str(png)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("prob", "mask", "polys"):
        assert report[key]["valid"] and report[key]["style_loaded"], (key, report[key])
    assert report["prob"]["extent"] == pytest.approx([0, -256, 256, 0])  # x = column, y = -row
    assert report["mask"]["extent"] == pytest.approx([0, -256, 256, 0])
    x0, y0, x1, y1 = report["polys"]["extent"]
    assert 0 <= x0 < x1 <= 256 and -256 <= y0 < y1 <= 0  # polygons inside the image, not mirrored beside it
    assert report["render"]["yellow_samples"] > 0 and report["render"]["background_share"] > 0.2
    with rasterio.open(out / "change_mask.png") as ds:
        mask = ds.read(1) == 255
    polys = gpd.read_file(out / "changes.gpkg")
    for point in polys.geometry.representative_point():
        assert mask[int(-point.y), int(point.x)]  # every polygon sits over changed pixels

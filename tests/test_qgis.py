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
    assert report["prob"]["renderer"] == "singlebandpseudocolor"
    assert report["mask"]["renderer"] == "paletted"
    assert report["polys"]["features"] > 0
    assert report["render"]["red_samples"] > 0 and png.stat().st_size > 1000

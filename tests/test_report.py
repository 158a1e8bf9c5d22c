"""report.html: the facts, the overview and the largest regions with their crops, in one self-contained file;
acquisition dates from tags or names."""

import base64
import io
import json
import re

import numpy as np
import pytest
import rasterio
from PIL import Image

from cdtool.inference.detect import DetectOptions, detect
from cdtool.io.dates import acquisition_date, date_in, date_in_name
from cdtool.io.pair import open_pair
from cdtool.io.report import CROP
from tests.conftest import write_tif


@pytest.mark.parametrize("text, date", [
    ("S2A_MSIL1C_20170105T013442_N0204_R031_T53NMJ_20170105T013443", "2017-01-05"),
    ("LC08_L1TP_120038_20190512_20190521_01_T1", "2019-05-12"), ("site_2021-03-04.tif", "2021-03-04"),
    ("test_2_0000_0000.png", None), ("id_202113_x", None), ("99920160706", None), ("20161306", None)])
def test_dates_in_names(text, date):
    assert date_in(text) == date


def test_processing_dates_are_not_acquisition_dates():
    """Older Sentinel-2 tile names carry when the tile was processed (pisa's imgs_1: 2016-08-09, imaged
    2015-07-04)."""
    assert date_in_name("S2A_OPER_MSI_L1C_TL_SGS__20160809T163127_A005603_T32TPP_B04.tif") is None
    assert date_in_name("/data/LC08_L1TP_120038_20190512_20190521_01_T1_B4.TIF") == "2019-05-12"


def test_band_folder_dates_come_from_dates_txt(shared_data, tmp_path):
    city = shared_data / "oscd" / "pisa"
    with open_pair(city / "imgs_1", city / "imgs_2") as pair:
        assert acquisition_date(pair.before, str(city / "imgs_1")) == "2015-07-04"
        assert acquisition_date(pair.after, str(city / "imgs_2")) == "2018-02-11"
    (tmp_path / "dates.txt").write_text("# site\nspring.tif: 2021-04-01\nautumn: 20211002\n")
    for name, date in (("spring.tif", "2021-04-01"), ("autumn.tif", "2021-10-02"), ("winter.tif", None)):
        write_tif(tmp_path / name, np.zeros((1, 4, 4), "uint8"))
        with rasterio.open(tmp_path / name) as ds:
            assert acquisition_date(ds, str(tmp_path / name)) == date


def _images(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def test_report_of_a_sentinel2_city(shared_data, tmp_path):
    city = shared_data / "oscd" / "pisa"
    result = detect(city / "imgs_1", city / "imgs_2", tmp_path / "o", DetectOptions(progress=False))
    summary = json.loads((tmp_path / "o" / "detect.json").read_text())
    assert result.outputs["report.html"] == tmp_path / "o" / "report.html"
    text = (tmp_path / "o" / "report.html").read_text()
    lat_lon = summary["crs"] == "EPSG:4326"
    assert "pisa/imgs_1 and pisa/imgs_2" in text and "2015-07-04" in text and "2018-02-11" in text
    assert f"{summary['threshold']:.4f}" in text and f"{100 * result.changed_share:.2f} %" in text
    regions = summary["summary"]["largest_regions"]
    assert len(regions) == 5 and text.count("<td class='crops'>") == 5
    images = _images(text)
    assert len(images) == 1 + 3 * 5  # the preview, then before, after and score per region
    assert all(im.size == (CROP, CROP) for im in images[1:])
    # the largest region's score crop is bright in its middle (the region lies there), the crops differ
    score = np.asarray(images[3].convert("L"), np.float32)
    assert score[CROP // 2 - 8:CROP // 2 + 8, CROP // 2 - 8:CROP // 2 + 8].mean() > score.mean()
    assert not np.array_equal(np.asarray(images[1]), np.asarray(images[2]))
    top = regions[0]
    assert lat_lon and f"{top['y']:.5f}, {top['x']:.5f}" in text  # EPSG:4326: y is the latitude
    assert "src='http" not in text and "href=" not in text  # nothing to fetch: it travels as one file

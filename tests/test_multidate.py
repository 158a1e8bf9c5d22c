"""More than two dates: consecutive pairs in time order, and when each place first changed."""

import numpy as np
import pyogrio
import pytest
import rasterio

from cdtool.errors import InputError
from cdtool.inference.detect import DetectOptions
from cdtool.multidate import NEVER, detect_series, order_dates
from tests.conftest import write_tif


@pytest.fixture
def three_dates(tmp_path):
    """A scene where square A appears between the first two dates and square B between the last two; the files
    are named with their dates and given out of order."""
    rng = np.random.default_rng(0)
    d1 = rng.integers(40, 120, (3, 96, 96)).astype("uint8")
    d2 = d1.copy()
    d2[:, 10:30, 10:30] = 250
    d3 = d2.copy()
    d3[:, 60:85, 50:80] = 250
    paths = [write_tif(tmp_path / f"site_{d}.tif", a) for d, a in (("20190301", d1), ("20200301", d2),
                                                                   ("20210301", d3))]
    return [paths[2], paths[0], paths[1]]


def test_first_change_says_between_which_dates(three_dates, tmp_path):
    lines = []
    opts = DetectOptions(model="cva", threshold=0.5, progress=False, preview=False)
    series = detect_series(three_dates, tmp_path / "out", opts, announce=lines.append)
    assert series.ordered_by == "dates" and series.dates == ["2019-03-01", "2020-03-01", "2021-03-01"]
    assert [f.name for f in series.folders] == ["01_2019-03-01_2020-03-01", "02_2020-03-01_2021-03-01"]
    assert series.changed_share[0] == pytest.approx(400 / 96 ** 2, rel=0.15)
    with rasterio.open(series.outputs["first_change.tif"]) as ds:
        first = ds.read(1)
        assert ds.crs.to_epsg() == 32632 and ds.nodata == 255
    assert (first[12:28, 12:28] == 1).all() and (first[62:83, 52:78] == 2).all()
    assert (first[40:55, 5:45] == NEVER).all()
    assert np.isin(first, (0, 1, 2)).all()
    regions = pyogrio.read_dataframe(series.outputs["first_change.gpkg"])
    assert sorted(regions["first_changed"]) == ["2019-03-01 → 2020-03-01", "2020-03-01 → 2021-03-01"]
    big = regions.sort_values("pixels").iloc[-1]
    assert big["interval"] == 2 and abs(big["pixels"] - 25 * 30) < 80
    assert "2019-03-01 → 2020-03-01" in series.outputs["first_change.qml"].read_text()
    with pytest.raises(InputError, match="already exists"):
        detect_series(three_dates, tmp_path / "out", opts, announce=lines.append)


def test_dates_unknown_keep_the_order_given(tmp_path):
    rng = np.random.default_rng(1)
    paths = [write_tif(tmp_path / f"{n}.tif", rng.integers(0, 255, (3, 8, 8)).astype("uint8")) for n in "zab"]
    series = order_dates([str(p) for p in paths])
    assert series.ordered_by == "as given" and series.inputs == [str(p) for p in paths]
    with pytest.raises(InputError, match="given twice"):
        order_dates([str(paths[0]), str(paths[1]), str(paths[0])])
    with pytest.raises(InputError, match="at least two"):
        order_dates([str(paths[0])])


def test_three_dates_on_the_command_line(three_dates, tmp_path):
    from typer.testing import CliRunner

    from cdtool.cli import app

    r = CliRunner().invoke(app, ["detect", *map(str, three_dates), "-o", str(tmp_path / "o"), "--model", "cva",
                                 "--threshold", "0.5", "--no-preview"])
    assert r.exit_code == 0, r.output
    assert "2019-03-01 → 2020-03-01: 4." in r.output and "first_change.tif" in r.output
    with rasterio.open(tmp_path / "o" / "first_change.tif") as ds:
        assert set(np.unique(ds.read(1))) == {0, 1, 2}

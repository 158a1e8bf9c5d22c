"""Many pairs in one run: a pairs table or a folder of pair folders, one output folder per pair, a failed pair
reported and skipped, --resume per pair, and one summary table with footprints."""

import csv
import json

import geopandas as gpd
import numpy as np
import pytest

from cdtool.batch import detect_pairs, read_pairs
from cdtool.errors import InputError
from cdtool.inference.detect import DetectOptions
from tests.conftest import write_tif


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (3, 64, 64)).astype("uint8")
    changed = base.copy()
    changed[:, 20:40, 20:40] = 255
    data = tmp_path / "data"
    data.mkdir()
    write_tif(data / "b.tif", base)
    write_tif(data / "a.tif", changed)
    table = tmp_path / "pairs.csv"
    table.write_text("before,after,name\n"
                     "data/b.tif,data/a.tif,site1\n"
                     "data/b.tif,data/missing.tif,broken\n"
                     "data/a.tif,data/a.tif,same\n")
    return table


def _rows(path):
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_a_batch_runs_every_pair_and_reports_the_failed_one(pairs, tmp_path):
    lines = []
    opts = DetectOptions(model="cva", threshold=0.5, progress=False)
    result = detect_pairs(read_pairs(pairs), tmp_path / "out", opts, announce=lines.append)
    assert [r["status"] for r in result.rows] == ["done", "failed", "done"]
    assert "missing.tif" in result.rows[1]["message"] and len(lines) == 3
    rows = _rows(tmp_path / "out" / "summary.csv")
    site = json.loads((tmp_path / "out" / "site1" / "detect.json").read_text())
    assert float(rows["site1"]["changed_share"]) == pytest.approx(site["changed_share"])
    assert site["changed_share"] > 0.05 and float(rows["same"]["changed_share"]) == 0.0
    assert not (tmp_path / "out" / "broken").exists() or not any((tmp_path / "out" / "broken").iterdir())
    footprints = gpd.read_file(result.summary_gpkg)
    assert list(footprints["name"]) == ["site1", "broken", "same"]
    assert footprints.geometry[1] is None and footprints.crs.to_epsg() == 4326
    # write_tif's grid: UTM 32N at (600 000 + 320, 5 000 000 - 320), about 10.3° E, 45.1° N
    centre = footprints.geometry[0].centroid
    assert 10.2 < centre.x < 10.4 and 45.0 < centre.y < 45.2
    again = detect_pairs(read_pairs(pairs), tmp_path / "out", DetectOptions(model="cva", threshold=0.5, resume=True),
                         announce=lines.append)
    assert [r["status"] for r in again.rows] == ["done before", "failed", "done before"]
    assert float(_rows(tmp_path / "out" / "summary.csv")["site1"]["changed_share"]) == pytest.approx(
        site["changed_share"])


def test_a_folder_of_pair_folders(tmp_path):
    rng = np.random.default_rng(1)
    for name, (first, second) in {"x": ("before.tif", "after.tif"),
                                  "y": ("S2_20190101_scene.tif", "S2_20180101_scene.tif")}.items():
        (tmp_path / "pairs" / name).mkdir(parents=True)
        for f in (first, second):
            write_tif(tmp_path / "pairs" / name / f, rng.integers(0, 255, (3, 16, 16)).astype("uint8"))
    jobs = read_pairs(tmp_path / "pairs")
    assert [j.name for j in jobs] == ["x", "y"]
    assert jobs[0].before.endswith("before.tif") and jobs[1].before.endswith("S2_20180101_scene.tif")


@pytest.mark.parametrize("text, words", [
    ("first,second\na.tif,b.tif\n", "lacks the column(s) after, before"),
    ("before,after,name\na.tif,b.tif,../up\n", "not a plain folder name"),
    ("before,after,name\na.tif,b.tif,x\nc.tif,d.tif,X\n", "two pairs are named"),
    ("before,after\n", "has no rows"), ("before,after\na.tif,\n", "line 2 lacks")])
def test_bad_tables_are_refused_in_one_line(tmp_path, text, words):
    table = tmp_path / "t.csv"
    table.write_text(text)
    with pytest.raises(InputError, match="t.csv") as err:
        read_pairs(table)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_pairs_on_the_command_line_exit_1_when_one_failed(pairs, tmp_path):
    from typer.testing import CliRunner

    from cdtool.cli import app

    r = CliRunner().invoke(app, ["detect", "--pairs", str(pairs), "-o", str(tmp_path / "o"), "--model", "cva",
                                 "--threshold", "0.5", "--no-preview"])
    assert r.exit_code == 1, r.output
    assert "2 of 3 pairs done" in r.output and "failed: broken" in r.output and "missing.tif" in r.output
    assert (tmp_path / "o" / "site1" / "change_prob.tif").exists() and (tmp_path / "o" / "summary.csv").exists()

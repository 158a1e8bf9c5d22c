"""`cdtool evaluate` on prediction files reads them in windows: the scores equal whole files', memory stays
bounded whatever the size, and a file that cannot be read so is refused in one line from its header."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from PIL import Image
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.engine import evaluate as ev
from cdtool.inference.threshold import ScoreHistogram
from cdtool.metrics import BinaryMetrics
from tests.conftest import write_tif

runner = CliRunner()


def _whole(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, threshold) -> dict:
    """The metrics of whole arrays, as evaluate computed them before it read windows."""
    ok = np.isfinite(pred)
    s = np.nan_to_num(pred)
    if isinstance(threshold, str):
        hist = ScoreHistogram(ev.HIST_BINS)
        hist.add(s[ok])
        threshold = hist.pick(threshold)
    return BinaryMetrics(bins=ev.HIST_BINS).update(s >= threshold, truth, valid, s).compute()


@pytest.mark.parametrize("threshold", [0.5, "otsu"])
def test_windows_score_like_whole_files(tmp_path, monkeypatch, threshold):
    """Scores with NaN and nodata against a 0/1/255 truth in windows of at most 1,000 pixels (16 x 48: runs of
    the truth's 16 x 16 blocks): every number equals the whole arrays', the grey-level reading (scores x 255, a
    PNG of one-row blocks) included."""
    monkeypatch.setattr(ev, "EVAL_PIXELS", 1000)
    rng = np.random.default_rng(0)
    truth = (rng.random((200, 300)) > 0.7).astype(np.uint8)
    truth[:10] = 255
    scores = np.clip(truth * 0.4 + rng.random(truth.shape) * 0.6, 0, 1).astype(np.float32)
    scores[50:60, 100:120] = np.nan
    scores[0:5, 0:5] = -9
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", width=300, height=200, count=1, dtype="float32",
                       nodata=-9, tiled=True, blockxsize=16, blockysize=16) as ds:
        ds.write(scores, 1)
    with rasterio.open(tmp_path / "t.tif", "w", driver="GTiff", width=300, height=200, count=1, dtype="uint8",
                       tiled=True, blockxsize=16, blockysize=16) as ds:
        ds.write(truth, 1)
    with rasterio.open(tmp_path / "t.tif") as ds:
        assert {(w.height, w.width) for w in ev.windows(ds, 1000)} >= {(16, 48)}
    grey = np.round(np.nan_to_num(scores, nan=0) * 255).clip(0, 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    valid, changed = truth != 255, truth == 1
    read_scores = np.where(scores == -9, np.nan, scores).astype(np.float64)
    for pred, expect in ((tmp_path / "s.tif", read_scores), (tmp_path / "g.png", grey / 255.0)):
        total, rows = ev.evaluate_files(pred, tmp_path / "t.tif", threshold)
        want = _whole(expect, changed, valid, threshold)
        assert total == want and rows[0] == {"name": pred.name, **want}, pred


def _huge(path, tile: bool) -> str:
    """A TIFF of a few hundred bytes claiming 10^6 x 10^6 pixels (sparse: no block is stored)."""
    layout = dict(tiled=True, blockxsize=10**6, blockysize=10**6) if tile else dict(blockysize=10**6)
    with rasterio.open(path, "w", driver="GTiff", width=10**6, height=10**6, count=1, dtype="uint8",
                       sparse_ok=True, **layout):
        pass
    assert path.stat().st_size < 400
    return str(path)


def _one_error_line(args: list) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.timeout(60)
def test_a_huge_claimed_raster_is_refused_in_one_line(tmp_path):
    """A 300-byte TIFF claiming 10^6 x 10^6 pixels: as one block, refused (GDAL would decode 931 GiB); in rows,
    refused past the pixel limit (10^10, as detect's) with the option that raises it; beside a normal file,
    the sizes are compared from the headers. Nothing is read (it ended in an unexpected MemoryError)."""
    small = write_tif(tmp_path / "small.tif", np.zeros((64, 64), np.uint8))
    tile, rows = _huge(tmp_path / "tile.tif", True), _huge(tmp_path / "rows.tif", False)
    line = _one_error_line(["evaluate", small, tile])
    assert "tile.tif" in line and "blocks of 1000000x1000000" in line and "TILED=YES" in line
    line = _one_error_line(["evaluate", rows, rows])
    assert "rows.tif" in line and "1,000,000,000,000" in line and "--max-pixels 1000000000000" in line
    line = _one_error_line(["evaluate", small, rows, "--max-pixels", str(10**12)])
    assert "small.tif: is 64x64" in line and "1000000x1000000" in line
    line = _one_error_line(["evaluate", small, small, "--max-pixels", "100"])
    assert "--max-pixels 4096" in line


CHILD = """
import json, resource, sys
from cdtool.engine.evaluate import evaluate_files
total, _ = evaluate_files(sys.argv[1], sys.argv[2], "otsu")
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "f1": total["f1"]}))
"""


def _peak(pred, truth) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(pred), str(truth)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tiled(path, height, width, fill) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype=fill(0, 1, 1).dtype,
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate") as ds:
        for r in range(0, height, 1024):
            ds.write(fill(r, min(1024, height - r), width), 1, window=((r, r + min(1024, height - r)), (0, width)))


def _truth(r, h, w):
    return ((np.arange(r, r + h)[:, None] // 64 + np.arange(w)[None] // 64) % 2).astype(np.uint8)


def _scores(r, h, w):
    return (_truth(r, h, w) * 0.5 + 0.25).astype(np.float32)


def test_arrays_stay_the_size_of_a_window(tmp_path):
    """The arrays evaluate allocates (traced) peak under 48 MiB for 4 Mpx of float32 scores with Otsu's threshold,
    whose whole-file float64 copies alone took 32 MiB each (188 MiB at the peak)."""
    import tracemalloc

    _tiled(tmp_path / "t.tif", 2048, 2048, _truth)
    _tiled(tmp_path / "s.tif", 2048, 2048, _scores)
    tracemalloc.start()
    try:
        total, _ = ev.evaluate_files(tmp_path / "s.tif", tmp_path / "t.tif", "otsu")
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert total["f1"] == total["auroc"] == 1.0
    assert peak < 48, peak


@pytest.mark.slow
def test_memory_does_not_follow_the_files_size(tmp_path):
    """Scores and truth of 16 Mpx evaluated with Otsu's threshold peak (RSS, a fresh process each) within 100 MiB
    of 0.25 Mpx files (whole files: +734 MiB)."""
    for name, size in (("small", 512), ("large", 4096)):
        _tiled(tmp_path / f"{name}_t.tif", size, size, _truth)
        _tiled(tmp_path / f"{name}_s.tif", size, size, _scores)
    small = _peak(tmp_path / "small_s.tif", tmp_path / "small_t.tif")
    large = _peak(tmp_path / "large_s.tif", tmp_path / "large_t.tif")
    assert small["f1"] == large["f1"] == 1.0
    assert large["peak"] < small["peak"] + 100, (small, large)

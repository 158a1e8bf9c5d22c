"""Fault injection: `cdtool train`, `tile` and `detect` run in subprocesses that are killed (SIGKILL) at seeded
random moments, then run again; the result must equal an uninterrupted run, with nothing left behind and
nothing of the user's lost. Slow (real subprocesses); CI runs it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from safetensors.torch import load_file

from engine_fixtures import make_pair_folder, tiny_recipe
from tests.conftest import write_tif

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "cdtool.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def _killed(args, cwd, after: float) -> None:
    """Start a command and kill -9 it `after` seconds in (it may have finished by then)."""
    proc = subprocess.Popen(CLI + args, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def _durations(args, cwd) -> float:
    t0 = time.time()
    r = _run(args, cwd)
    assert r.returncode == 0, r.stderr
    return time.time() - t0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_killed_anywhere_resumes_to_the_same_weights(tmp_path, seed):
    pairs = make_pair_folder(tmp_path / "pairs", n=4, size=48)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(pairs, **{"schedule.epochs": 6,
                                                           "data.train.pairs.args.samples": 24})))
    whole = _durations(["train", str(recipe), "-o", str(tmp_path / "whole"), "--quiet"], tmp_path)
    run = tmp_path / "killed"
    rng = np.random.default_rng(seed)
    _killed(["train", str(recipe), "-o", str(run), "--quiet"], tmp_path, float(rng.uniform(0.3, 0.9)) * whole)
    for _ in range(3):  # resume (or start again when the kill came before the first save), maybe killed again
        args = ["train", "--resume", str(run), "--quiet"] if (run / "last.json").exists() else \
            ["train", str(recipe), "-o", str(run), "--quiet"]
        r = _run(args, tmp_path)
        if r.returncode == 0 or "already trained" in r.stderr:
            break
        assert "Traceback" not in r.stderr, r.stderr
    a, b = load_file(str(tmp_path / "whole" / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (run / ".cdtool.lock").exists()


def _scene(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    a = (rng.random((3, 600, 700)) * 200).astype(np.uint8)
    b = a.copy()
    b[:, 200:320, 300:420] = 250
    return write_tif(tmp_path / "a.tif", a), write_tif(tmp_path / "b.tif", b)


@pytest.mark.parametrize("seed", [0, 1])
def test_detect_killed_anywhere_leaves_nothing_and_reruns_equal(tmp_path, seed):
    before, after = _scene(tmp_path)
    mine = tmp_path / "killed" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("the user's own file")
    args = [str(before), str(after), "--tile", "128", "--overlap", "16", "--quiet", "--no-preview"]
    whole = _durations(["detect", *args, "-o", str(tmp_path / "whole")], tmp_path)
    _killed(["detect", *args, "-o", str(mine.parent)], tmp_path,
            float(np.random.default_rng(seed).uniform(0.2, 0.8)) * whole)
    r = _run(["detect", *args, "-o", str(mine.parent), "--overwrite"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert mine.read_text() == "the user's own file"
    left = [p.name for p in mine.parent.iterdir() if p.name.startswith(".")]
    assert left == [], left  # no partial files, work folders or lock
    for name in ("change_prob.tif", "change_mask.tif"):
        with rasterio.open(tmp_path / "whole" / name) as x, rasterio.open(mine.parent / name) as y:
            assert np.array_equal(x.read(), y.read()), name


@pytest.mark.parametrize("seed", [0, 1])
def test_detect_killed_anywhere_resumes_to_the_same_outputs(tmp_path, seed):
    before, after = _scene(tmp_path)
    args = [str(before), str(after), "--tile", "128", "--overlap", "16", "--quiet", "--no-preview"]
    whole = _durations(["detect", *args, "-o", str(tmp_path / "whole")], tmp_path)
    _killed(["detect", *args, "-o", str(tmp_path / "killed")], tmp_path,
            float(np.random.default_rng(seed + 10).uniform(0.4, 0.9)) * whole)
    r = _run(["detect", *args, "-o", str(tmp_path / "killed"), "--resume"], tmp_path)
    # a kill after the end leaves a complete run: "nothing to resume", exit 0 ("already holds" only for a kill
    # between the outputs' rename and the journal's removal)
    assert r.returncode == 0 or "already holds" in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "killed").iterdir() if p.name.startswith(".")) == []
    for name in ("change_prob.tif", "change_mask.tif"):
        with rasterio.open(tmp_path / "whole" / name) as x, rasterio.open(tmp_path / "killed" / name) as y:
            assert np.array_equal(x.read(), y.read()), name
    import geopandas as gpd

    a, b = gpd.read_file(tmp_path / "whole" / "changes.gpkg"), gpd.read_file(tmp_path / "killed" / "changes.gpkg")
    assert len(a) == len(b) and a.geometry.area.sum() == pytest.approx(b.geometry.area.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_tile_killed_anywhere_resumes_to_the_same_dataset(tmp_path, seed):
    before, after = _scene(tmp_path)
    mask = write_tif(tmp_path / "m.tif", np.zeros((600, 700), np.uint8))
    args = [str(before), str(after), "--mask", str(mask), "--size", "64", "--stride", "32", "--quiet"]
    whole = _durations(["tile", *args, "-o", str(tmp_path / "whole")], tmp_path)
    _killed(["tile", *args, "-o", str(tmp_path / "killed")], tmp_path,
            float(np.random.default_rng(seed).uniform(0.2, 0.8)) * whole)
    r = _run(["tile", *args, "-o", str(tmp_path / "killed")], tmp_path)
    assert r.returncode == 0, r.stderr
    from cdtool.data.chips import ChipDataset

    x, y = ChipDataset(str(tmp_path / "whole")), ChipDataset(str(tmp_path / "killed"))
    assert len(x) == len(y)
    for i in range(0, len(x), max(1, len(x) // 20)):
        assert torch.equal(x[i]["image"], y[i]["image"])

"""cdtool patches through the CLI on the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cdtool.cli import app

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
runner = CliRunner()
needs = lambda name: pytest.mark.skipif(not (SHARED / name).is_dir(), reason=f"../shared/data/{name} not present")


@needs("levir")
def test_pcd_with_max_positives(tmp_path):
    r = runner.invoke(app, ["patches", "pcd", str(SHARED / "levir"), "--stride", "14", "--max-positives", "3",
                            "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "train: label 0:" in r.output and "label 1: 3" in r.output.split("train:")[1].splitlines()[0]
    r = runner.invoke(app, ["patches", "pcd", str(SHARED / "levir"), "--stride", "28", "--max-positives", "500",
                            "--out", str(tmp_path / "q")])
    assert r.exit_code == 0 and "train split holds only" in r.output


@needs("footprints_neudorf")
def test_footprints_neudorf(tmp_path):
    d = SHARED / "footprints_neudorf"
    r = runner.invoke(app, ["patches", "footprints", str(d / "neudorf_2012.shp"), str(d / "neudorf_2022.shp"),
                            "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert "new 30" in r.output and "split 31" in r.output and "unchanged 16" in r.output
    assert (tmp_path / "f" / "footprint_changes.qml").exists() and (tmp_path / "f" / "change_mask.tif").exists()


@needs("levir")
def test_synthetic_and_bad_protocol(tmp_path):
    r = runner.invoke(app, ["patches", "synthetic", str(SHARED / "levir" / "A"), "--objects",
                            str(SHARED / "levir"), "--samples", "3", "--size", "64", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0 and "3 synthetic samples" in r.output, r.output
    # every pair a no-change pair with zero flow, cut with context: the options reach the generator
    r = runner.invoke(app, ["patches", "synthetic", str(SHARED / "levir" / "A"), "--objects",
                            str(SHARED / "levir"), "--samples", "3", "--size", "32", "--still", "1", "--margin", "8",
                            "--max-shift", "2", "--out", str(tmp_path / "still")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "still" / "dataset.json").read_text())["params"]
    assert (meta["still"], meta["margin"], meta["max_shift"]) == (1, 8, 2), meta
    for flow in (tmp_path / "still" / "shards").glob("*.flow.npy"):
        assert not np.load(flow).any()
    r = runner.invoke(app, ["patches", "nope", str(SHARED / "levir"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "No such command 'nope'" in r.output and not (tmp_path / "x").exists()
    # each protocol takes only its own options: a footprints option is unknown to pcd
    r = runner.invoke(app, ["patches", "pcd", str(SHARED / "levir"), "--min-iou", "0.3", "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "No such option: --min-iou" in r.output and not (tmp_path / "z").exists()
    r = runner.invoke(app, ["patches", "footprints", str(tmp_path / "missing.gpkg"), str(tmp_path / "m2.gpkg"),
                            "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "missing.gpkg: no such file" in r.output

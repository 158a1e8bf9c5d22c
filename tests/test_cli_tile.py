"""cdtool tile through the CLI: real LEVIR folder, re-run, bad input and exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cdtool.cli import app

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
runner = CliRunner()


@pytest.mark.skipif(not (SHARED / "dsifn").is_dir(), reason="../shared/data/dsifn not present")
def test_tile_folder_then_rerun(tmp_path):
    args = ["tile", str(SHARED / "dsifn"), "--size", "128", "--out", str(tmp_path / "t")]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "40 tiles from 10 pair(s) (done)" in r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "already complete" in r.output
    r = runner.invoke(app, args[:-2] + ["--stride", "64", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "other settings" in r.output and "--overwrite" in r.output


def test_tile_refuses_foreign_folder_and_missing_files(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["tile", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--size", "16",
                            "--out", str(tmp_path / "busy")])
    assert r.exit_code == 2 and "not empty" in r.output and (tmp_path / "busy" / "notes.txt").exists()
    r = runner.invoke(app, ["tile", str(tmp_path / "a.png"), str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "nope.png: no such file" in r.output and not (tmp_path / "o").exists()

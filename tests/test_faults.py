"""Bad options and hostile inputs get one line and exit 2, never a traceback or a silent wrong result."""

import os

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from cdtool.cli import app
from tests.conftest import write_tif

runner = CliRunner()


def _fails_cleanly(args, needle, code=2):
    r = runner.invoke(app, args)
    assert r.exit_code == code, r.output
    assert needle in r.output and "Traceback" not in r.output, r.output
    return r


def test_bad_options_are_refused(small_pair, tmp_path):
    before, after, truth = small_pair
    _fails_cleanly(["detect", str(before), str(after), "-o", str(tmp_path / "a"), "--threshold", "7"], "--threshold")
    _fails_cleanly(["detect", str(before), str(after), "-o", str(tmp_path / "b"), "--device", "tpu"], "--device")
    _fails_cleanly(["evaluate", str(before), str(truth), "--threshold", "-1"], "--threshold")
    _fails_cleanly(["stack", str(tmp_path / "s.vrt"), str(before), "--resampling", "bogus"], "--resampling")
    _fails_cleanly(["stack", str(tmp_path / "missing" / "s.vrt"), str(before)], "no such folder")


def test_evaluate_refuses_scores_it_cannot_read_and_keeps_an_existing_json(tmp_path):
    truth = write_tif(tmp_path / "t.tif", (np.arange(64 * 64).reshape(64, 64) % 2).astype(np.uint8))
    odd = write_tif(tmp_path / "p.tif", np.linspace(-3, 7.5, 64 * 64, dtype=np.float32).reshape(64, 64))
    _fails_cleanly(["evaluate", str(odd), str(truth)], "neither scores in [0, 1]")
    (tmp_path / "s.json").write_text("mine")
    _fails_cleanly(["evaluate", str(truth), str(truth), "--json", str(tmp_path / "s.json")], "already exists")
    assert (tmp_path / "s.json").read_text() == "mine"
    r = runner.invoke(app, ["evaluate", str(truth), str(truth), "--json", str(tmp_path / "s.json"), "--overwrite"])
    assert r.exit_code == 0 and (tmp_path / "s.json").read_text().startswith("{")


def test_stack_refuses_bands_that_do_not_overlap(tmp_path):
    from affine import Affine

    a = write_tif(tmp_path / "a.tif", np.ones((16, 16), np.uint8))
    b = write_tif(tmp_path / "b.tif", np.ones((16, 16), np.uint8), transform=Affine(10, 0, 900000, 0, -10, 5000000))
    _fails_cleanly(["stack", str(tmp_path / "s.vrt"), str(a), str(b)], "does not overlap")
    assert not (tmp_path / "s.vrt").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_named_pipe_input_is_refused_not_waited_on(small_pair, tmp_path):
    before, _, _ = small_pair
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    _fails_cleanly(["detect", str(before), str(fifo), "-o", str(tmp_path / "o")], "not a regular file")


def test_output_folder_is_locked_and_a_killed_runs_leftovers_are_cleaned(small_pair, tmp_path):
    from cdtool.errors import InputError
    from cdtool.inference.detect import DetectOptions, detect

    before, after, _ = small_pair
    out = tmp_path / "out"
    out.mkdir()
    (out / ".cdtool.lock").write_text(f"{os.getppid()}\n")  # another live process holds the folder
    with pytest.raises(InputError, match="another cdtool run"):
        detect(before, after, out, DetectOptions(model="cva"))
    # a killed run: its process is gone, its partial files and work folder are still there
    (out / ".cdtool.lock").write_text("999999999\n")
    (out / ".change_prob.partial-deadbeef.tif").write_bytes(b"half")
    (out / ".cdtool-work-x").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    detect(before, after, out, DetectOptions(model="cva"))
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [] and (out / "notes.txt").read_text() == "the user's own file"
    _fails_cleanly(["detect", str(before), str(after), "-o", str(out / "notes.txt")], "is a file")


def test_tile_overwrite_removes_only_what_cdtool_wrote(small_pair, tmp_path):
    before, after, truth = small_pair
    out = tmp_path / "tiles"
    args = ["tile", str(before), str(after), "--mask", str(truth), "--size", "128", "--out", str(out), "-q"]
    assert runner.invoke(app, args).exit_code == 0
    (out / "my_notes.txt").write_text("keep me")
    r = runner.invoke(app, args + ["--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "dataset.json").exists()


def _corrupt_tif(path):
    """A 512x512 tiled GeoTIFF whose lower-left 256x256 block is garbage."""
    import rasterio
    from affine import Affine

    a = np.random.default_rng(0).integers(0, 255, (3, 512, 512)).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", crs="EPSG:32632",
                       transform=Affine(10, 0, 6e5, 0, -10, 5e6)) as ds:
        ds.write(a)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 2000] = b"\x55" * 2000
    path.write_bytes(bytes(data))
    return path


def test_a_corrupt_block_names_its_window_or_becomes_nodata(tmp_path):
    import json

    bad = _corrupt_tif(tmp_path / "bad.tif")
    r = _fails_cleanly(["detect", str(bad), str(bad), "-o", str(tmp_path / "a")], "cannot read rows")
    assert "--skip-bad-windows" in r.output and not (tmp_path / "a" / "detect.json").exists()
    r = runner.invoke(app, ["detect", str(bad), str(bad), "-o", str(tmp_path / "b"), "--skip-bad-windows", "-q"])
    assert r.exit_code == 0 and "unreadable block" in r.output, r.output
    summary = json.loads((tmp_path / "b" / "detect.json").read_text())
    assert summary["bad_blocks"] == 1 and summary["valid_pixels"] == 512 * 512 - 256 * 256


@pytest.mark.parametrize("fail_after", [1, 3])
def test_detect_resume_continues_from_finished_bands_and_equals_a_whole_run(tmp_path, monkeypatch, fail_after):
    """A run that dies after `fail_after` saved row bands is resumed with --resume: it keeps those rows, scores
    the rest, and its outputs equal an uninterrupted run's bit for bit."""
    import json

    import rasterio

    from cdtool.inference import journal
    from cdtool.inference.detect import DetectOptions, detect

    rng = np.random.default_rng(5)
    a = (rng.random((3, 520, 300)) * 200).astype(np.uint8)
    b = a.copy()
    b[:, 150:330, 60:200] = 240
    before, after = write_tif(tmp_path / "a.tif", a), write_tif(tmp_path / "b.tif", b)
    opts = dict(tile=128, overlap=40, preview=False, model="cva")
    detect(before, after, tmp_path / "whole", DetectOptions(**opts))

    saved, original = [], journal.Journal.save

    def dying(self, band):
        if len(saved) == fail_after:
            raise KeyboardInterrupt  # as if killed here
        saved.append(band.row)
        original(self, band)

    monkeypatch.setattr(journal.Journal, "save", dying)
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, tmp_path / "run", DetectOptions(**opts))
    monkeypatch.setattr(journal.Journal, "save", original)
    assert (tmp_path / "run" / journal.JOURNAL).is_dir()  # kept for --resume
    _fails_cleanly(["detect", str(before), str(after), "-o", str(tmp_path / "run"), "--resume", "--model", "cva",
                    "--tile", "160", "--no-preview"], "other settings")  # other tiling: not the same run
    result = detect(before, after, tmp_path / "run", DetectOptions(**opts, resume=True))
    assert result.extra["resumed_rows"] > 0 and not (tmp_path / "run" / journal.JOURNAL).exists()
    for name in ("change_prob.tif", "change_mask.tif"):
        with rasterio.open(tmp_path / "whole" / name) as x, rasterio.open(tmp_path / "run" / name) as y:
            assert np.array_equal(x.read(), y.read()), name
    whole = json.loads((tmp_path / "whole" / "detect.json").read_text())
    resumed = json.loads((tmp_path / "run" / "detect.json").read_text())
    assert resumed["threshold"] == whole["threshold"] and resumed["regions"] == whole["regions"]


def test_journal_keeps_bands_exactly_and_refuses_another_versions(tmp_path):
    """Journal bands come back bit for bit where valid, with their validity (nodata holes); they mosaic into
    the staged score map; a journal written in another format is refused in one line rather than misread."""
    import json

    from cdtool.errors import InputError
    from cdtool.inference.journal import JOURNAL, Journal
    from cdtool.inference.stitcher import Band

    rng = np.random.default_rng(0)
    bands = [Band(r, rng.random((h, 37)).astype(np.float32), rng.random((h, 37)) > 0.2) for r, h in ((0, 5), (5, 9))]
    prints = {"inputs": [], "settings": {"tile": 64}}
    journal = Journal(tmp_path, prints, resume=False)
    for band in bands:
        journal.save(band)
    journal.close()
    again = Journal(tmp_path, prints, resume=True)
    assert again.rows_done == 14
    for kept, band in zip(again.replay(), bands):
        assert kept.row == band.row and np.array_equal(kept.valid, band.valid)
        assert np.array_equal(kept.score[band.valid], band.score[band.valid])
    again.close()
    from cdtool.io.staging import write_mosaic

    mosaic = write_mosaic(tmp_path / "scores.vrt", again.pieces(14), 14, 37, -1.0, None, Affine.identity())
    with rasterio.open(mosaic) as ds:
        staged = ds.read(1)
    whole = np.concatenate([np.where(b.valid, b.score, -1.0) for b in bands])
    assert np.array_equal(staged, whole)
    with pytest.raises(RuntimeError, match="not contiguous"):
        write_mosaic(tmp_path / "gap.vrt", again.pieces(14)[1:], 14, 37, -1.0, None, Affine.identity())
    state = tmp_path / JOURNAL / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "format": 1}))
    with pytest.raises(InputError, match="another cdtool version"):
        Journal(tmp_path, prints, resume=True)

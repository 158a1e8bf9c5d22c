"""Bad options and hostile inputs get one line and exit 2, never a traceback or a silent wrong result."""

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
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


# -- hostile runs of detect: what it resumes, how many processes it starts, how it ends on SIGTERM ----------------

def _stderr_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def _interrupted(before, after, out, monkeypatch) -> dict:
    """A CVA run into `out` that dies after saving two row bands, as a kill would leave it; returns its journal
    state."""
    import json

    from cdtool.inference import journal
    from cdtool.inference.detect import DetectOptions, detect

    original, saved = journal.Journal.save, []

    def dying(self, band):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(band.row)
        original(self, band)

    monkeypatch.setattr(journal.Journal, "save", dying)
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, out, DetectOptions(model="cva", tile=64, overlap=16, preview=False))
    monkeypatch.setattr(journal.Journal, "save", original)
    return json.loads((out / journal.JOURNAL / "state.json").read_text())


def _band_folder(folder, rng):
    folder.mkdir()
    for band in ("B02", "B03", "B04"):
        write_tif(folder / f"{band}.tif", rng.integers(0, 255, (200, 120)).astype(np.uint8))
    return folder


def _vrt_input(tmp_path, rng):
    from cdtool.io.stack import write_stack

    sources = [write_tif(tmp_path / f"s{i}.tif", rng.integers(0, 255, (200, 120)).astype(np.uint8)) for i in range(3)]
    return write_stack(tmp_path / "before.vrt", sources)


def _zip_input(tmp_path, rng):
    import zipfile

    write_tif(tmp_path / "member.tif", rng.integers(0, 255, (3, 200, 120)).astype(np.uint8))
    with zipfile.ZipFile(tmp_path / "before.zip", "w") as z:
        z.write(tmp_path / "member.tif", "inner/a.tif")
    return f"/vsizip/{tmp_path / 'before.zip'}/inner/a.tif"


def _rewrite_zip(tmp_path, rng):
    import zipfile

    write_tif(tmp_path / "member.tif", rng.integers(0, 255, (3, 200, 120)).astype(np.uint8))
    with zipfile.ZipFile(tmp_path / "before.zip", "w") as z:
        z.write(tmp_path / "member.tif", "inner/a.tif")


def _edit_in_place(path: Path, rng) -> None:
    """New pixels written into the file itself (GDAL's update mode): same size, same folder entry."""
    with rasterio.open(path, "r+") as ds:
        ds.write(rng.integers(0, 255, (ds.count, ds.height, ds.width)).astype(np.uint8))


# (BEFORE, the change made between the interrupted run and --resume, the file the refusal must name)
RESUME_INPUTS = {
    "a band in a band folder": (lambda t, rng: _band_folder(t / "bands", rng),
                                lambda t, rng: _edit_in_place(t / "bands" / "B03.tif", rng), "B03.tif"),
    "a VRT's source": (_vrt_input, lambda t, rng: _edit_in_place(t / "s1.tif", rng), "s1.tif"),
    "a /vsizip/ archive": (_zip_input, _rewrite_zip, "before.zip"),
}


@pytest.mark.parametrize("case", list(RESUME_INPUTS))
def test_resume_is_refused_when_a_file_the_input_reads_changed(tmp_path, monkeypatch, case):
    """The resume fingerprint holds size and modification time (ns) of every file read, not only of the path
    given: an unchanged input resumes; a changed band, VRT source or archive is refused in one line naming it,
    and the journal stays as it was."""
    import json

    from cdtool.inference.journal import JOURNAL

    make, change, name = RESUME_INPUTS[case]
    rng = np.random.default_rng(1)
    before = make(tmp_path, rng)
    after = write_tif(tmp_path / "after.tif", rng.integers(0, 255, (3, 200, 120)).astype(np.uint8))
    args = ["detect", str(before), str(after), "--model", "cva", "--tile", "64", "--overlap", "16", "--no-preview",
            "-q", "--resume", "-o"]
    _interrupted(before, after, tmp_path / "same", monkeypatch)
    r = runner.invoke(app, args + [str(tmp_path / "same")])  # nothing changed: resumes
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "same" / "detect.json").read_text())["resumed_rows"] > 0
    state = _interrupted(before, after, tmp_path / "changed", monkeypatch)
    given = os.stat(before).st_mtime_ns if Path(before).exists() else None
    change(tmp_path, rng)
    assert (os.stat(before).st_mtime_ns if Path(before).exists() else None) == given  # the path given is as it was
    r = runner.invoke(app, args + [str(tmp_path / "changed")])
    assert r.exit_code == 2, r.output
    line = _stderr_line(r)
    assert name in line and "changed after the interrupted run" in line and "--resume" in line, line
    assert json.loads((tmp_path / "changed" / JOURNAL / "state.json").read_text()) == state
    assert not (tmp_path / "changed" / "detect.json").exists()


def test_resume_of_a_complete_run_says_so_and_touches_nothing(tmp_path):
    import hashlib

    rng = np.random.default_rng(2)
    before, after = (write_tif(tmp_path / f"{n}.tif", rng.integers(0, 255, (3, 64, 64)).astype(np.uint8))
                     for n in "ab")
    args = ["detect", str(before), str(after), "-o", str(tmp_path / "out"), "--model", "cva", "-q"]
    assert runner.invoke(app, args).exit_code == 0

    def state():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out").iterdir()}

    done = state()
    r = runner.invoke(app, args + ["--resume"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert "complete" in r.stdout and "nothing to resume" in r.stdout and "--overwrite" not in r.stderr, r.output
    assert state() == done


def test_workers_are_capped_at_the_cores_and_zero_is_refused(tmp_path, monkeypatch):
    """--workers 1000 starts as many processes as there are cores, and says so in one line; --workers 0 is
    refused naming the option."""
    import json

    from cdtool.inference import runner as detect_module
    from cdtool.inference.predictor import usable_cores
    from cdtool.inference.row_scoring import local_rows

    started = []

    def counted(pair, predictor, rows, workers, scheduler, grid=None):  # the cluster as asked, scored here
        started.append(workers)
        return local_rows(pair, predictor, rows, 1, 1, grid)

    monkeypatch.setattr(detect_module, "dask_rows", counted)
    rng = np.random.default_rng(3)
    before, after = (write_tif(tmp_path / f"{n}.tif", rng.integers(0, 255, (3, 64, 64)).astype(np.uint8))
                     for n in "ab")
    cores = usable_cores()
    args = ["detect", str(before), str(after), "--model", "cva", "--threshold", "0.5", "-q", "-o"]
    r = runner.invoke(app, args + [str(tmp_path / "many"), "--workers", "1000"])
    assert r.exit_code == 0, r.output
    assert started == [cores], started
    assert f"--workers 1000 capped at {cores}" in _stderr_line(r)
    assert json.loads((tmp_path / "many" / "detect.json").read_text())["options"]["workers"] == cores
    r = runner.invoke(app, args + [str(tmp_path / "one"), "--workers", "1"])
    assert r.exit_code == 0 and r.stderr == "" and started == [cores, 1], r.output
    r = runner.invoke(app, args + [str(tmp_path / "none"), "--workers", "0"])
    assert r.exit_code == 2 and "--workers" in _stderr_line(r) and started == [cores, 1], r.output
    assert not (tmp_path / "none").exists()


def test_output_set_commits_all_or_nothing(tmp_path, monkeypatch):
    """A rename that fails half-way through a commit puts every old output back (and the new ones away); an old
    output a killed commit had moved aside comes back with the next run into the folder."""
    import errno

    from cdtool.errors import CdtoolError
    from cdtool.io.outputs import OutputSet

    out, names = tmp_path / "out", ["a.tif", "b.gpkg", "c.json"]
    out.mkdir()
    for n in names:
        (out / n).write_text(f"old {n}")
    real = os.replace

    def failing(src, dst):
        if Path(dst).name == "c.json" and ".partial-" in Path(src).name:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real(src, dst)

    with pytest.raises(CdtoolError, match="c.json"):
        with OutputSet(out, names, overwrite=True) as outs:
            for n in names:
                outs.path(n).write_text(f"new {n}")
            monkeypatch.setattr(os, "replace", failing)
            outs.commit()
    monkeypatch.setattr(os, "replace", real)
    assert {p.name: p.read_text() for p in out.iterdir()} == {n: f"old {n}" for n in names}
    # a commit killed after moving a.tif aside: the next run's clean-up brings it back
    real(out / "a.tif", out / ".a.tif.replaced-deadbeef")
    (out / ".cdtool.lock").write_text("999999999\n")
    with OutputSet(out, names, overwrite=True) as outs:
        assert (out / "a.tif").read_text() == "old a.tif"
        for n in names:
            outs.path(n).write_text(f"new {n}")
        outs.commit()
    assert {p.name: p.read_text() for p in out.iterdir()} == {n: f"new {n}" for n in names}


@pytest.fixture
def sigterm_fallback():
    """Were SIGTERM not handled, it would end the test process: a handler that fails the test instead."""
    import signal

    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, previous)


def _terminate_after(monkeypatch, target, name: str, calls: int = 1) -> None:
    """Send this process SIGTERM right after the `calls`-th call of target.name."""
    import signal

    original, seen = getattr(target, name), []

    def then_terminate(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(1)
        if len(seen) == calls:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(target, name, then_terminate)


def test_sigterm_ends_detect_like_an_interrupt_and_resume_continues(tmp_path, monkeypatch, sigterm_fallback):
    """SIGTERM mid-run: exit 143, one line saying --resume continues, the journal kept, no partial output or
    lock; --resume then finishes equal to an uninterrupted run."""
    import json

    import rasterio

    from cdtool.inference import journal

    rng = np.random.default_rng(4)
    a = (rng.random((3, 300, 160)) * 200).astype(np.uint8)
    before, after = write_tif(tmp_path / "a.tif", a), write_tif(tmp_path / "b.tif", np.flip(a, 1).copy())
    args = ["detect", str(before), str(after), "--model", "cva", "--tile", "64", "--overlap", "16", "--no-preview",
            "-q", "-o"]
    assert runner.invoke(app, args + [str(tmp_path / "whole")]).exit_code == 0
    _terminate_after(monkeypatch, journal.Journal, "save", calls=2)
    r = runner.invoke(app, args + [str(tmp_path / "run")])
    assert r.exit_code == 143, r.output
    line = _stderr_line(r)
    assert "SIGTERM" in line and "--resume" in line, line
    state = json.loads((tmp_path / "run" / journal.JOURNAL / "state.json").read_text())
    assert len(state["bands"]) >= 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [journal.JOURNAL]
    monkeypatch.undo()
    r = runner.invoke(app, args + [str(tmp_path / "run"), "--resume"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "detect.json").read_text())["resumed_rows"] > 0
    for name in ("change_prob.tif", "change_mask.tif"):
        with rasterio.open(tmp_path / "whole" / name) as x, rasterio.open(tmp_path / "run" / name) as y:
            assert np.array_equal(x.read(), y.read()), name


def test_sigterm_ends_tile_like_an_interrupt_and_a_rerun_continues(tmp_path, monkeypatch, sigterm_fallback):
    from cdtool.data import store
    from cdtool.data.chips import ChipDataset

    rng = np.random.default_rng(5)
    before, after = (write_tif(tmp_path / f"{n}.tif", rng.integers(0, 255, (3, 320, 160)).astype(np.uint8))
                     for n in "ab")
    mask = write_tif(tmp_path / "m.tif", (rng.random((320, 160)) > 0.8).astype(np.uint8))
    args = ["tile", str(before), str(after), "--mask", str(mask), "--size", "16", "--stride", "16", "-o"]
    assert runner.invoke(app, args + [str(tmp_path / "whole"), "-q"]).exit_code == 0
    _terminate_after(monkeypatch, store.UnitWriter, "close")
    r = runner.invoke(app, args + [str(tmp_path / "run"), "-q"])
    assert r.exit_code == 143, r.output
    line = _stderr_line(r)
    assert "SIGTERM" in line and "again continues" in line, line
    assert not (tmp_path / "run" / ".cdtool.lock").exists()
    monkeypatch.undo()
    r = runner.invoke(app, args + [str(tmp_path / "run")])
    assert r.exit_code == 0 and "resumed" in r.stdout, r.output
    whole, run = ChipDataset(str(tmp_path / "whole")), ChipDataset(str(tmp_path / "run"))
    assert len(whole) == len(run) > 0
    assert all(torch.equal(whole[i]["image"], run[i]["image"]) for i in range(0, len(whole), 7))


def test_sigterm_ends_train_like_an_interrupt_and_resume_continues(tmp_path, monkeypatch, sigterm_fallback):
    import yaml
    from safetensors.torch import load_file

    from cdtool.engine import run_files
    from engine_fixtures import make_pair_folder, tiny_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(make_pair_folder(tmp_path / "pairs", n=4, size=32))))
    assert runner.invoke(app, ["train", str(recipe), "-o", str(tmp_path / "whole"), "-q"]).exit_code == 0
    _terminate_after(monkeypatch, run_files, "write_history")  # after the first epoch is saved
    r = runner.invoke(app, ["train", str(recipe), "-o", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 143, r.output
    line = _stderr_line(r)
    assert "SIGTERM" in line and "--resume" in line, line
    assert not (tmp_path / "run" / ".cdtool.lock").exists()
    monkeypatch.undo()
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0, r.output
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("whole", "run"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""What detect tells the user beyond the numbers: an automatic threshold that flags a third of the scene or
more, and a failed run that finished rows --resume can continue from."""

import numpy as np
import pytest
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.errors import CdtoolError
from tests.conftest import write_tif


@pytest.fixture
def half_changed(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(40, 80, (3, 300, 300)).astype("uint8")
    b = a.copy()
    b[:, :, :160] = rng.integers(150, 220, (3, 300, 160))
    return write_tif(tmp_path / "a.tif", a), write_tif(tmp_path / "b.tif", b)


def test_an_automatic_threshold_flagging_half_the_scene_is_questioned(half_changed, tmp_path):
    run = CliRunner().invoke
    r = run(app, ["detect", *map(str, half_changed), "-o", str(tmp_path / "o"), "--model", "cva", "--threshold",
                  "otsu", "-q", "--no-report"])
    assert r.exit_code == 0, r.output
    assert "warning: the automatic threshold (otsu)" in r.output and "set --threshold" in r.output
    r = run(app, ["detect", *map(str, half_changed), "-o", str(tmp_path / "f"), "--model", "cva", "--threshold",
                  "0.5", "-q", "--no-report"])
    assert r.exit_code == 0 and "automatic threshold" not in r.output  # a number the user chose: no question


def test_a_failure_after_scoring_says_resume_continues(half_changed, tmp_path, monkeypatch):
    from cdtool.inference import detect as detect_module

    def full_disk(*args, **kwargs):
        raise CdtoolError(f"{tmp_path / 'o' / 'change_mask.tif'}: cannot write (the disk is full); nothing was "
                          "replaced")

    args = ["detect", *map(str, half_changed), "-o", str(tmp_path / "o"), "--model", "cva", "--tile", "128",
            "--no-report"]
    with monkeypatch.context() as m:
        m.setattr(detect_module, "_write_changes", full_disk)
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 1
    assert "disk is full" in r.output and "rows 0-299 are kept: the same command with --resume continues" in r.output
    r = CliRunner().invoke(app, args + ["--resume", "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "change_mask.tif").exists() and not (tmp_path / "o" / ".cdtool-resume").exists()


def test_a_failure_before_any_row_leaves_no_journal(tmp_path, monkeypatch):
    from cdtool.inference import detect as detect_module
    from cdtool.inference.journal import JOURNAL

    rng = np.random.default_rng(1)
    a = write_tif(tmp_path / "a.tif", rng.integers(0, 255, (3, 64, 64)).astype("uint8"))
    (tmp_path / "o").mkdir()

    def broken(*args, **kwargs):
        raise CdtoolError("a.tif: cannot read rows 0-63")

    monkeypatch.setattr(detect_module, "_score_pass", broken)
    r = CliRunner().invoke(app, ["detect", str(a), str(a), "-o", str(tmp_path / "o"), "--model", "cva"])
    assert r.exit_code == 1 and "--resume" not in r.output
    assert not (tmp_path / "o" / JOURNAL).exists()


def test_gdal_words_for_a_full_disk_become_one_line_naming_the_folder(half_changed, tmp_path, monkeypatch):
    """GDAL reports some failed writes on a full disk in words of its own (`TIFFRewriteDirectory: Error fetching
    directory count`), not as an OSError: on a full disk they are the disk's failure, named by the folder."""
    from cdtool.inference import detect as detect_module

    class GdalError(Exception):
        errno = 1  # as rasterio's CPLE errors carry: GDAL's error class, not an OS errno (1 is EPERM there)

    def gdal_fails(*args, **kwargs):
        raise GdalError("TIFFRewriteDirectory:Error fetching directory count")

    import cdtool.errors

    monkeypatch.setattr(detect_module, "_write_changes", gdal_fails)
    monkeypatch.setattr(detect_module, "disk_full", lambda path: True)
    monkeypatch.setattr(cdtool.errors, "disk_full", lambda path: True)
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["detect", *map(str, half_changed), "-o", str(out), "--model", "cva", "--tile", "128"])
    assert r.exit_code == 1 and "unexpected" not in r.output
    assert f"{out}: cannot write (the disk is full)" in r.output and "--resume continues" in r.output
    monkeypatch.setattr(detect_module, "disk_full", lambda path: False)  # a real bug elsewhere stays a bug
    r = CliRunner().invoke(app, ["detect", *map(str, half_changed), "-o", str(tmp_path / "p"), "--model", "cva"])
    assert r.exit_code == 1 and "unexpected GdalError" in r.output

"""The command itself: --version, and --help that stays fast because no command imports torch, rasterio or
geopandas until it runs."""

import subprocess
import sys

from typer.testing import CliRunner

from cdtool import __version__
from cdtool.cli import app


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"cdtool {__version__}"


def test_help_imports_no_heavy_library():
    code = ("import sys; import cdtool.cli; heavy = [m for m in ('torch', 'rasterio', 'geopandas', 'scipy') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported at start-up: {out}"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_bug_is_one_line_and_debug_shows_its_traceback(monkeypatch):
    import cdtool.inference.detector as detector

    def broken(name):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(detector, "load_detector", broken)
    r = CliRunner().invoke(app, ["info", "cva"])
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit))
    assert _lines(r.stderr) == ["error: unexpected ZeroDivisionError: a bug deep inside (run with --debug for the "
                                "traceback)"]
    r = CliRunner().invoke(app, ["--debug", "info", "cva"])
    assert r.exit_code == 1
    assert r.stderr.startswith("Traceback (most recent call last):") and "in broken" in r.stderr
    assert _lines(r.stderr)[-1].startswith("error: unexpected ZeroDivisionError")


def test_debug_keeps_the_exit_code_of_bad_input(tmp_path):
    args = [sys.executable, "-m", "cdtool.cli", "detect", str(tmp_path / "gone.tif"), str(tmp_path / "b.tif")]
    plain = subprocess.run(args, capture_output=True, text=True)
    assert plain.returncode == 2 and _lines(plain.stderr) == [f"error: {tmp_path / 'gone.tif'}: no such file or folder"]
    debug = subprocess.run(args[:3] + ["--debug"] + args[3:], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "InputError" in debug.stderr
    assert _lines(debug.stderr)[-1] == _lines(plain.stderr)[0]


def test_usage_errors_are_one_line():
    r = CliRunner().invoke(app, ["detect", "a.tif", "b.tif", "--tile", "abc"])
    assert r.exit_code == 2 and len(_lines(r.stderr)) == 1
    assert _lines(r.stderr)[0].startswith("error: Invalid value for '--tile'") and "detect -h" in r.stderr
    assert CliRunner().invoke(app, []).exit_code in (0, 2) and "Usage" in CliRunner().invoke(app, []).output

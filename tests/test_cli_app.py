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

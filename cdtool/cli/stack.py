"""cdtool stack: one multi-band VRT from single-band files (e.g. Sentinel-2 / OSCD band folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cdtool.cli.options import OneOf, Overwrite, friendly_errors, out_console


def stack(
    out: Annotated[Path, typer.Argument(help="VRT file to write, e.g. before.vrt")],
    sources: Annotated[list[Path], typer.Argument(help="Band files, or one folder of them (natural band order).")],
    resampling: Annotated[str, typer.Option(parser=OneOf("cdtool.io.stack:RESAMPLINGS"), help=(
        "Resampling onto the finest grid: nearest, bilinear, cubic, cubicspline, lanczos, average or mode."))] = "bilinear",
    overwrite: Overwrite = False,
) -> None:
    """Stack single-band rasters onto the finest grid as a VRT that QGIS and cdtool open directly."""
    from cdtool.io.stack import write_stack

    path = write_stack(out, sources, overwrite=overwrite, resampling=resampling)
    out_console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("stack")(friendly_errors(stack))

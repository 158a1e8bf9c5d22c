"""cdtool labels init: an empty label layer to draw changed / unchanged polygons into in QGIS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cdtool.cli.options import Overwrite, friendly_errors, out_console

labels_app = typer.Typer(help="Your own labels: polygons that say what change means in your scene (detect --labels).",
                         no_args_is_help=True)


def init(
    layer: Annotated[Path, typer.Argument(help="The layer to create: .gpkg or .geojson.")],
    like: Annotated[str, typer.Option("--like", help="The BEFORE image: the layer takes its CRS (none for PNG/JPG, "
                                                     "whose polygons are drawn in the pixel grid x = column, y = -row).")],
    field: Annotated[str, typer.Option("--field", help="Name of the 0/1 field.")] = "change",
    overwrite: Overwrite = False,
) -> None:
    """Write an empty polygon layer with a 0/1 `change` field in LIKE's CRS, and a QGIS style (changed red,
    unchanged blue). Draw polygons in QGIS, set change = 1 or 0, then: cdtool detect BEFORE AFTER --labels LAYER."""
    from cdtool.labels.layer import init_layer

    for path in init_layer(layer, like, field, overwrite):
        out_console.print(escape(str(path)))


def register(app: typer.Typer) -> None:
    labels_app.command("init")(friendly_errors(init))
    app.add_typer(labels_app, name="labels")

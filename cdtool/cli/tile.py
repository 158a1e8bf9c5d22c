"""cdtool tile: image pairs (one pair, an A/ B/ label/ folder or a list file) -> chips + index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cdtool.cli.options import OneOf, OutDir, Overwrite, Quiet, Seed, friendly_errors, out_console, parse_int_list, \
    show_progress


def tile(
    before: Annotated[Path, typer.Argument(help="BEFORE image, or a folder with A/ B/ [label/], or a list file.")],
    after: Annotated[Optional[Path], typer.Argument(help="AFTER image (omit for a folder or list file).")] = None,
    out: OutDir = Path("tiles"),
    mask: Annotated[Optional[Path], typer.Option("--mask", "-m", help="Change mask of the pair (0/1, 0/255, OSCD 1/2; see `cdtool evaluate --help`).")] = None,
    size: Annotated[int, typer.Option("--size", help="Tile side in pixels.")] = 256,
    stride: Annotated[Optional[int], typer.Option("--stride", help="Step between tiles (default: --size).")] = None,
    max_nodata: Annotated[float, typer.Option("--max-nodata", help="Skip tiles with more nodata than this share.")] = 0.5,
    split: Annotated[str, typer.Option("--split", help="train,val,test fractions.")] = "0.7,0.15,0.15",
    split_by: Annotated[str, typer.Option("--split-by", parser=OneOf("cdtool.data.tiling:SPLIT_BY"), help="auto, pair, block or name (auto: name for train_/val_/test_ files, else pair when several, else block).")] = "auto",
    block: Annotated[int, typer.Option("--block", help="Split block side in pixels (0: 4 x size).")] = 0,
    bands: Annotated[Optional[str], typer.Option("--bands", help="1-based bands, e.g. 2,3,4,8.")] = None,
    align: Annotated[bool, typer.Option("--align", help="Warp AFTER onto BEFORE's grid.")] = False,
    wrap: Annotated[bool, typer.Option("--wrap", help="360° panorama: tiles wrap across the seam.")] = False,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Cut pairs into chips for training; re-running resumes or does nothing when complete."""
    from cdtool.data.sources import collect_pairs
    from cdtool.data.splits import parse_fractions
    from cdtool.data.tiling import TileOptions, make_tiles

    pairs = collect_pairs(before, after, mask)
    opts = TileOptions(size=size, stride=size if stride is None else stride, max_nodata=max_nodata, split_by=split_by, block=block,
                       fractions=parse_fractions(split), seed=seed,
                       bands=tuple(parse_int_list(bands, "--bands") or ()) or None, align=align, wrap=wrap)
    s = make_tiles(pairs, out, opts, overwrite=overwrite, progress=show_progress(quiet))
    if not quiet:
        state = "already complete" if s.get("already_complete") else ("resumed" if s.get("resumed") else "done")
        out_console.print(f"{out}: {s['samples']} tiles from {len(pairs)} pair(s) ({state}); "
                          f"train {s['splits']['train']}, val {s['splits']['val']}, test {s['splits']['test']}; "
                          f"skipped {s.get('skipped_nodata', 0)} over nodata, {s.get('dropped_guard', 0)} "
                          f"on split borders")


# after Ctrl-C or SIGTERM (the partial outputs are gone)
ON_INTERRUPT = "the finished tiles are kept: the same command again continues"


def register(app: typer.Typer) -> None:
    app.command("tile")(friendly_errors(tile, on_interrupt=ON_INTERRUPT))

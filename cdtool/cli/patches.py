"""cdtool patches: labelled patch-pair datasets by protocol (pcd, footprints, mnist, synthetic)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cdtool.cli.options import (OutDir, Overwrite, Quiet, Seed, err_console, friendly_errors, out_console,
                                parse_int_list, show_progress)
from cdtool.data.splits import parse_fractions
from cdtool.errors import InputError

PROTOCOLS = ("pcd", "footprints", "mnist", "synthetic")


def _count(text: str | None, what: str) -> int | None:
    if text is None or text.lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise typer.BadParameter(f"expected a number or 'all', got {text!r}", param_hint=what) from None
    if n < 0:
        raise typer.BadParameter(f"must not be negative, got {n}", param_hint=what)
    return n


def _positive(value: float, what: str) -> None:
    if not value > 0 or value == float("inf"):
        raise typer.BadParameter(f"must be a positive number, got {value}", param_hint=what)


def _not_negative(value: float, what: str) -> None:
    if not 0 <= value < float("inf"):
        raise typer.BadParameter(f"must be 0 or more, got {value}", param_hint=what)


def _share(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"must be a share in [0, 1], got {value}", param_hint=what)


def patches(
    inputs: Annotated[list[Path], typer.Argument(help=(
        "pcd: BEFORE AFTER (with --mask) or an A/ B/ label/ folder; footprints: BEFORE.gpkg AFTER.gpkg "
        "(any OGR format); mnist: the MNIST CSV(.gz) or its folder; synthetic: background image folders."))],
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="pcd, footprints, mnist or synthetic.")] = "pcd",
    out: OutDir = Path("patches"),
    mask: Annotated[Optional[Path], typer.Option("--mask", "-m", help="pcd: change mask of the pair.")] = None,
    patch: Annotated[int, typer.Option("--patch", help="Patch side in pixels (pcd, footprints).")] = 112,
    centre: Annotated[int, typer.Option("--centre", help="pcd: side of the centre that must be pure.")] = 14,
    stride: Annotated[int, typer.Option("--stride", help="pcd: step between patches.")] = 14,
    max_positives: Annotated[Optional[str], typer.Option("--max-positives", help="pcd: keep N positives (50, 500, all).")] = None,
    max_negatives: Annotated[Optional[str], typer.Option("--max-negatives", help="pcd: keep N negatives (default all).")] = None,
    wrap: Annotated[bool, typer.Option("--wrap", help="pcd: 360° panoramas, patches wrap across the seam.")] = False,
    bands: Annotated[Optional[str], typer.Option("--bands", help="pcd: 1-based bands, e.g. 2,3,4,8.")] = None,
    before_image: Annotated[Optional[Path], typer.Option("--before-image", help="footprints: imagery of date 1.")] = None,
    after_image: Annotated[Optional[Path], typer.Option("--after-image", help="footprints: imagery of date 2.")] = None,
    min_overlap: Annotated[float, typer.Option("--min-overlap", help="footprints: link when the overlap covers this share of the smaller building.")] = 0.5,
    min_iou: Annotated[float, typer.Option("--min-iou", help="footprints: a 1-to-1 match below this IoU is 'modified'.")] = 0.5,
    resolution: Annotated[float, typer.Option("--resolution", help="footprints: mask pixel size without imagery (CRS units).")] = 0.5,
    variant: Annotated[str, typer.Option("--variant", help="mnist: plain, R, B or R-B.")] = "R",
    pairs: Annotated[int, typer.Option("--pairs", help="mnist: number of pairs.")] = 10000,
    positive_fraction: Annotated[float, typer.Option("--positive-fraction", help="mnist: share of positive pairs.")] = 0.5,
    backgrounds: Annotated[Optional[list[Path]], typer.Option("--backgrounds", help="mnist B/R-B: natural images (folder or files).")] = None,
    objects: Annotated[Optional[list[Path]], typer.Option("--objects", help="synthetic: A/ B/ label/ folders whose change masks give object shapes.")] = None,
    samples: Annotated[int, typer.Option("--samples", help="synthetic: number of pairs.")] = 1000,
    size: Annotated[int, typer.Option("--size", help="synthetic: image side in pixels.")] = 256,
    max_shift: Annotated[float, typer.Option("--max-shift", help="synthetic: largest shift of AFTER, pixels.")] = 16.0,
    max_rotation: Annotated[float, typer.Option("--max-rotation", help="synthetic: largest rotation, degrees.")] = 10.0,
    max_scale: Annotated[float, typer.Option("--max-scale", help="synthetic: largest relative scale change.")] = 0.1,
    still: Annotated[float, typer.Option("--still", help="synthetic: share of no-change pairs (zero flow).")] = 0.0,
    margin: Annotated[int, typer.Option("--margin", help="synthetic: pixels of real context around each crop, so AFTER has no empty border.")] = 0,
    split: Annotated[str, typer.Option("--split", help="train,val,test fractions.")] = "0.7,0.15,0.15",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Build a labelled patch-pair dataset that `cdtool train` reads (ChipDataset)."""
    fractions, progress = parse_fractions(split), show_progress(quiet)
    kw = {"overwrite": overwrite, "progress": progress}
    if protocol == "pcd":
        from cdtool.data.pcd import PcdOptions, make_pcd
        from cdtool.data.sources import collect_pairs

        if len(inputs) > 2:
            raise InputError(f"{inputs[2]}: pcd takes BEFORE AFTER or one folder")
        pair_list = collect_pairs(inputs[0], inputs[1] if len(inputs) > 1 else None, mask, require_mask=True)
        opts = PcdOptions(patch=patch, centre=centre, stride=stride, wrap=wrap, fractions=fractions, seed=seed,
                          max_positives=_count(max_positives, "--max-positives"),
                          max_negatives=_count(max_negatives, "--max-negatives"),
                          bands=tuple(parse_int_list(bands, "--bands") or ()) or None)
        s = make_pcd(pair_list, out, opts, **kw)
        asked, found = opts.max_positives, s.get("train_positives_found")
        if asked is not None and found is not None and asked > found:
            err_console.print(f"[yellow]warning:[/] --max-positives {asked}, but the train split holds only {found} "
                              "positive pairs; all are kept", markup=True)
        detail = (f"positives {s['positives']} kept of {s['positives_found']}, negatives {s['negatives']} "
                  f"of {s['negatives_found']}")
    elif protocol == "footprints":
        from cdtool.data.footprints import FootprintOptions, make_footprints

        if len(inputs) != 2:
            raise InputError("footprints takes two vector layers: BEFORE AFTER")
        _share(min_overlap, "--min-overlap")
        _share(min_iou, "--min-iou")
        _positive(resolution, "--resolution")
        opts = FootprintOptions(min_overlap=min_overlap, min_iou=min_iou, patch=patch, resolution=resolution,
                                fractions=fractions, seed=seed)
        s = make_footprints(inputs[0], inputs[1], out, opts, before_image=before_image, after_image=after_image, **kw)
        detail = ", ".join(f"{k} {v}" for k, v in s["classes"].items()) + f"; classes in {out / 'footprint_changes.gpkg'}"
    elif protocol == "mnist":
        from cdtool.data.mnist import MnistOptions, make_mnist

        opts = MnistOptions(variant=variant, pairs=pairs, positive_fraction=positive_fraction, fractions=fractions,
                            seed=seed)
        s = make_mnist(inputs[0], out, opts, backgrounds=backgrounds, **kw)
        detail = f"variant {variant}"
    elif protocol == "synthetic":
        from cdtool.data.sources import pairs_from_folder
        from cdtool.data.synthetic import SyntheticOptions, make_synthetic

        if not objects:
            raise InputError("synthetic needs --objects FOLDER (A/ B/ label/) for object shapes")
        _positive(samples, "--samples")
        _positive(size, "--size")
        for value, what in ((max_shift, "--max-shift"), (max_rotation, "--max-rotation"), (max_scale, "--max-scale"),
                            (margin, "--margin")):
            _not_negative(value, what)
        _share(still, "--still")
        bank = [p for f in objects for p in pairs_from_folder(f, require_mask=True)]
        opts = SyntheticOptions(samples=samples, size=size, fractions=fractions, seed=seed, max_shift=max_shift,
                                max_rotation=max_rotation, max_scale=max_scale, still=still, margin=margin)
        s = make_synthetic(inputs, bank, out, opts, **kw)
        detail = f"{len(bank)} object source pairs"
    else:
        raise InputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if not quiet:
        state = "already complete" if s.get("already_complete") else "done"
        labels = s.get("labels")
        out_console.print(f"{out}: {s['samples']} {protocol} samples ({state}); train {s['splits']['train']}, "
                          f"val {s['splits']['val']}, test {s['splits']['test']}"
                          + (f"; labels {labels}" if labels else "") + f"; {detail}")
    for split, counts in (s.get("labels_by_split") or {}).items():
        if not quiet:
            out_console.print(f"  {split}: " + ", ".join(f"label {k}: {n}" for k, n in counts.items()))
        if s["splits"].get(split) and not counts.get("1"):  # shown even with --quiet
            err_console.print(f"[yellow]warning:[/] the {split} split has no positive (changed) samples: "
                              "a threshold tuned or a score measured on it means nothing", markup=True)


def register(app: typer.Typer) -> None:
    app.command("patches")(friendly_errors(patches))

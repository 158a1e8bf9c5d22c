"""cdtool patches pcd|footprints|mnist|synthetic: labelled patch-pair datasets, one subcommand per protocol,
each with only the options its protocol reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cdtool.cli.options import (OneLineUsageErrors, OneOf, OutDir, Overwrite, Quiet, Seed, err_console,
                                friendly_errors, out_console, parse_int_list, show_progress)
from cdtool.errors import InputError

patches_app = typer.Typer(
    cls=OneLineUsageErrors,
    help="Build a labelled patch-pair dataset that `cdtool train` reads (ChipDataset), by protocol.",
    no_args_is_help=True,
)

Split = Annotated[str, typer.Option("--split", help="train,val,test fractions.")]
Patch = Annotated[int, typer.Option("--patch", help="Patch side in pixels.")]


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


def _fractions(split: str) -> tuple[float, float, float]:
    from cdtool.data.splits import parse_fractions

    return parse_fractions(split)


def pcd(
    inputs: Annotated[list[Path], typer.Argument(help="BEFORE AFTER (with --mask) or an A/ B/ label/ folder.")],
    out: OutDir = Path("patches"),
    mask: Annotated[Optional[Path], typer.Option("--mask", "-m", help="Change mask of the pair.")] = None,
    patch: Patch = 112,
    centre: Annotated[int, typer.Option("--centre", help="Side of the centre that must be pure.")] = 14,
    stride: Annotated[int, typer.Option("--stride", help="Step between patches.")] = 14,
    max_positives: Annotated[Optional[str], typer.Option("--max-positives", help="Keep N positives (50, 500, all).")] = None,
    max_negatives: Annotated[Optional[str], typer.Option("--max-negatives", help="Keep N negatives (default all).")] = None,
    wrap: Annotated[bool, typer.Option("--wrap", help="360° panoramas, patches wrap across the seam.")] = False,
    bands: Annotated[Optional[str], typer.Option("--bands", help="1-based bands, e.g. 2,3,4,8.")] = None,
    split: Split = "0.7,0.15,0.15",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """PCD protocol: patch pairs whose centre is all changed (1) or all unchanged (0)."""
    fractions = _fractions(split)
    from cdtool.data.pcd import PcdOptions, make_pcd
    from cdtool.data.sources import collect_pairs

    if len(inputs) > 2:
        raise InputError(f"{inputs[2]}: pcd takes BEFORE AFTER or one folder")
    pair_list = collect_pairs(inputs[0], inputs[1] if len(inputs) > 1 else None, mask, require_mask=True)
    opts = PcdOptions(patch=patch, centre=centre, stride=stride, wrap=wrap, fractions=fractions, seed=seed,
                      max_positives=_count(max_positives, "--max-positives"),
                      max_negatives=_count(max_negatives, "--max-negatives"),
                      bands=tuple(parse_int_list(bands, "--bands") or ()) or None)
    s = make_pcd(pair_list, out, opts, overwrite=overwrite, progress=show_progress(quiet))
    asked, found = opts.max_positives, s.get("train_positives_found")
    if asked is not None and found is not None and asked > found:
        err_console.print(f"[yellow]warning:[/] --max-positives {asked}, but the train split holds only {found} "
                          "positive pairs; all are kept", markup=True)
    report(s, out, "pcd", quiet, f"positives {s['positives']} kept of {s['positives_found']}, negatives "
                              f"{s['negatives']} of {s['negatives_found']}")


def footprints(
    inputs: Annotated[list[Path], typer.Argument(help="BEFORE AFTER building layers (any OGR format).")],
    out: OutDir = Path("patches"),
    before_image: Annotated[Optional[Path], typer.Option("--before-image", help="Imagery of date 1.")] = None,
    after_image: Annotated[Optional[Path], typer.Option("--after-image", help="Imagery of date 2.")] = None,
    min_overlap: Annotated[float, typer.Option("--min-overlap", help="Link when the overlap covers this share of the smaller building.")] = 0.5,
    min_iou: Annotated[float, typer.Option("--min-iou", help="A 1-to-1 match below this IoU is 'modified'.")] = 0.5,
    resolution: Annotated[float, typer.Option("--resolution", help="Mask pixel size without imagery (CRS units).")] = 0.5,
    patch: Patch = 112,
    split: Split = "0.7,0.15,0.15",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Building footprints of two dates: each building's change class, and patch pairs around it."""
    fractions = _fractions(split)
    from cdtool.data.footprints import FootprintOptions, make_footprints

    if len(inputs) != 2:
        raise InputError("footprints takes two vector layers: BEFORE AFTER")
    _share(min_overlap, "--min-overlap")
    _share(min_iou, "--min-iou")
    _positive(resolution, "--resolution")
    opts = FootprintOptions(min_overlap=min_overlap, min_iou=min_iou, patch=patch, resolution=resolution,
                            fractions=fractions, seed=seed)
    s = make_footprints(inputs[0], inputs[1], out, opts, before_image=before_image, after_image=after_image,
                        overwrite=overwrite, progress=show_progress(quiet))
    report(s, out, "footprints", quiet, ", ".join(f"{k} {v}" for k, v in s["classes"].items())
           + f"; classes in {out / 'footprint_changes.gpkg'}")


def mnist(
    source: Annotated[Path, typer.Argument(help="The MNIST CSV(.gz) or its folder.")],
    out: OutDir = Path("patches"),
    variant: Annotated[str, typer.Option("--variant", parser=OneOf("cdtool.data.mnist:VARIANTS"),
                                         help="plain, R, B or R-B.")] = "R",
    pairs: Annotated[int, typer.Option("--pairs", help="Number of pairs.")] = 10000,
    positive_fraction: Annotated[float, typer.Option("--positive-fraction", help="Share of positive pairs.")] = 0.5,
    backgrounds: Annotated[Optional[list[Path]], typer.Option("--backgrounds", help="B/R-B: natural images (folder or files).")] = None,
    min_background_std: Annotated[float, typer.Option("--min-background-std", help="B/R-B: redraw background crops whose grey levels vary less than this (0 keeps every crop).")] = 0.0,
    split: Split = "0.7,0.15,0.15",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Digit pairs (the disentangled-VAE paper's protocol): same digit or not, rotated (R) and/or on natural backgrounds (B)."""
    fractions = _fractions(split)
    from cdtool.data.mnist import MnistOptions, make_mnist

    opts = MnistOptions(variant=variant, pairs=pairs, positive_fraction=positive_fraction,
                        fractions=fractions, seed=seed, min_background_std=min_background_std)
    s = make_mnist(source, out, opts, backgrounds=backgrounds, overwrite=overwrite, progress=show_progress(quiet))
    report(s, out, "mnist", quiet, f"variant {variant}")


def synthetic(
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Background image folders or files.")] = None,
    out: OutDir = Path("patches"),
    objects: Annotated[Optional[list[Path]], typer.Option("--objects", help="A/ B/ label/ folders whose change masks give object shapes (street: optional, else patches of the background itself).")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Number of pairs.")] = 1000,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 256,
    max_shift: Annotated[float, typer.Option("--max-shift", help="Largest shift of AFTER, pixels.")] = 16.0,
    max_rotation: Annotated[float, typer.Option("--max-rotation", help="Largest rotation, degrees.")] = 10.0,
    max_scale: Annotated[float, typer.Option("--max-scale", help="Largest relative scale change.")] = 0.1,
    still: Annotated[float, typer.Option("--still", help="Share of no-change pairs (aerial: zero flow; street: viewpoint and lighting change only).")] = 0.0,
    margin: Annotated[int, typer.Option("--margin", help="Pixels of real context around each crop, so AFTER has no empty border.")] = 0,
    scene: Annotated[str, typer.Option("--scene", parser=OneOf("cdtool.data.synthetic:SCENES"), help="aerial (similarity motion) or street (homography + parallax, lighting change).")] = "aerial",
    max_parallax: Annotated[float, typer.Option("--max-parallax", help="Street: largest parallax displacement, pixels.")] = 0.0,
    wrap: Annotated[bool, typer.Option("--wrap", help="Street: backgrounds are 360° panoramas, crops may span the seam.")] = False,
    generated: Annotated[int, typer.Option("--generated", help="Street: add this many generated street panoramas as backgrounds.")] = 0,
    split: Split = "0.7,0.15,0.15",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Synthetic misaligned pairs: objects pasted onto backgrounds, AFTER warped, with the true flow."""
    fractions = _fractions(split)
    from cdtool.data.sources import pairs_from_folder
    from cdtool.data.synthetic import SyntheticOptions, check_scene, make_synthetic

    if not objects and scene != "street":
        raise InputError("synthetic needs --objects FOLDER (A/ B/ label/) for object shapes")
    if not inputs and not generated:
        raise InputError("synthetic needs background images (or, with --scene street, --generated N)")
    _positive(samples, "--samples")
    _positive(size, "--size")
    for value, what in ((max_shift, "--max-shift"), (max_rotation, "--max-rotation"), (max_scale, "--max-scale"),
                        (margin, "--margin"), (max_parallax, "--max-parallax"), (generated, "--generated")):
        _not_negative(value, what)
    _share(still, "--still")
    opts = SyntheticOptions(samples=samples, size=size, fractions=fractions, seed=seed, max_shift=max_shift,
                            max_rotation=max_rotation, max_scale=max_scale, still=still, margin=margin,
                            scene=scene, max_parallax=max_parallax, wrap=wrap, generated=generated)
    check_scene(opts)
    bank = [p for f in objects or [] for p in pairs_from_folder(f, require_mask=True)]
    s = make_synthetic(list(inputs or []), bank, out, opts, overwrite=overwrite, progress=show_progress(quiet))
    report(s, out, "synthetic", quiet, f"{len(bank)} object source pairs" if bank else
           "objects: patches of the backgrounds themselves")


def report(s: dict, out: Path, protocol: str, quiet: bool, detail: str) -> None:
    """The summary line and labels per split; a split without positives is a warning even with --quiet."""
    if not quiet:
        state = "already complete" if s.get("already_complete") else "done"
        labels = s.get("labels")
        out_console.print(f"{out}: {s['samples']} {protocol} samples ({state}); train {s['splits']['train']}, "
                          f"val {s['splits']['val']}, test {s['splits']['test']}"
                          + (f"; labels {labels}" if labels else "") + f"; {detail}")
    for split, counts in (s.get("labels_by_split") or {}).items():
        if not quiet:
            out_console.print(f"  {split}: " + ", ".join(f"label {k}: {n}" for k, n in counts.items()))
        if s["splits"].get(split) and not counts.get("1"):
            err_console.print(f"[yellow]warning:[/] the {split} split has no positive (changed) samples: "
                              "a threshold tuned or a score measured on it means nothing", markup=True)


for _command in (pcd, footprints, mnist, synthetic):
    patches_app.command(_command.__name__)(friendly_errors(_command))


def register(app: typer.Typer) -> None:
    app.add_typer(patches_app, name="patches")

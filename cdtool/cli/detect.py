"""cdtool detect: two images in, change score map, mask and polygons out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from cdtool.cli.options import (Device, OutDir, Overwrite, Quiet, err_console, friendly_errors, out_console,
                                OneOf, ThresholdParser, parse_int_list, show_progress)


def area_text(summary: dict) -> str:
    """' (12.3 ha of 175 ha; largest 0.8 ha)' when the pixel size is known, else ''."""
    if not summary.get("changed_area_m2"):
        return ""
    def ha(m2: float) -> str:
        h = m2 / 1e4
        return f"{h:.3g} ha" if h < 100 else (f"{h:,.0f} ha" if h < 10_000 else f"{m2 / 1e6:,.0f} km²")

    text = f" ({ha(summary['changed_area_m2'])} of {ha(summary['valid_area_m2'])}"
    in_regions = summary.get("region_area_m2")
    if in_regions is not None and not summary.get("mmu_mask") and in_regions < summary["changed_area_m2"]:
        text += f"; {ha(in_regions)} in regions of the minimum mapping unit"
    largest = summary.get("largest_regions") or []
    if largest and largest[0].get("area_m2"):
        text += f"; largest region {ha(largest[0]['area_m2'])}"
    return text + ")"


def regions_text(result, no_polygons: bool) -> str:
    """'12 regions', or why there is no count: regions are counted while polygons are built."""
    if no_polygons:
        return "regions not counted (--no-polygons)"
    return f"{result.regions} regions"


def detect(
    dates: Annotated[Optional[list[str]], typer.Argument(metavar="BEFORE AFTER", show_default=False, help="The images of one place, earlier first: GeoTIFF or any GDAL raster or dataset name (/vsizip/..., NETCDF:\"f.nc\":var), PNG/JPG, or a folder of band files. More than two: each consecutive pair (in the order of their dates where the files give them) and first_change.tif.")] = None,
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="Many pairs: a CSV (columns before, after, and optional name, aoi) or a folder of pair folders; one output folder per pair under --out, summary.csv and summary.gpkg; a failed pair is reported and skipped.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Registered or shipped model name (see `cdtool models`), or a checkpoint file: a path with a / or ending in .safetensors (./cva is a file, cva the model). Default: the shipped model whose domain (bands, GSD) covers the input, else the best label-free method.")] = None,
    out: OutDir = Path("cdtool_out"),
    tile: Annotated[int, typer.Option(help="Tile size in pixels.")] = 512,
    overlap: Annotated[Optional[int], typer.Option(help="Overlap between tiles in pixels (raised to twice the model's halo). Default: 64 for learned models; for classical ones twice their halo, which already stitches exactly.")] = None,
    threshold: Annotated[Optional[str], typer.Option(parser=ThresholdParser(), metavar="<number|method>", help="Mask threshold in [0, 1], or otsu, kmeans, gmm (per image). Default: the model's.")] = None,
    align: Annotated[bool, typer.Option("--align", help="Warp AFTER onto BEFORE's grid and process the common extent.")] = False,
    bands: Annotated[Optional[str], typer.Option(help="1-based bands to compare in both images, e.g. 1,2,3.")] = None,
    wrap: Annotated[bool, typer.Option("--wrap", help="360° panorama: pad circularly left/right so the seam is not an edge.")] = False,
    scene: Annotated[Optional[str], typer.Option("--scene", parser=OneOf("cdtool.inference.street:SCENES"), help="auto or street: street is a street-level pair (photos, panoramas), which gets the street default method; auto (the default): street when a panorama (--wrap) has no CRS.")] = None,
    aoi: Annotated[Optional[str], typer.Option("--aoi", help="Polygon layer (GeoPackage, GeoJSON, shapefile; any CRS): analyse only inside it. The outputs cover its extent; outside is nodata, in every area too.")] = None,
    exclude: Annotated[Optional[str], typer.Option("--exclude", help="Areas never to report, as nodata: a polygon layer, a 0/1 raster (1 = exclude), or 'water' (water on both dates by NDWI; Sentinel-2 bands).")] = None,
    gsd: Annotated[Optional[float], typer.Option("--gsd", help="Metres per pixel of the inputs (needed for PNG/JPG; overrides the raster's).")] = None,
    native_scale: Annotated[bool, typer.Option("--native-scale", help="Run the model on the input's pixels, never resampled to its training GSD.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Tiles per model call [default: 1 on the CPU, 8 on a GPU].")] = None,
    blend: Annotated[str, typer.Option(parser=OneOf("cdtool.inference.stitcher:BLENDS"),
                                       help="Tile blending window: cosine or gaussian.")] = "cosine",
    min_pixels: Annotated[Optional[int], typer.Option("--min-pixels", help="Drop change polygons smaller than this many pixels (default 4 pixels, or 1 with --min-area).")] = None,
    min_area: Annotated[Optional[float], typer.Option("--min-area", help="Drop change polygons under this many m² (default 20 m² where the pixel size is known; 0 keeps all).")] = None,
    max_regions: Annotated[Optional[int], typer.Option("--max-regions", help="Write no polygons when there are more change regions than this (the rasters are still written; say so in one line) [default: 100000].")] = None,
    dst_crs: Annotated[Optional[str], typer.Option("--dst-crs", help="CRS of the polygons (EPSG:4326, EPSG:3857, a WKT); the rasters stay on BEFORE's grid [default: BEFORE's CRS].")] = None,
    mmu_mask: Annotated[bool, typer.Option("--mmu-mask", help="Apply the minimum mapping unit (--min-pixels, --min-area) to the mask as well as to the polygons, so the map, the polygons and the changed area agree.")] = False,
    no_polygons: Annotated[bool, typer.Option("--no-polygons", help="Skip changes.gpkg.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip report.html (facts, overview, the largest regions with crops).")] = False,
    no_preview: Annotated[bool, typer.Option("--no-preview", help="Skip preview.png.")] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Score tiles on an embedded local Dask cluster of N processes, at most one per core [default: in this process].")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Score tiles on an existing Dask cluster, e.g. tcp://10.0.0.5:8786.")] = None,
    skip_bad_windows: Annotated[bool, typer.Option("--skip-bad-windows", help="Write nodata where a window cannot be read (a corrupt tile) instead of failing; the count is reported.")] = False,
    clean: Annotated[int, typer.Option("--clean", help="Open the mask with a (2R+1)² square: removes specks and lines thinner than it (0: off).")] = 0,
    vector_format: Annotated[str, typer.Option("--format", parser=OneOf("cdtool.inference.detect:VECTOR_FORMATS"), help="Polygons as gpkg (GeoPackage) or geojson (RFC 7946, WGS84).")] = "gpkg",
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run into the same --out that was interrupted (killed, power cut): the row bands it finished are kept, the rest is scored; the result equals an uninterrupted run.")] = False,
    flow: Annotated[bool, typer.Option("--flow", help="Also write flow.tif: the misregistration between the dates a joint flow + change model (simsac) estimates, 2 bands (dx, dy in pixels) on BEFORE's grid, with a QGIS style.")] = False,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", help="Refuse inputs of more pixels than this [default: 10000000000].")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Your own labels: polygons (GeoPackage, GeoJSON, shapefile; any CRS; PNG/JPG pairs: x = column, y = -row) with a field change = 1 changed / 0 unchanged, or a raster of 1 / 0 / nodata. A classifier is fitted on them, validated polygon by polygon, saved as fitted.safetensors in --out and run on the pair.")] = None,
    labels_field: Annotated[str, typer.Option("--labels-field", help="The 0/1 field of --labels.")] = "change",
    device: Device = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Detect changes between BEFORE and AFTER; write change_prob, change_mask (GeoTIFF, or PNG for
    non-georeferenced inputs), changes.gpkg and QGIS styles into --out. More dates: each consecutive pair and
    first_change.tif; --pairs: many pairs in one run."""
    from cdtool.inference.detect import DetectOptions, detect as run_detect
    from cdtool.inference.row_scoring import workers_option

    record = {}
    if labels is not None:  # fit on the analyst's labels first, then detect with the fitted model
        if pairs is not None or not dates or len(dates) != 2:
            raise typer.BadParameter("--labels adapts detection to one pair: give BEFORE and AFTER",
                                     param_hint="--labels")
        model, record = _fit_labels(dates, labels, labels_field, out, model, bands, align, gsd, quiet, overwrite,
                                    resume)
    opts = DetectOptions(model=model, tile=tile, overlap=overlap, threshold=threshold, align=align,
                         bands=parse_int_list(bands, "--bands"), device=device, batch_size=batch_size, blend=blend,
                         wrap=wrap, overwrite=overwrite, min_pixels=min_pixels, min_area=min_area, polygons=not no_polygons,
                         preview=not no_preview, vector_format=vector_format, clean=clean, max_regions=max_regions,
                         skip_bad_windows=skip_bad_windows, workers=workers_option(workers), scheduler=scheduler,
                         progress=show_progress(quiet), gsd=gsd, native_scale=native_scale, resume=resume, flow=flow,
                         max_pixels=max_pixels, announce=None if quiet else announce, scene=scene, aoi=aoi,
                         exclude=exclude, mmu_mask=mmu_mask, report=not no_report, record=record,
                         dst_crs=dst_crs)
    if pairs is not None:
        if dates:
            raise typer.BadParameter("give either --pairs or the images, not both", param_hint="--pairs")
        return _detect_pairs(pairs, out, opts)
    if not dates or len(dates) < 2:
        raise typer.BadParameter("give BEFORE and AFTER (or more dates), or --pairs FILE", param_hint="BEFORE AFTER")
    if len(dates) > 2:
        return _detect_series(dates, out, opts, quiet)
    _report(run_detect(dates[0], dates[1], out, opts), quiet, no_polygons)


def _report(result, quiet: bool, no_polygons: bool) -> None:
    """Warnings (always), then the model, the numbers and the files written."""
    choice = result.extra["model_choice"]
    for warning in choice["warnings"] + result.extra.get("warnings", []):  # shown even with --quiet
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", markup=True)
    for note in result.extra.get("notes", []):
        err_console.print(f"note: {escape(note)}")
    if result.extra.get("polygons_skipped"):  # too many regions: shown even with --quiet
        err_console.print(f"[yellow]warning:[/] {escape(result.extra['polygons_skipped'])}", markup=True)
    if result.extra.get("bad_blocks"):
        err_console.print(f"[yellow]warning:[/] {result.extra['bad_blocks']} unreadable block(s) of the "
                          "input files written as nodata", markup=True)
    if not quiet:
        if result.extra.get("resumed_rows"):
            out_console.print(f"resumed: rows 0-{result.extra['resumed_rows'] - 1} kept from the interrupted run")
        out_console.print(f"model {escape(choice['reason'])}")
        if result.extra.get("alignment"):
            out_console.print(escape(result.extra["alignment"]["line"]))
        out_console.print(
            f"{result.model}: {result.width}x{result.height} px, threshold {result.threshold:.3f}, "
            f"{result.changed_share:.2%} changed{area_text(result.extra['summary'])}, {regions_text(result, no_polygons)}, "
            f"{result.seconds:.1f} s")
        for path in result.outputs.values():
            out_console.print(f"  {path}")


def _fit_labels(dates: list[str], labels: str, labels_field: str, out: Path, model, bands, align, gsd, quiet: bool,
                overwrite: bool, resume: bool) -> tuple[str, dict]:
    """Fit a model on the analyst's labels over the pair (`cdtool.labels`): (the fitted checkpoint, its record)."""
    from cdtool.labels.model import LabelOptions, fit_before_detect, fit_lines

    options = LabelOptions(labels_field, parse_int_list(bands, "--bands"), align, gsd, progress=show_progress(quiet))
    fitted, fit = fit_before_detect(dates[0], dates[1], labels, out, model, options, overwrite, resume)
    for line in fit["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", markup=True)
    for line in [] if quiet else fit_lines(fit):
        err_console.print(escape(line))
    return fitted, {"labels": fit}


def _detect_series(dates: list[str], out: Path, opts, quiet: bool) -> None:
    from cdtool.multidate import detect_series

    series = detect_series(dates, out, opts, announce=(lambda line: None) if quiet else announce)
    if not quiet:
        for k, share in enumerate(series.changed_share, start=1):
            out_console.print(f"{escape(series.interval(k))}: {share:.2%} changed  ({series.folders[k - 1]})")
        for path in series.outputs.values():
            out_console.print(f"  {path}")


def _detect_pairs(source: Path, out: Path, opts) -> None:
    from cdtool.batch import detect_pairs, read_pairs

    result = detect_pairs(read_pairs(source), out, opts, announce=lambda line: out_console.print(escape(line)))
    for row in result.failed:
        err_console.print(f"[yellow]failed:[/] {escape(row['name'])}: {escape(row['message'])}", markup=True)
    written = [p for p in (result.summary_csv, result.summary_gpkg) if p is not None]
    out_console.print(f"{len(result.rows) - len(result.failed)} of {len(result.rows)} pairs done; "
                      + ", ".join(str(p) for p in written))
    if result.failed:
        raise typer.Exit(1)


def announce(line: str) -> None:
    """The size and estimated time, before scoring starts (stderr, so the summary on stdout stays clean)."""
    err_console.print(escape(line))


# the DetectOptions fields whose flag is not their name with dashes
FLAGS = {"vector_format": "--format"}

# after Ctrl-C or SIGTERM (the partial outputs are gone)
ON_INTERRUPT = "the finished rows are kept: the same command with --resume continues"


def register(app: typer.Typer) -> None:
    app.command("detect")(friendly_errors(detect, on_interrupt=ON_INTERRUPT, flags=FLAGS))

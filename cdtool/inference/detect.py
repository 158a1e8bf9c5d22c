"""`cdtool detect` as a library call: two images in, change score map, mask and polygons out.

Plan, run, threshold, write: open the pair and lay its tile grid (`runner.plan_scoring`); run the model over
it (`runner.run`), whose row bands go to the sinks of `cdtool.inference.sinks` (the journal's bands, which
are the staged score map, its overviews, the histogram and the preview), every stage streaming, so peak
memory depends on tile size, batch and raster width, not on raster size. A second streaming pass over the
staged score map applies the threshold (fixed, or Otsu's from the histogram gathered in the first pass) to
write the mask and the polygons (_threshold_pass), while a thread copies the staged score map into its
output (_score_output); the mask follows (_write_mask).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from tqdm import tqdm

from cdtool import __version__
from cdtool.domain import InputDomain, model_bands
from cdtool.errors import CdtoolError, InputError, NothingToDo, OptionError, disk_full, write_failure
from cdtool.inference.mapping_unit import mapping_unit as region_unit, mask_to_regions
from cdtool.inference.mask_opening import opened_bands
from cdtool.inference.detector import CROSS_SENSOR_DEFAULT, Choice, Detector, choose_detector, pick_device
from cdtool.inference.flow import flow_model, write_flow
from cdtool.inference.journal import JOURNAL, Journal, discard_journal, fingerprint, rows_kept
from cdtool.inference.model_spec import ModelSpec
from cdtool.inference.row_scoring import capped_workers, check_scheduler
from cdtool.inference.runner import RunOptions, ScoringPlan, plan_scoring, run
from cdtool.inference.sinks import PreviewScores, ScoreStats, StagedScores
from cdtool.inference.stitcher import BLENDS
from cdtool.inference.street import alignment_record, check_scene, is_street, street_choice
from cdtool.inference.threshold import METHODS, ScoreHistogram
from cdtool.io.outputs import OutputSet
from cdtool.io.pair import RasterPair, open_pair
from cdtool.io.preview import PreviewCanvas, PreviewGrid
from cdtool.io.qgis_style import heatmap_qml, layer_metadata_qmd, mask_qml, polygons_qml, world_file, write_text
from cdtool.io.writers import (BLOCK, GDAL_ENV, MASK_COLORS, MASK_NODATA, PROB_NODATA, BandWriter, copy_cog,
                               read_bands, tag_raster, tif_to_png, write_cog)
from cdtool.windows import MAX_PIXELS


@dataclass
class DetectOptions:
    model: str | Detector | None = None  # registry name, checkpoint, a ready Detector; None: the default
    tile: int = 512
    overlap: int | None = None  # None: twice the halo where that is the reach, else runner.DEFAULT_OVERLAP
    threshold: float | str | None = None  # None: the model's own; "otsu", "kmeans" or "gmm": per image
    align: bool = False
    bands: list[int] | None = None
    device: str | None = None
    batch_size: int | None = None  # tiles per model call; None: runner.CPU_BATCH on the CPU, GPU_BATCH on a GPU
    blend: str = "cosine"
    wrap: bool = False
    overwrite: bool = False
    min_pixels: int | None = None  # None: mapping_unit.DEFAULT_MIN_PIXELS, or 1 when min_area is given
    min_area: float | None = None  # square metres; None: mapping_unit.DEFAULT_MIN_AREA_M2 and DEFAULT_MIN_PIXELS
    mmu_mask: bool = False  # apply the minimum mapping unit to the mask too (else polygons only)
    dst_crs: str | None = None  # the polygons' CRS (EPSG:…, WKT); None: BEFORE's. Rasters stay on BEFORE's grid
    report: bool = True  # report.html: facts, overview and the largest regions with crops
    clean: int = 0  # radius in pixels of a morphological opening of the mask (0: none)
    polygons: bool = True
    preview: bool = True  # preview.png: before, after, score and mask side by side
    vector_format: str = "gpkg"  # changes.gpkg, or changes.geojson (RFC 7946, WGS84: georeferenced pairs only)
    max_regions: int | None = None  # more regions: no polygons, rasters complete (None: cdtool.io.vectors.MAX_REGIONS)
    progress: bool = False
    gsd: float | None = None  # metres per pixel of the input; None: read from the raster's transform
    native_scale: bool = False  # True: never resample windows to the model's ground sampling distance
    skip_bad_windows: bool = False  # unreadable windows (a corrupt tile) become nodata instead of an error
    readers: int | None = None  # threads reading tiles ahead of the model; None: 1 on the CPU, up to 4 on a GPU
    workers: int = 0  # > 0: score tiles as Dask tasks on a local cluster of this many processes (at most the cores)
    scheduler: str | None = None  # address of an existing Dask scheduler to score tiles on
    resume: bool = False  # continue an interrupted run into the same folder from its finished row bands
    flow: bool = False  # also write flow.tif: the estimated misregistration (joint flow + change models)
    max_pixels: int | None = None  # refuse a larger raster (a hostile header, a forgotten zoom level); None: default
    announce: Callable[[str], None] | None = None  # gets the size and estimated time before scoring; None: not timed
    aoi: str | None = None  # a polygon layer: only inside is analysed (the extent is cropped to it)
    exclude: str | None = None  # a polygon layer, a 0/1 raster or "water": never reported (nodata)
    scene: str | None = None  # "street": a street-level pair (its own default method); None/"auto": street when a
    # panorama (--wrap) has no CRS
    record: dict = field(default_factory=dict)  # more entries for detect.json (the analyst labels' fit)


@dataclass
class DetectResult:
    outputs: dict[str, Path]
    model: str
    threshold: float
    height: int
    width: int
    valid_pixels: int
    changed_pixels: int
    regions: int
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def changed_share(self) -> float:
        return self.changed_pixels / self.valid_pixels if self.valid_pixels else 0.0


# Where GIS software puts a raster without georeference: column c, row r at x = c, y = -r (QGIS, GDAL's
# default for such files). Polygons and the PNGs' world files use it, so they land on each other.
PIXEL_GRID = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
VECTOR_FORMATS = ("gpkg", "geojson")
# Seconds per pixel of what follows scoring (the mask pass, the COG copies, polygons), measured on 2 cores (8192²
# cva: 11.4 s in all, of which 4.1 s reading and scoring); the estimate's scoring part is timed on the input.
WRITE_S_PER_PX = 1e-7


def output_names(georeferenced: bool, polygons: bool, preview: bool = True, vector_format: str = "gpkg",
                 flow: bool = False, report: bool = False) -> list[str]:
    rasters = (["change_prob.tif", "change_prob.qml", "change_mask.tif", "change_mask.qml"] if georeferenced
               else ["change_prob.png", "change_prob.pgw", "change_prob.qml",
                     "change_mask.png", "change_mask.pgw", "change_mask.qml"])
    rasters += ["change_prob.qmd", "change_mask.qmd"]
    vectors = [f"changes.{vector_format}", "changes.qml", "changes.qmd"] if polygons else []
    return rasters + vectors + (["flow.tif", "flow.qml"] if flow else []) + (["preview.png"] if preview else []) \
        + (["report.html"] if report else []) + ["detect.json"]


def detect(before: str | Path, after: str | Path, out: str | Path, options: DetectOptions | None = None) -> DetectResult:
    """Compare BEFORE and AFTER and write the change outputs into folder `out`."""
    opts = options or DetectOptions()
    start = time.perf_counter()
    check_options(opts)
    if opts.resume and _complete(Path(out)):
        raise NothingToDo(f"{out}: the run there is complete, nothing to resume (run without --resume, with "
                          "--overwrite, to run it again)")
    if opts.scheduler:
        check_scheduler(opts.scheduler)  # before any output: an unreachable one left the folder behind
    notes = []
    if opts.workers and not opts.scheduler:
        workers, note = capped_workers(opts.workers)
        opts, notes = replace(opts, workers=workers), [note] if note else []
    device = pick_device(opts.device)
    from rasterio import Env

    with Env(**GDAL_ENV):
        pair, domain, choice, opts = open_and_choose(before, after, opts)
    with Env(**GDAL_ENV), pair:
        check_size(pair, opts.max_pixels)
        notes += pair.notes
        mapping_unit(opts, domain.gsd, pair.info.georeferenced)  # refuse a bad --min-area before any work
        check_dst_crs(opts, pair)
        if opts.polygons and opts.vector_format == "geojson" and not pair.info.georeferenced:
            raise InputError(f"{pair.before_path}: has no georeference, and GeoJSON coordinates are read as WGS84 "
                             "longitude/latitude everywhere; use --format gpkg (pixel grid: x = column, y = -row)")
        check_bands(pair, choice.detector)
        if opts.flow:
            flow_model(choice.detector.model)  # refuse a model without flow before any work
        names = output_names(pair.info.georeferenced, opts.polygons, opts.preview, opts.vector_format, opts.flow,
                             opts.report)
        inputs = [*pair.files(), *_checkpoint(opts)]
        with OutputSet(out, names, opts.overwrite, inputs, pair.folders()) as outs:
            if opts.polygons:
                from cdtool.io.vectors import check_gpkg_writable

                check_gpkg_writable(outs.folder)  # before the work: GDAL's SQLite refuses some paths
            scratch = Path(tempfile.mkdtemp(prefix=".cdtool-work-", dir=outs.folder))
            try:
                result = _run(pair, choice, domain.gsd, device, opts, outs, scratch, inputs)
                result.seconds = time.perf_counter() - start
                result.extra["notes"] = notes
                summary = _write_summary(outs.path("detect.json"), result, before, after, opts)
                _write_layer_metadata(outs, result, pair, opts)
                if opts.report:
                    from cdtool.io.report import write_report

                    write_report(outs.path("report.html"), summary, pair, outs.path(_prob_name(pair)),
                                 outs.path("preview.png") if opts.preview else None)
            except CdtoolError as exc:
                raise _kept_for_resume(exc, outs.folder) from None
            except Exception as exc:  # GDAL's own words for a write that failed on a full disk
                if not disk_full(outs.folder / "detect.json"):
                    raise
                raise _kept_for_resume(write_failure(outs.folder, exc), outs.folder) from None
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            result.outputs = outs.commit()
            discard_journal(outs.folder)  # complete: nothing to resume
    return result


def _kept_for_resume(exc: CdtoolError, folder: Path) -> CdtoolError:
    """A failure (a full disk, an unreadable window) that left finished rows says --resume continues from them;
    a journal with none goes, so no empty .cdtool-resume stays behind."""
    rows = rows_kept(folder)
    if rows == 0:
        discard_journal(folder)
        return exc
    if type(exc) not in (CdtoolError, InputError):
        return exc
    return type(exc)(f"{exc}; rows 0-{rows - 1} are kept: the same command with --resume continues")


def check_options(opts: DetectOptions) -> None:
    """Refuse an option out of its range in one line naming it, before anything is opened."""
    if opts.blend not in BLENDS:
        raise OptionError("blend", f"must be one of {', '.join(BLENDS)}, got {opts.blend!r}")
    if opts.tile < 16:
        raise OptionError("tile", f"must be at least 16 pixels, got {opts.tile}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise OptionError("batch_size", f"must be at least 1, got {opts.batch_size}")
    if opts.readers is not None and opts.readers < 1:
        raise OptionError("readers", f"must be at least 1, got {opts.readers}")
    if opts.workers < 0:
        raise OptionError("workers", f"must be 0 (in this process) or more, got {opts.workers}")
    if not 0 <= opts.clean <= 10:
        raise OptionError("clean", f"must be a radius from 0 to 10 pixels, got {opts.clean}")
    if opts.vector_format not in VECTOR_FORMATS:
        raise OptionError("vector_format", f"must be one of {', '.join(VECTOR_FORMATS)}, got {opts.vector_format!r}")
    if opts.gsd is not None and not (math.isfinite(opts.gsd) and opts.gsd > 0):
        raise OptionError("gsd", f"must be a positive number of metres per pixel, got {opts.gsd}")
    if opts.overlap is not None and opts.overlap < 0:
        raise OptionError("overlap", f"must be 0 or more pixels, got {opts.overlap}")
    if opts.max_pixels is not None and opts.max_pixels < 1:
        raise OptionError("max_pixels", f"must be a positive number of pixels, got {opts.max_pixels}")
    check_scene(opts.scene)


def check_dst_crs(opts: DetectOptions, pair: RasterPair) -> None:
    """Refuse a --dst-crs that names no CRS, or one asked of a pair without georeference, before any work."""
    if opts.dst_crs is None:
        return
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    if not pair.info.georeferenced:
        raise InputError(f"{pair.before_path}: has no georeference, so its polygons cannot be put in --dst-crs "
                         f"{opts.dst_crs}")
    try:
        CRS.from_user_input(opts.dst_crs)
    except CRSError as exc:
        raise InputError(f"--dst-crs {opts.dst_crs!r} names no CRS ({str(exc).splitlines()[0]})") from None


def check_bands(pair: RasterPair, detector: Detector) -> None:
    """Refuse a pair whose band count is not the one the model was trained on, before any work."""
    trained_on = detector.card.band_count
    if trained_on is not None and trained_on != pair.info.count:
        raise InputError(f"{pair.before_path}: has {pair.info.count} bands but model {detector.name} was "
                         f"trained on {trained_on}; pick bands with --bands or use a label-free model")


def open_and_choose(before, after, opts: DetectOptions) -> tuple[RasterPair, InputDomain, Choice, DetectOptions]:
    """Open the pair, choose its detector, and where a Sentinel-2 model reads its bands by name (another order,
    B10 or extra layers in the input), open it again with just those bands, in the model's order."""
    pair = open_pair(before, after, bands=opts.bands, align=opts.align, wrap=opts.wrap,
                     skip_bad_windows=opts.skip_bad_windows, offset="auto",  # uint32 near 2^31: exact in float32
                     aoi=opts.aoi, exclude=opts.exclude, repeat_single_band=True)
    try:
        domain = input_domain(pair, opts.gsd)
        street = opts.model is None and is_street(opts.scene, pair.info.georeferenced, opts.wrap)
        choice = (street_choice(domain, opts.scene) if street
                  else choose_detector(opts.model, domain, opts.native_scale))
        check_band_counts(pair, choice)
        picks = model_bands(choice.detector.card, domain) if opts.bands is None else None
    except BaseException:
        pair.close()
        raise
    if picks is None:
        return pair, domain, choice, opts
    file_bands = [pair.bands_before[i - 1] for i in picks]
    pair.close()
    opts = replace(opts, bands=file_bands)
    pair = open_pair(before, after, bands=file_bands, align=opts.align, wrap=opts.wrap,
                     skip_bad_windows=opts.skip_bad_windows, offset="auto", aoi=opts.aoi, exclude=opts.exclude)
    return pair, input_domain(pair, opts.gsd), choice, opts


def check_band_counts(pair: RasterPair, choice: Choice) -> None:
    """A single-band date beside a multi-band one is compared only by a model that never compares the dates'
    values (`cross_sensor`); any other is refused in one line, as it was before such models existed."""
    if pair.single_band_date is None or choice.detector.model.cross_sensor:
        return
    single, other = pair.single_band_date
    raise InputError(f"{other}: has {len(pair.bands_after)} bands but {single} has 1; pick common bands with --bands, "
                     f"or, for images from two sensors, use --model {CROSS_SENSOR_DEFAULT}")


def _complete(out: Path) -> bool:
    """Whether `out` holds a finished run: its summary is written last and the journal removed once the outputs
    are in place, so a --resume there has nothing to continue."""
    return (out / "detect.json").is_file() and not (out / JOURNAL / "state.json").exists()


def _checkpoint(opts: DetectOptions) -> list[Path]:
    """The checkpoint file --model names, if it names one: an input like the images."""
    return ModelSpec.parse(opts.model).files() if isinstance(opts.model, (str, Path)) else []


def check_size(pair: RasterPair, max_pixels: int | None) -> None:
    """Refuse a pair larger than `max_pixels` (MAX_PIXELS when None) before any work: a header may claim
    far more pixels than its file holds (sparse or hostile TIFFs, a /vsizip/ member), and nothing else stops
    a run that would take days."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    height, width = pair.shape
    if height * width > limit:
        raise InputError(f"{pair.sources[0]}: {width}x{height} pixels ({height * width:,}) is more than the limit of "
                         f"{limit:,}; pass --max-pixels {height * width} to process it anyway")


def size_line(pair: RasterPair, plan: "ScoringPlan", opts: DetectOptions, done_rows: int) -> str:
    """One line of the work ahead: the size, the tiles and the time they will take, estimated from one tile
    read and scored now, plus the writing a pixel costs (WRITE_S_PER_PX)."""
    height, width = pair.shape
    left = [t for row in plan.rows for t in row if t.row_stop > done_rows]
    tile = max(left or plan.rows[0], key=lambda t: t.height * t.width)
    start = time.perf_counter()
    plan.predictor([pair.read(tile, native=True)[0]])
    tile_s = time.perf_counter() - start
    seconds = tile_s * len(left) / max(1, opts.workers) + WRITE_S_PER_PX * height * width
    return (f"{plan.detector.name}: {width}x{height} px ({height * width / 1e6:,.3g} Mpx), {pair.info.count} "
            f"band(s), {len(left):,} tile(s): about {duration(seconds)} (one tile took {tile_s:.2g} s here)")


def duration(seconds: float) -> str:
    """'40 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.2g} h" if seconds < 2 * 86400 else f"{seconds / 86400:.2g} days"


def mapping_unit(opts: DetectOptions, gsd: float | None, georeferenced: bool) -> tuple[int, float]:
    """(minimum pixels, minimum m²) of a region (`cdtool.inference.mapping_unit`). Checked before any work, so
    a bad value costs nothing."""
    if opts.max_regions is not None and opts.max_regions < 1:
        raise OptionError("max_regions", f"must be at least 1, got {opts.max_regions}")
    if opts.mmu_mask and not opts.polygons:
        raise InputError("--mmu-mask applies the minimum mapping unit through the polygons; drop --no-polygons")
    return region_unit(opts.min_pixels, opts.min_area, gsd, georeferenced)


def input_domain(pair: RasterPair, gsd: float | None) -> InputDomain:
    info = pair.info
    source = "--gsd" if gsd is not None else ("transform" if info.gsd is not None else "unknown")
    return InputDomain(info.count, info.band_names, info.colors, info.dtype,
                       gsd if gsd is not None else info.gsd, source, panorama=pair.wrap,
                       sensors=pair.sensor_difference())


@dataclass
class _Scores:
    """What the scoring pass leaves for the threshold pass."""
    path: Path  # the staged score map: a VRT of the journal's bands, with overviews
    valid_pixels: int
    histogram: ScoreHistogram
    resumed_rows: int


def _score_pass(pair: RasterPair, plan: ScoringPlan, opts: DetectOptions, journal: Journal, scratch: Path,
                canvas: PreviewCanvas | None) -> _Scores:
    """The runner's row bands -> the journal (whose bands are the staged score map), its overviews, the
    histogram and the preview; a resumed run replays its journal first and scores only the rows after it."""
    done = journal.rows_done  # rows an interrupted run finished (0 unless --resume)
    staged, stats = StagedScores(journal, scratch / "change_prob.vrt", pair), ScoreStats()
    sinks = [staged, stats] + ([PreviewScores(canvas)] if canvas is not None else [])
    how = RunOptions(opts.readers, opts.workers, opts.scheduler, opts.progress, "detect")
    run(pair, plan, sinks, how, done, journal.replay(), preview=canvas.grid if canvas is not None else None)
    return _Scores(staged.path, stats.valid_pixels, stats.histogram, done)


@dataclass
class _Changes:
    """What the threshold pass found."""
    threshold: float
    changed_pixels: int
    regions: int
    min_pixels: int
    min_area: float
    largest_regions: list
    polygons_skipped: str | None = None  # why no polygons were written (too many regions)
    region_pixels: int | None = None  # changed pixels in regions that make the mapping unit (None: unknown)


def _threshold_pass(pair: RasterPair, scores: _Scores, threshold: float, gsd: float | None, opts: DetectOptions,
                    mask_path: Path, gpkg_path: Path, canvas: PreviewCanvas | None) -> _Changes:
    """The staged score map read back band by band -> the mask (cleaned if asked), its polygons and the
    preview's mask panel."""
    info, (height, width) = pair.info, pair.shape
    georef = info.georeferenced
    pixel_map_area = abs(info.transform.determinant) if georef else 1.0  # PIXEL_GRID's unit is one pixel
    ground_scale = gsd * gsd / pixel_map_area if gsd and pixel_map_area else None
    min_pixels, min_area = mapping_unit(opts, gsd, georef)
    if opts.polygons:
        from cdtool.io.vectors import MAX_REGIONS, Polygonizer  # GDAL's vector stack loads only where asked for
    polys = (Polygonizer(gpkg_path, info.crs, info.transform if georef else PIXEL_GRID, min_pixels, min_area,
                         ground_scale=ground_scale, max_regions=opts.max_regions or MAX_REGIONS)
             if opts.polygons else None)
    changed = 0

    def thresholded():
        for row, score in tqdm(read_bands(scores.path), total=-(-height // BLOCK), desc="mask", unit="band",
                               disable=not opts.progress, leave=False):
            valid = score != PROB_NODATA
            yield row, valid & (score >= threshold), valid, score

    with BandWriter(mask_path, height, width, "uint8", MASK_NODATA, info.crs, info.transform, "change mask") as mask:
        for row, hit, valid, score in opened_bands(thresholded(), opts.clean):
            changed += int(hit.sum())
            mask.write(np.where(valid, hit, MASK_NODATA).astype(np.uint8))
            if canvas is not None:
                canvas.add_band(row, hit, valid, "mask")
            if polys is not None:
                polys.add(row, hit, np.where(valid, score, 0.0).astype(np.float32))
        mask.close()
    if polys is None:
        return _Changes(threshold, changed, 0, min_pixels, min_area, [])
    regions = polys.close()
    if polys.overflow:
        return _Changes(threshold, changed, regions, min_pixels, min_area, [],
                        too_many_regions(regions, polys.max_regions, min_area))
    if opts.mmu_mask:
        from cdtool.io.vectors import LAYER

        filtered = mask_path.with_name("change_mask_mmu.tif")
        changed = mask_to_regions(mask_path, gpkg_path, LAYER, polys.transform, filtered, canvas)
        filtered.replace(mask_path)
    return _Changes(threshold, changed, regions, min_pixels, min_area, polys.largest_regions(),
                    region_pixels=polys.kept_pixels)


def too_many_regions(regions: int, limit: int, min_area: float) -> str:
    """The one line saying why no polygons were written, and what gives fewer regions."""
    unit = f" (now {min_area:g} m²)" if min_area else ""
    return (f"polygons not written: {regions:,} change regions, more than the limit of {limit:,} (--max-regions); "
            f"the score map and mask are complete. For fewer regions raise --min-area{unit}, remove specks with "
            "--clean 1, or skip polygons with --no-polygons")


def _run(pair: RasterPair, choice: Choice, gsd: float | None, device, opts: DetectOptions, outs: OutputSet,
         scratch: Path, inputs: list[Path]) -> DetectResult:
    """Plan, run, threshold, write."""
    info, (height, width) = pair.info, pair.shape
    plan = plan_scoring(pair, choice, device, opts)
    journal = Journal(outs.folder, fingerprint([*inputs, *pair.sources], plan.settings), opts.resume)
    canvas = PreviewCanvas(PreviewGrid.for_raster(height, width, info.band_names)) if opts.preview else None
    if opts.announce is not None:
        opts.announce(size_line(pair, plan, opts, journal.rows_done))
    scores = _score_pass(pair, plan, opts, journal, scratch, canvas)
    flow_stats = (write_flow(pair, plan, outs.path("flow.tif"),
                             RunOptions(opts.readers, opts.workers, opts.scheduler, opts.progress, "flow"))
                  if opts.flow else None)
    threshold = _pick_threshold(pair, scores, opts, plan.detector)
    changes = _write_changes(pair, scores, threshold, gsd, opts, outs, scratch, canvas, plan.detector.name)
    pixel_m2 = gsd * gsd if gsd else None
    in_regions = changes.region_pixels
    summary = {"changed_area_m2": changes.changed_pixels * pixel_m2 if pixel_m2 else None,
               "valid_area_m2": scores.valid_pixels * pixel_m2 if pixel_m2 else None,
               "region_pixels": in_regions,  # changed pixels in regions that make the unit (the polygons')
               "region_area_m2": in_regions * pixel_m2 if pixel_m2 and in_regions is not None else None,
               "min_area_m2": changes.min_area or None, "min_pixels": changes.min_pixels,
               "mmu_mask": opts.mmu_mask, "largest_regions": changes.largest_regions}
    return DetectResult({}, plan.detector.name, threshold, height, width, scores.valid_pixels,
                        changes.changed_pixels, changes.regions, 0.0,
                        {"tile": plan.tile, "overlap": plan.overlap, "halo": plan.halo, "device": str(device),
                         "crs": info.crs.to_string() if info.crs else None, "bands": info.band_names,
                         "gsd": gsd, "summary": summary, "model_choice": choice.record(),
                         "bad_blocks": len(pair.bad_blocks), "resumed_rows": scores.resumed_rows, "flow": flow_stats,
                         "polygons_skipped": changes.polygons_skipped,
                         "warnings": threshold_warnings(opts, plan.detector, changes, scores),
                         "alignment": alignment_record(pair)})


# an automatic threshold that flags more than this share of the valid pixels has likely split the scene
# itself (a bimodal land / water histogram) rather than changed from unchanged ground
SUSPICIOUS_SHARE = 1 / 3


def threshold_warnings(opts: DetectOptions, detector: Detector, changes: _Changes, scores: _Scores) -> list[str]:
    """A warning when a per-image method put the threshold where it flags a third of the scene or more."""
    method = opts.threshold if opts.threshold is not None else detector.threshold
    share = changes.changed_pixels / scores.valid_pixels if scores.valid_pixels else 0.0
    if method not in METHODS or share <= SUSPICIOUS_SHARE:
        return []
    return [f"the automatic threshold ({method}) is {changes.threshold:.3f} and flags {share:.0%} of the valid "
            "pixels: more change than most scenes hold; look at the preview and set --threshold (a number), or "
            "try another method"]


def _pick_threshold(pair: RasterPair, scores: _Scores, opts: DetectOptions, detector: Detector) -> float:
    """The threshold asked for, the model's own, or the one a method picks from the histogram."""
    if scores.valid_pixels == 0:
        raise InputError(f"{pair.before_path}, {pair.after_path}: no pixel is valid in both dates "
                         "(all nodata, masked or NaN)")
    threshold = opts.threshold if opts.threshold is not None else detector.threshold
    threshold = scores.histogram.pick(threshold) if threshold in METHODS else float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise OptionError("threshold", f"must lie in [0, 1] or be one of {', '.join(METHODS)}, got {threshold}")
    return threshold


def _write_changes(pair: RasterPair, scores: _Scores, threshold: float, gsd: float | None, opts: DetectOptions,
                   outs: OutputSet, scratch: Path, canvas: PreviewCanvas | None, model: str) -> _Changes:
    """The score map, mask, polygons and preview into the outputs: staged (the journal's bands, the mask in
    the scratch folder), then copied as Cloud-optimised GeoTIFFs (or PNGs)."""
    mask_path = scratch / "change_mask.tif"
    gpkg_path = (outs.path("changes.gpkg") if opts.polygons and opts.vector_format == "gpkg"
                 else scratch / "changes.gpkg")
    tags = {"model": model, "threshold": f"{threshold:.6g}", "before": str(pair.before_path),
            "after": str(pair.after_path), "software": f"cdtool {__version__}"}
    copy_scores = _score_output(outs, pair, scores, threshold, tags)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdtool-scores-out") as pool:
        # the score map is final: GDAL copies it into its output (without the GIL) while the mask pass reads it
        copying = pool.submit(copy_scores)
        changes = _threshold_pass(pair, scores, threshold, gsd, opts, mask_path, gpkg_path, canvas)
        copying.result()
    polygons = opts.polygons and not changes.polygons_skipped
    if polygons and opts.dst_crs is not None:
        from cdtool.io.vectors import reproject_layer

        reproject_layer(gpkg_path, opts.dst_crs)
    if polygons and opts.vector_format == "geojson":
        from cdtool.io.vectors import to_geojson

        to_geojson(gpkg_path, outs.path("changes.geojson"))
    _write_mask(outs, pair, scores, changes, mask_path, tags)
    if polygons:
        write_text(outs.path("changes.qml"), polygons_qml(gsd if pair.info.georeferenced else None))
    elif opts.polygons:  # too many regions: an older run's polygons must not stay beside these rasters
        outs.drop(f"changes.{opts.vector_format}", "changes.qml")
    if canvas is not None:
        canvas.fill_missing_inputs(pair)  # rows a resumed run did not read again
        canvas.write(outs.path("preview.png"), threshold)
    return changes


def _score_output(outs: OutputSet, pair: RasterPair, scores: _Scores, threshold: float,
                  tags: dict) -> Callable[[], None]:
    """Tag the staged score map now and return the copy into the outputs (a Cloud-optimised GeoTIFF for a
    georeferenced pair, else an 8-bit PNG with a world file), which only reads it; with its QGIS style."""
    if pair.info.georeferenced:
        tag_raster(scores.path, tags, scores.histogram.statistics())
        write_text(outs.path("change_prob.qml"), heatmap_qml(threshold))
        return lambda: copy_cog(scores.path, outs.path("change_prob.tif"), Resampling.average)
    write_text(outs.path("change_prob.pgw"), world_file(PIXEL_GRID))
    write_text(outs.path("change_prob.qml"), heatmap_qml(threshold, scale=255, alpha_band=2))
    return lambda: tif_to_png(scores.path, outs.path("change_prob.png"), "prob")


def _write_mask(outs: OutputSet, pair: RasterPair, scores: _Scores, changes: _Changes, mask_path: Path,
                tags: dict) -> None:
    """The staged mask into the outputs, as the score map; with its QGIS style."""
    if pair.info.georeferenced:
        write_cog(mask_path, outs.path("change_mask.tif"), Resampling.nearest, tags,
                  {"STATISTICS_MINIMUM": 0, "STATISTICS_MAXIMUM": 1,
                   "STATISTICS_MEAN": changes.changed_pixels / scores.valid_pixels}, MASK_COLORS)
        write_text(outs.path("change_mask.qml"), mask_qml())
    else:
        tif_to_png(mask_path, outs.path("change_mask.png"), "mask")
        write_text(outs.path("change_mask.pgw"), world_file(PIXEL_GRID))
        write_text(outs.path("change_mask.qml"), mask_qml(changed_value=255, alpha_band=2))


def _prob_name(pair: RasterPair) -> str:
    return "change_prob.tif" if pair.info.georeferenced else "change_prob.png"


def _write_layer_metadata(outs: OutputSet, result: DetectResult, pair: RasterPair, opts: DetectOptions) -> None:
    """`<layer>.qmd` beside each layer: the title and abstract QGIS shows in its properties, naming the run."""
    run_name = outs.folder.name
    about = (f"cdtool {__version__}, model {result.model}, threshold {result.threshold:.3f}: "
             f"{pair.before_path} -> {pair.after_path}")
    layers = [("change_prob", f"{run_name}: change score (mask at {result.threshold:.3f})"),
              ("change_mask", f"{run_name}: change mask")]
    if opts.polygons and not result.extra.get("polygons_skipped"):
        layers.append(("changes", f"{run_name}: change regions"))
    elif opts.polygons:
        outs.drop("changes.qmd")
    for stem, title in layers:
        write_text(outs.path(f"{stem}.qmd"), layer_metadata_qmd(title, about))


def _write_summary(path: Path, result: DetectResult, before, after, opts: DetectOptions) -> dict:
    summary = {
        "before": str(before), "after": str(after), "model": result.model, "threshold": result.threshold,
        "height": result.height, "width": result.width, "valid_pixels": result.valid_pixels,
        "changed_pixels": result.changed_pixels, "changed_share": result.changed_share,
        "regions": result.regions, "seconds": round(result.seconds, 3),
        "options": {k: v for k, v in asdict(opts).items() if k not in ("progress", "announce", "record")},
        **result.extra, **opts.record,
    }
    text = json.dumps(summary, indent=2, default=str)
    path.write_text(text)
    return json.loads(text)

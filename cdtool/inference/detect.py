"""`cdtool detect` as a library call: two images in, change score map, mask and polygons out.

open_pair → tile grid (plan_scoring) → batches (read ahead by reader threads) → model → stitcher → journal
bands (the staged score map), its overviews, histogram and preview samples (_score_pass), every stage
streaming, so peak memory depends on tile size, batch and raster width, not on raster size. A second
streaming pass over the staged score map applies the threshold (fixed, or Otsu's from the histogram gathered
in the first pass) to write the mask and the polygons (_threshold_pass), while a thread copies the staged
score map into its output (_score_output); the mask follows (_write_mask).
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
from cdtool.errors import InputError, NothingToDo
from cdtool.inference.cleanup import opened_bands
from cdtool.inference.detector import Choice, Detector, choose_detector, pick_device
from cdtool.inference.flow import flow_model, write_flow
from cdtool.inference.predictor import Predictor, fit_to_pair, usable_cores
from cdtool.inference.rescale import Rescaled
from cdtool.inference.scaleout import capped_workers, check_scheduler, dask_rows, local_rows
from cdtool.inference.journal import JOURNAL, Journal, discard_journal, fingerprint
from cdtool.inference.stitcher import BLENDS, Stitcher
from cdtool.inference.street import alignment_record, check_scene, is_street, street_choice
from cdtool.inference.threshold import METHODS, ScoreHistogram
from cdtool.io.outputs import OutputSet
from cdtool.io.pair import RasterPair, open_pair
from cdtool.io.preview import PreviewCanvas, PreviewGrid
from cdtool.io.qgis_style import heatmap_qml, mask_qml, polygons_qml, world_file, write_text
from cdtool.io.staging import OverviewPyramid, write_mosaic
from cdtool.io.writers import (BLOCK, GDAL_ENV, MASK_COLORS, MASK_NODATA, PROB_NODATA, BandWriter, copy_cog,
                               read_bands, tag_raster, tif_to_png, write_cog)
from cdtool.normalization import Normalizer
from cdtool.windows import MAX_PIXELS, fitted_grid


DEFAULT_OVERLAP = 64  # pixels of blending between tiles of a learned model, whose reach exceeds its halo
# Tiles per model call by default. A GPU needs batches to be kept busy; on the CPU one tile already fills every
# core, and a batch only multiplies the activations held (8192² CVA, batch 8 -> 1: 11.6 -> 9.3 s, 726 -> 460
# MiB; 2048² U-Net: 8.3 -> 6.1 s, 1936 -> 610 MiB).
CPU_BATCH, GPU_BATCH = 1, 8


@dataclass
class DetectOptions:
    model: str | Detector | None = None  # registry name, checkpoint, a ready Detector; None: the default
    tile: int = 512
    overlap: int | None = None  # None: twice the model's halo where that is its whole reach, else DEFAULT_OVERLAP
    threshold: float | str | None = None  # None: the model's own; "otsu", "kmeans" or "gmm": per image
    align: bool = False
    bands: list[int] | None = None
    device: str | None = None
    batch_size: int | None = None  # tiles per model call; None: CPU_BATCH on the CPU, GPU_BATCH on a GPU
    blend: str = "cosine"
    wrap: bool = False
    overwrite: bool = False
    min_pixels: int | None = None  # None: DEFAULT_MIN_PIXELS, or 1 when min_area is given
    min_area: float | None = None  # square metres; None: DEFAULT_MIN_AREA_M2 and DEFAULT_MIN_PIXELS
    clean: int = 0  # radius in pixels of a morphological opening of the mask (0: none)
    polygons: bool = True
    preview: bool = True  # preview.png: before, after, score and mask side by side
    vector_format: str = "gpkg"  # changes.gpkg, or changes.geojson (RFC 7946, WGS84, for georeferenced pairs)
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


# The default minimum mapping unit of the polygons (the mask keeps every pixel): 4 pixels, and 20 m² where
# the pixel size is known, so 0.5 m imagery drops sub-car specks and 30 m imagery single pixels.
DEFAULT_MIN_PIXELS = 4
DEFAULT_MIN_AREA_M2 = 20.0
# Where GIS software puts a raster without georeference: column c, row r at x = c, y = -r (QGIS, GDAL's
# default for such files). Polygons and the PNGs' world files use it, so they land on each other.
PIXEL_GRID = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
VECTOR_FORMATS = ("gpkg", "geojson")
# Seconds per pixel of what follows scoring (the mask pass, the COG copies, polygons), measured on 2 cores (8192²
# cva: 11.4 s in all, of which 4.1 s reading and scoring); the estimate's scoring part is timed on the input.
WRITE_S_PER_PX = 1e-7


def output_names(georeferenced: bool, polygons: bool, preview: bool = True, vector_format: str = "gpkg",
                 flow: bool = False) -> list[str]:
    rasters = (["change_prob.tif", "change_prob.qml", "change_mask.tif", "change_mask.qml"] if georeferenced
               else ["change_prob.png", "change_prob.pgw", "change_prob.qml",
                     "change_mask.png", "change_mask.pgw", "change_mask.qml"])
    vectors = [f"changes.{vector_format}", "changes.qml"] if polygons else []
    return rasters + vectors + (["flow.tif", "flow.qml"] if flow else []) + (["preview.png"] if preview else []) \
        + ["detect.json"]


def detect(before: str | Path, after: str | Path, out: str | Path, options: DetectOptions | None = None) -> DetectResult:
    """Compare BEFORE and AFTER and write the change outputs into folder `out`."""
    opts = options or DetectOptions()
    start = time.perf_counter()
    if opts.blend not in BLENDS:
        raise InputError(f"--blend must be one of {', '.join(BLENDS)}, got {opts.blend!r}")
    if opts.tile < 16:
        raise InputError(f"--tile must be at least 16 pixels, got {opts.tile}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if opts.readers is not None and opts.readers < 1:
        raise InputError(f"--readers must be at least 1, got {opts.readers}")
    if opts.workers < 0:
        raise InputError(f"--workers must be 0 (in this process) or more, got {opts.workers}")
    if not 0 <= opts.clean <= 10:
        raise InputError(f"--clean must be a radius from 0 to 10 pixels, got {opts.clean}")
    if opts.vector_format not in VECTOR_FORMATS:
        raise InputError(f"--format must be one of {', '.join(VECTOR_FORMATS)}, got {opts.vector_format!r}")
    if opts.gsd is not None and not (math.isfinite(opts.gsd) and opts.gsd > 0):
        raise InputError(f"--gsd must be a positive number of metres per pixel, got {opts.gsd}")
    if opts.overlap is not None and opts.overlap < 0:
        raise InputError(f"--overlap must be 0 or more pixels, got {opts.overlap}")
    if opts.max_pixels is not None and opts.max_pixels < 1:
        raise InputError(f"--max-pixels must be a positive number of pixels, got {opts.max_pixels}")
    check_scene(opts.scene)
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
        pair, domain, choice, opts = _open_and_choose(before, after, opts)
    with Env(**GDAL_ENV), pair:
        check_size(pair, opts.max_pixels)
        notes += pair.notes
        mapping_unit(opts, domain.gsd, pair.info.georeferenced)  # refuse a bad --min-area before any work
        trained_on = choice.detector.card.band_count
        if trained_on is not None and trained_on != pair.info.count:
            raise InputError(f"{pair.before_path}: has {pair.info.count} bands but model {choice.detector.name} was "
                             f"trained on {trained_on}; pick bands with --bands or use a label-free model")
        if opts.flow:
            flow_model(choice.detector.model)  # refuse a model without flow before any work
        names = output_names(pair.info.georeferenced, opts.polygons, opts.preview, opts.vector_format, opts.flow)
        inputs = [*pair.files(), *_checkpoint(opts)]
        with OutputSet(out, names, opts.overwrite, inputs, pair.folders()) as outs:
            if opts.polygons:
                from cdtool.io.vectors import check_gpkg_writable

                check_gpkg_writable(outs.folder)  # before the work: GDAL's SQLite refuses some paths
            scratch = Path(tempfile.mkdtemp(prefix=".cdtool-work-", dir=outs.folder))
            try:
                result = _run(pair, choice, domain.gsd, device, opts, outs, scratch, inputs)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            result.seconds = time.perf_counter() - start
            result.extra["notes"] = notes
            _write_summary(outs.path("detect.json"), result, before, after, opts)
            result.outputs = outs.commit()
            discard_journal(outs.folder)  # complete: nothing to resume
    return result


def _open_and_choose(before, after, opts: DetectOptions) -> tuple[RasterPair, InputDomain, Choice, DetectOptions]:
    """Open the pair, choose its detector, and where a Sentinel-2 model reads its bands by name (another order,
    B10 or extra layers in the input), open it again with just those bands, in the model's order."""
    pair = open_pair(before, after, bands=opts.bands, align=opts.align, wrap=opts.wrap,
                     skip_bad_windows=opts.skip_bad_windows, offset="auto")  # uint32 near 2^31: exact in float32
    try:
        domain = input_domain(pair, opts.gsd)
        street = opts.model is None and is_street(opts.scene, pair.info.georeferenced, opts.wrap)
        choice = (street_choice(domain, opts.scene) if street
                  else choose_detector(opts.model, domain, opts.native_scale))
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
                     skip_bad_windows=opts.skip_bad_windows, offset="auto")
    return pair, input_domain(pair, opts.gsd), choice, opts


def _complete(out: Path) -> bool:
    """Whether `out` holds a finished run: its summary is written last and the journal removed once the outputs
    are in place, so a --resume there has nothing to continue."""
    return (out / "detect.json").is_file() and not (out / JOURNAL / "state.json").exists()


def _checkpoint(opts: DetectOptions) -> list[Path]:
    """The checkpoint file --model names, if it names one: an input like the images."""
    return [Path(opts.model)] if isinstance(opts.model, (str, Path)) and Path(opts.model).is_file() else []


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
    """(minimum pixels, minimum m²) of a polygon: the options given, else the defaults; for PNG pairs the
    area becomes pixels through --gsd. Checked before any work, so a bad value costs nothing."""
    if opts.min_pixels is not None and opts.min_pixels < 1:
        raise InputError(f"--min-pixels must be at least 1, got {opts.min_pixels}")
    if opts.max_regions is not None and opts.max_regions < 1:
        raise InputError(f"--max-regions must be at least 1, got {opts.max_regions}")
    min_area = opts.min_area if opts.min_area is not None else (DEFAULT_MIN_AREA_M2 if gsd else 0.0)
    if not (math.isfinite(min_area) and min_area >= 0):
        raise InputError(f"--min-area must be zero or a positive area in square metres, got {min_area}")
    if min_area and not gsd:
        raise InputError("--min-area needs the pixel size: these inputs have no georeference; pass --gsd")
    default = DEFAULT_MIN_PIXELS if opts.min_area is None else 1  # None means not set: 1 is a real choice
    min_pixels = default if opts.min_pixels is None else opts.min_pixels
    if min_area and not georeferenced:
        min_pixels, min_area = max(min_pixels, int(np.ceil(min_area / (gsd * gsd)))), 0.0
    return min_pixels, min_area


def input_domain(pair: RasterPair, gsd: float | None) -> InputDomain:
    info = pair.info
    source = "--gsd" if gsd is not None else ("transform" if info.gsd is not None else "unknown")
    return InputDomain(info.count, info.band_names, info.colors, info.dtype,
                       gsd if gsd is not None else info.gsd, source, panorama=pair.wrap)


@dataclass
class ScoringPlan:
    """How a pair is scored: the detector as run (rescaled to its GSD where needed) and its tile grid."""
    detector: Detector
    predictor: Predictor
    tile: int
    overlap: int
    halo: int
    pad: int  # columns of circular padding each side (--wrap)
    rows: list  # the grid: rows of Tiles
    batch: int  # tiles per model call
    settings: dict  # what a resumed run must match


def plan_scoring(pair: RasterPair, choice: Choice, device, opts: DetectOptions) -> ScoringPlan:
    height, width = pair.shape
    detector = choice.detector
    normalizer = Normalizer(detector.normalization, pair)
    if getattr(detector.model, "needs_fit", False):
        fit_to_pair(detector.model, pair, normalizer)
    # windows keep the model's size: a model run at 3x the input's resolution gets windows a third as large
    tile, overlap = opts.tile, opts.overlap
    if overlap is None:  # a model that sees no further than its halo needs no blending zone beyond it
        overlap = 0 if detector.exact_halo else DEFAULT_OVERLAP
    if choice.scale != 1.0:
        detector = Detector(detector.name, Rescaled(detector.model, choice.scale), detector.normalization,
                            detector.threshold, detector.bands, detector.meta, detector.card)
        tile = max(32, round(opts.tile / choice.scale))
        overlap = round(overlap / choice.scale)
    halo = detector.halo
    overlap = max(overlap, 2 * halo)
    if overlap >= tile:
        raise InputError(f"--overlap ({overlap}, at least twice the model's halo of {halo}) must be smaller "
                         f"than --tile ({tile})")
    # tiles start on the model's pooling grid (in its own pixels), so every tile sees the features the whole
    # image would give it: U-Nets and centre-patch scorers are equivariant only to shifts by that multiple
    align = max(1, round(choice.detector.size_multiple / choice.scale))
    pad = min(-(-overlap // align) * align, width) if opts.wrap else 0
    rows = fitted_grid(height, width + 2 * pad, tile, overlap, col_begin=-pad, align=align)
    if halo and rows[0][0].height < height and rows[0][0].height <= 2 * halo:
        raise InputError(f"--tile {tile} is too small for model {detector.name} (halo {halo})")
    batch = opts.batch_size or (CPU_BATCH if device.type == "cpu" else GPU_BATCH)
    settings = {"model": detector.name, "tile": tile, "overlap": overlap, "blend": opts.blend,
                "batch": batch, "bands": opts.bands, "align": opts.align, "wrap": opts.wrap,
                "scale": choice.scale, "device": device.type}
    return ScoringPlan(detector, Predictor(detector, normalizer, device), tile, overlap, halo, pad, rows, batch,
                       settings)


@dataclass
class _Scores:
    """What the scoring pass leaves for the threshold pass."""
    path: Path  # the staged score map: a VRT of the journal's bands, with overviews
    valid_pixels: int
    histogram: ScoreHistogram
    resumed_rows: int


def _score_pass(pair: RasterPair, plan: ScoringPlan, opts: DetectOptions, journal: Journal, scratch: Path,
                canvas: PreviewCanvas | None) -> _Scores:
    """Tiles read ahead -> model -> stitched row bands -> the journal (whose bands are the staged score map),
    its overviews, the histogram and the preview; a resumed run replays its journal first and scores only the
    rows after it."""
    info, (height, width) = pair.info, pair.shape
    rows, done = plan.rows, journal.rows_done  # rows an interrupted run finished (0 unless --resume)
    first = next((i for i, row in enumerate(rows) if max(t.row_stop for t in row) > done), len(rows))
    stitcher = Stitcher(height, width, rows[0][0].height, halo=plan.halo, blend=opts.blend, wrap_pad=plan.pad,
                        start_row=done)
    # overviews only for a Cloud-optimised GeoTIFF; a PNG output has none
    pyramid = OverviewPyramid(scratch, height, width, PROB_NODATA, info.crs, info.transform) \
        if info.georeferenced else None
    scores = _Scores(scratch / "change_prob.vrt", 0, ScoreHistogram(), done)

    def emit(bands, save: bool = True) -> None:
        for band in bands:
            if save:
                journal.save(band)
            scores.valid_pixels += int(band.valid.sum())
            scores.histogram.add(band.score[band.valid])
            if pyramid is not None:
                pyramid.add(band.score, band.valid)
            if canvas is not None:
                canvas.add_band(band.row, band.score, band.valid, "score")

    try:
        emit(journal.replay(), save=False)
        todo = rows[first:]
        sampling = canvas.grid if canvas is not None else None
        readers = opts.readers or (1 if plan.predictor.device.type == "cpu" else min(4, usable_cores()))
        bar = tqdm(total=sum(len(r) for r in todo), unit="tile", desc="detect", disable=not opts.progress, leave=False)
        scored = (dask_rows(pair, plan.predictor, todo, opts.workers, opts.scheduler, sampling)
                  if opts.workers or opts.scheduler
                  else local_rows(pair, plan.predictor, todo, plan.batch, readers, sampling)) if todo else iter(())
        try:
            for row_index, results, row_complete in scored:
                for t, score, valid, samples in results:
                    stitcher.add(t, score, valid)
                    if canvas is not None:
                        canvas.add_inputs(t, samples)
                bar.update(len(results))
                if row_complete and first + row_index + 1 < len(rows):
                    emit(stitcher.flush(rows[first + row_index + 1][0].row))
            emit(stitcher.finish())
        finally:
            journal.close()  # on failure too: what was finished stays resumable
        bar.close()
        overviews = pyramid.close() if pyramid is not None else []
    except BaseException:
        if pyramid is not None:
            pyramid.abort()
        raise
    write_mosaic(scores.path, journal.pieces(height), height, width, PROB_NODATA, info.crs, info.transform,
                 overviews, "change score")
    return scores


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


def _threshold_pass(pair: RasterPair, scores: _Scores, threshold: float, gsd: float | None, opts: DetectOptions,
                    mask_path: Path, gpkg_path: Path, canvas: PreviewCanvas | None) -> _Changes:
    """The staged score map read back band by band -> the mask (cleaned if asked), its polygons and the
    preview's mask panel."""
    info, (height, width) = pair.info, pair.shape
    georef = info.georeferenced
    pixel_map_area = abs(info.transform.determinant)
    ground_scale = gsd * gsd / pixel_map_area if gsd and georef and pixel_map_area else None
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
    regions = polys.close() if polys is not None else 0
    return _Changes(threshold, changed, regions, min_pixels, min_area,
                    polys.largest_regions() if polys is not None else [],
                    too_many_regions(regions, polys.max_regions, min_area) if polys is not None and polys.overflow
                    else None)


def too_many_regions(regions: int, limit: int, min_area: float) -> str:
    """The one line saying why no polygons were written, and what gives fewer regions."""
    unit = f" (now {min_area:g} m²)" if min_area else ""
    return (f"polygons not written: {regions:,} change regions, more than the limit of {limit:,} (--max-regions); "
            f"the score map and mask are complete. For fewer regions raise --min-area{unit}, remove specks with "
            "--clean 1, or skip polygons with --no-polygons")


def _run(pair: RasterPair, choice: Choice, gsd: float | None, device, opts: DetectOptions, outs: OutputSet,
         scratch: Path, inputs: list[Path]) -> DetectResult:
    info, (height, width) = pair.info, pair.shape
    plan = plan_scoring(pair, choice, device, opts)
    detector = plan.detector
    journal = Journal(outs.folder, fingerprint([*inputs, *pair.sources], plan.settings), opts.resume)
    canvas = PreviewCanvas(PreviewGrid.for_raster(height, width, info.band_names)) if opts.preview else None
    # staged (the journal's bands, the mask in the scratch folder), then copied as Cloud-optimised GeoTIFFs (or
    # PNGs) into the outputs
    mask_path = scratch / "change_mask.tif"
    if opts.announce is not None:
        opts.announce(size_line(pair, plan, opts, journal.rows_done))
    scores = _score_pass(pair, plan, opts, journal, scratch, canvas)
    flow_stats = (write_flow(pair, detector.model, plan.predictor.normalizer, device, outs.path("flow.tif"),
                             plan.tile, plan.overlap, opts.blend) if opts.flow else None)
    if scores.valid_pixels == 0:
        raise InputError(f"{pair.before_path}, {pair.after_path}: no pixel is valid in both dates "
                         "(all nodata, masked or NaN)")

    threshold = opts.threshold if opts.threshold is not None else detector.threshold
    threshold = scores.histogram.pick(threshold) if threshold in METHODS else float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold must lie in [0, 1] or be one of {', '.join(METHODS)}, got {threshold}")
    gpkg_path = (outs.path("changes.gpkg") if opts.polygons and opts.vector_format == "gpkg"
                 else scratch / "changes.gpkg")
    tags = {"model": detector.name, "threshold": f"{threshold:.6g}", "before": str(pair.before_path),
            "after": str(pair.after_path), "software": f"cdtool {__version__}"}
    copy_scores = _score_output(outs, pair, scores, threshold, tags)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdtool-scores-out") as pool:
        # the score map is final: GDAL copies it into its output (without the GIL) while the mask pass reads it
        copying = pool.submit(copy_scores)
        changes = _threshold_pass(pair, scores, threshold, gsd, opts, mask_path, gpkg_path, canvas)
        copying.result()
    georef = info.georeferenced
    polygons = opts.polygons and not changes.polygons_skipped
    if polygons and opts.vector_format == "geojson":
        from cdtool.io.vectors import to_geojson

        to_geojson(gpkg_path, outs.path("changes.geojson"), georef)
    _write_mask(outs, pair, scores, changes, mask_path, tags)
    if polygons:
        write_text(outs.path("changes.qml"), polygons_qml())
    elif opts.polygons:  # too many regions: an older run's polygons must not stay beside these rasters
        outs.drop(f"changes.{opts.vector_format}", "changes.qml")
    if canvas is not None:
        canvas.fill_missing_inputs(pair)  # rows a resumed run did not read again
        canvas.write(outs.path("preview.png"), threshold)
    pixel_m2 = gsd * gsd if gsd else None
    summary = {"changed_area_m2": changes.changed_pixels * pixel_m2 if pixel_m2 else None,
               "valid_area_m2": scores.valid_pixels * pixel_m2 if pixel_m2 else None,
               "min_area_m2": changes.min_area or None, "min_pixels": changes.min_pixels,
               "largest_regions": changes.largest_regions}
    return DetectResult({}, detector.name, threshold, height, width, scores.valid_pixels, changes.changed_pixels,
                        changes.regions, 0.0,
                        {"tile": plan.tile, "overlap": plan.overlap, "halo": plan.halo, "device": str(device),
                         "crs": info.crs.to_string() if info.crs else None, "bands": info.band_names,
                         "gsd": gsd, "summary": summary, "model_choice": choice.record(),
                         "bad_blocks": len(pair.bad_blocks), "resumed_rows": scores.resumed_rows, "flow": flow_stats,
                         "polygons_skipped": changes.polygons_skipped,
                         "alignment": alignment_record(pair)})


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


def _write_summary(path: Path, result: DetectResult, before, after, opts: DetectOptions) -> None:
    summary = {
        "before": str(before), "after": str(after), "model": result.model, "threshold": result.threshold,
        "height": result.height, "width": result.width, "valid_pixels": result.valid_pixels,
        "changed_pixels": result.changed_pixels, "changed_share": result.changed_share,
        "regions": result.regions, "seconds": round(result.seconds, 3),
        "options": {k: v for k, v in asdict(opts).items() if k not in ("progress", "announce", "record")},
        **result.extra, **opts.record,
    }
    path.write_text(json.dumps(summary, indent=2, default=str))

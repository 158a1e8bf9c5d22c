"""One tiled runner for every pass that runs a model over a pair: detection's scores, a joint model's flow,
and evaluation against a truth mask.

`plan_scoring` lays the grid once (the model's tile, overlap, halo and pooling alignment, rescaled to its
GSD); `run` walks it (tiles read ahead by reader threads, or scored as Dask tasks), stitches the tiles into
finished row bands and hands each band to its sinks. A sink is a small object with `add(band)`, `close()` and
`abort()` (class `Sink`); what the pass is for lives in the sinks (the journal and staged score map, the
histogram, the preview, the flow raster, an evaluation's counts), never in the loop. Memory is bounded by
the window: the stitcher holds one tile height of rows, the sinks one band.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Protocol

from tqdm import tqdm

from cdtool.errors import InputError
from cdtool.inference.detector import Choice, Detector
from cdtool.inference.predictor import Predictor, fit_to_pair, usable_cores
from cdtool.inference.rescale import Rescaled
from cdtool.inference.row_scoring import dask_rows, local_rows
from cdtool.inference.stitcher import Band, Stitcher
from cdtool.io.preview import PreviewGrid
from cdtool.normalization import Normalizer
from cdtool.windows import Tile, fitted_grid

DEFAULT_OVERLAP = 64  # pixels of blending between tiles of a learned model, whose reach exceeds its halo
# Tiles per model call by default. A GPU needs batches to be kept busy; on the CPU one tile already fills every
# core, and a batch only multiplies the activations held (8192² CVA, batch 8 -> 1: 11.6 -> 9.3 s, 726 -> 460
# MiB; 2048² U-Net: 8.3 -> 6.1 s, 1936 -> 610 MiB).
CPU_BATCH, GPU_BATCH = 1, 8


class Sink:
    """Where finished row bands go. `add` gets every band in row order; `replayed` a band an interrupted run
    had finished (a resumed run sends those first; by default the same as `add`); `tile` each scored tile's
    preview samples; `close` ends a pass that completed, `abort` one that failed."""

    def add(self, band: Band) -> None:
        pass

    def replayed(self, band: Band) -> None:
        self.add(band)

    def tile(self, tile: Tile, samples) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class TilingOptions(Protocol):
    """The options a plan reads (`DetectOptions` has them all)."""
    tile: int
    overlap: int | None
    batch_size: int | None
    blend: str
    bands: list[int] | None
    align: bool
    wrap: bool


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
    blend: str = "cosine"


def plan_scoring(pair, choice: Choice, device, opts: TilingOptions) -> ScoringPlan:
    height, width = pair.shape
    detector = choice.detector
    normalizer = Normalizer(detector.normalization, pair)
    if detector.model.needs_fit:
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
                       settings, opts.blend)


@dataclass
class RunOptions:
    """Where and how the tiles are scored; none of it changes a score."""
    readers: int | None = None  # threads reading tiles ahead of the model; None: 1 on the CPU, up to 4 on a GPU
    workers: int = 0  # > 0: Dask tasks on a local cluster of this many processes
    scheduler: str | None = None  # address of an existing Dask scheduler
    progress: bool = False
    desc: str = "detect"  # the progress bar's label


def run(pair, plan: ScoringPlan, sinks: list[Sink], how: RunOptions | None = None, done_rows: int = 0,
        resumed: Iterable[Band] = (), channels: int = 1, preview: PreviewGrid | None = None) -> None:
    """Score `pair` on `plan`'s grid and send its stitched row bands to `sinks`; rows [0, done_rows), finished
    by an interrupted run, come from `resumed` instead, and only the tile rows reaching past them are scored
    again (the stitcher drops what they add above, so every pixel gets the same sums in the same order).
    `channels`: outputs per pixel of the plan's predictor; `preview`: where tiles take their preview samples."""
    how = how or RunOptions()
    try:
        for band in resumed:
            for sink in sinks:
                sink.replayed(band)
        _score(pair, plan, sinks, how, done_rows, channels, preview)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    for sink in sinks:
        sink.close()


def _score(pair, plan: ScoringPlan, sinks: list[Sink], how: RunOptions, done_rows: int, channels: int,
           preview: PreviewGrid | None) -> None:
    height, width = pair.shape
    rows = plan.rows
    first = next((i for i, row in enumerate(rows) if max(t.row_stop for t in row) > done_rows), len(rows))
    todo = rows[first:]
    stitcher = Stitcher(height, width, rows[0][0].height, halo=plan.halo, blend=plan.blend, wrap_pad=plan.pad,
                        start_row=done_rows, channels=channels)

    def emit(bands) -> None:
        for band in bands:
            for sink in sinks:
                sink.add(band)

    readers = how.readers or (1 if plan.predictor.device.type == "cpu" else min(4, usable_cores()))
    bar = tqdm(total=sum(len(r) for r in todo), unit="tile", desc=how.desc, disable=not how.progress, leave=False)
    scored = (dask_rows(pair, plan.predictor, todo, how.workers, how.scheduler, preview)
              if how.workers or how.scheduler
              else local_rows(pair, plan.predictor, todo, plan.batch, readers, preview)) if todo else iter(())
    for row_index, results, row_complete in scored:
        for t, score, valid, samples in results:
            stitcher.add(t, score, valid)
            for sink in sinks:
                sink.tile(t, samples)
        bar.update(len(results))
        if row_complete and first + row_index + 1 < len(rows):
            emit(stitcher.flush(rows[first + row_index + 1][0].row))
    emit(stitcher.finish())
    bar.close()


def with_predictor(plan: ScoringPlan, predictor, halo: int) -> ScoringPlan:
    """The same grid run with another predictor (a joint model's flow head), blended inside its own halo."""
    return replace(plan, predictor=predictor, halo=halo)

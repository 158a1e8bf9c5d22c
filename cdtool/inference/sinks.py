"""The sinks of detection's scoring pass (`cdtool.inference.runner.Sink`): the staged score map (the journal's
bands, mosaicked with their overviews), the histogram and valid-pixel count the threshold is picked from, and
the preview's score panel with its input samples."""

from __future__ import annotations

from pathlib import Path

from cdtool.inference.journal import Journal
from cdtool.inference.runner import Sink
from cdtool.inference.stitcher import Band
from cdtool.inference.threshold import ScoreHistogram
from cdtool.io.preview import PreviewCanvas
from cdtool.io.staging import OverviewPyramid, write_mosaic
from cdtool.io.writers import PROB_NODATA
from cdtool.windows import Tile


class StagedScores(Sink):
    """Bands saved to the journal (a replayed band is there already), its overviews built as they come; on
    close, the staged score map at `path`: a VRT of the journal's bands with those overviews. Overviews only
    for a Cloud-optimised GeoTIFF: a PNG output (no georeference) has none."""

    def __init__(self, journal: Journal, path: Path, pair):
        info, (self.height, self.width) = pair.info, pair.shape
        self.journal, self.path, self.crs, self.transform = journal, path, info.crs, info.transform
        self.pyramid = OverviewPyramid(path.parent, self.height, self.width, PROB_NODATA, info.crs,
                                       info.transform) if info.georeferenced else None

    def add(self, band: Band) -> None:
        self.journal.save(band)
        self.replayed(band)

    def replayed(self, band: Band) -> None:
        if self.pyramid is not None:
            self.pyramid.add(band.score, band.valid)

    def close(self) -> None:
        self.journal.close()
        overviews = self.pyramid.close() if self.pyramid is not None else []
        write_mosaic(self.path, self.journal.pieces(self.height), self.height, self.width, PROB_NODATA, self.crs,
                     self.transform, overviews, "change score")

    def abort(self) -> None:
        try:
            self.journal.close()  # what was finished stays resumable
        finally:
            if self.pyramid is not None:
                self.pyramid.abort()


class ScoreStats(Sink):
    """The valid pixels and the histogram of their scores (Otsu's and the other methods pick from it)."""

    def __init__(self):
        self.valid_pixels = 0
        self.histogram = ScoreHistogram()

    def add(self, band: Band) -> None:
        self.valid_pixels += int(band.valid.sum())
        self.histogram.add(band.score[band.valid])


class PreviewScores(Sink):
    """The preview's input panels (samples each tile took as it was read) and its score panel."""

    def __init__(self, canvas: PreviewCanvas):
        self.canvas = canvas

    def add(self, band: Band) -> None:
        self.canvas.add_band(band.row, band.score, band.valid, "score")

    def tile(self, tile: Tile, samples) -> None:
        self.canvas.add_inputs(tile, samples)

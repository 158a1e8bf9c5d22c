"""The staged score map, written once: the scoring pass's row bands (the resume journal's files) mosaicked by a
VRT, with average overviews built as the bands stream past. GDAL's COG driver copies overviews a source already
has, so the output gets them without a second read of the full-resolution map (they were 4.4 s of a 26 s
8192² run), and no scratch copy of the scores is written beside the journal's."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from cdtool.io.writers import BandWriter, overview_factors


class OverviewPyramid:
    """Average overviews at factors 2, 4, 8, … (GDAL's list for a COG of BLOCK tiles) from row bands in order.
    Each level keeps sums and counts of the valid full-resolution pixels below it, so a coarse pixel is the
    exact mean of those (not a mean of means), and nodata where none is valid. Memory: one carried row per
    level."""

    def __init__(self, folder: Path, height: int, width: int, nodata: float, crs: CRS | None, transform: Affine):
        self.paths: list[Path] = []
        self.writers: list[BandWriter] = []
        self.carry: list[tuple[np.ndarray, np.ndarray] | None] = []
        self.nodata = nodata
        h, w = height, width
        for factor in overview_factors(height, width):
            h, w = -(-h // 2), -(-w // 2)
            path = Path(folder) / f"overview_{factor}.tif"
            self.paths.append(path)
            self.writers.append(BandWriter(path, h, w, "float32", nodata, crs, transform * Affine.scale(factor)))
            self.carry.append(None)

    def add(self, score: np.ndarray, valid: np.ndarray) -> None:
        if self.writers:
            self._feed(0, np.where(valid, score, 0).astype(np.float32, copy=False), valid.astype(np.float32))

    def close(self) -> list[Path]:
        """Flush the odd last rows; the overview files, finest first."""
        for level, writer in enumerate(self.writers):
            if self.carry[level] is not None:
                sums, counts = self.carry[level]
                self.carry[level] = None
                self._emit(level, *_halve(np.concatenate([sums, np.zeros_like(sums)]),
                                          np.concatenate([counts, np.zeros_like(counts)])))
            writer.close()
        return self.paths

    def abort(self) -> None:
        """After a failure: close the level files quietly."""
        for writer in self.writers:
            writer.abandon()

    def _feed(self, level: int, sums: np.ndarray, counts: np.ndarray) -> None:
        if level == len(self.writers):
            return
        if self.carry[level] is not None:
            carried_sums, carried_counts = self.carry[level]
            sums, counts = np.concatenate([carried_sums, sums]), np.concatenate([carried_counts, counts])
            self.carry[level] = None
        even = sums.shape[0] // 2 * 2
        if even < sums.shape[0]:
            self.carry[level] = (sums[even:].copy(), counts[even:].copy())
        if even:
            self._emit(level, *_halve(sums[:even], counts[:even]))

    def _emit(self, level: int, sums: np.ndarray, counts: np.ndarray) -> None:
        mean = np.full(sums.shape, self.nodata, np.float32)
        np.divide(sums, counts, out=mean, where=counts > 0)
        self.writers[level].write(mean)
        self._feed(level + 1, sums, counts)


def _halve(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 sums of an even number of rows; an odd last column pairs with nothing."""
    sums, counts = sums[0::2] + sums[1::2], counts[0::2] + counts[1::2]
    if sums.shape[1] % 2:
        sums, counts = (np.pad(a, ((0, 0), (0, 1))) for a in (sums, counts))
    return sums[:, 0::2] + sums[:, 1::2], counts[:, 0::2] + counts[:, 1::2]


def write_mosaic(path: Path, pieces: list[tuple[Path, int, int]], height: int, width: int, nodata: float,
                 crs: CRS | None, transform: Affine, overviews: list[Path] = (), description: str = "") -> Path:
    """A float32 single-band VRT of full-width row pieces (file, first row, rows) with explicit overviews;
    rasterio reads it, tags it (r+) and GDAL copies it like any GeoTIFF."""
    rows = 0
    sources = []
    for file, row, n in pieces:
        if row != rows:
            raise RuntimeError(f"{file}: the staged bands are not contiguous (row {row}, expected {rows})")
        sources.append(f'    <SimpleSource><SourceFilename relativeToVRT="0">{escape(str(file))}</SourceFilename>'
                       f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{n}"/>'
                       f'<DstRect xOff="0" yOff="{row}" xSize="{width}" ySize="{n}"/></SimpleSource>')
        rows += n
    if rows != height:
        raise RuntimeError(f"{path}: the staged bands cover {rows} of {height} rows")
    head = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        head.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    if transform != Affine.identity():
        head.append(f"  <GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}</GeoTransform>")
    band = ['  <VRTRasterBand dataType="Float32" band="1">', f"    <NoDataValue>{nodata!r}</NoDataValue>"]
    if description:
        band.append(f"    <Description>{escape(description)}</Description>")
    band += sources
    band += [f'    <Overview><SourceFilename relativeToVRT="0">{escape(str(p))}</SourceFilename>'
             f"<SourceBand>1</SourceBand></Overview>" for p in overviews]
    Path(path).write_text("\n".join([*head, *band, "  </VRTRasterBand>", "</VRTDataset>", ""]))
    return Path(path)

"""Raster writers that take finished row bands in order and stream them into tiled, compressed GeoTIFFs
(with overviews so QGIS opens them fast), and turn those into PNGs for non-georeferenced inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

BLOCK = 256
PROB_NODATA = -1.0
MASK_NODATA = 255
# the mask's colour table, for GIS software without cdtool's .qml: changes red on white (TIFF palettes carry no
# alpha; the .qml makes unchanged pixels transparent, and 255 is nodata either way)
MASK_COLORS = {0: (255, 255, 255, 255), 1: (227, 26, 28, 255), MASK_NODATA: (0, 0, 0, 0)}
# GDAL_MAX_DATASET_POOL_SIZE: how many of a VRT's sources GDAL keeps open (default 100). The staged score map is
# a VRT of one file per 256-row band, read in order; each open file holds its decompression buffers, so a tall
# raster's peak grew with its height (32768 × 2048: +48 MiB) until the pool was kept small.
GDAL_ENV = {"GDAL_CACHEMAX": 128, "COMPRESS_OVERVIEW": "DEFLATE", "GDAL_TIFF_OVR_BLOCKSIZE": BLOCK,
            "GDAL_MAX_DATASET_POOL_SIZE": 16}


class BandWriter:
    """Single-band scratch GeoTIFF written row band by row band; rows are buffered up to whole blocks so each
    compressed block is written once. Zstandard at level 1: a staging file is read back once or twice and
    then copied into the deflate outputs, so it compresses only for disk space, in a fraction of deflate's time."""

    def __init__(self, path: Path, height: int, width: int, dtype: str, nodata: float, crs: CRS | None,
                 transform: Affine, description: str = ""):
        tiled = width >= BLOCK and height >= BLOCK
        profile = dict(driver="GTiff", width=width, height=height, count=1, dtype=dtype, nodata=nodata,
                       crs=crs, transform=transform, compress="zstd", zstd_level=1,
                       predictor=3 if dtype.startswith("float") else 2, BIGTIFF="IF_SAFER")
        if tiled:
            profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
        self.block_rows = BLOCK if tiled else max(1, height)
        self.ds = rasterio.open(path, "w", **profile)
        if description:
            self.ds.set_band_description(1, description)
        self.height, self.width, self.dtype = height, width, dtype
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.next_row = 0

    def write(self, rows: np.ndarray) -> None:
        self.pending.append(rows.astype(self.dtype, copy=False))
        self.pending_rows += rows.shape[0]
        full = (self.pending_rows // self.block_rows) * self.block_rows
        if self.next_row + self.pending_rows >= self.height:
            full = self.pending_rows
        if full:
            data = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            self.ds.write(data[:full], 1, window=Window(0, self.next_row, self.width, full))
            self.next_row += full
            rest = data[full:]
            self.pending = [rest] if rest.shape[0] else []
            self.pending_rows = rest.shape[0]

    def __enter__(self) -> "BandWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is not None:
            self.abandon()

    def abandon(self) -> None:
        """After a failure: close the file quietly (no half-written block flushed, no second error)."""
        if not self.ds.closed:
            try:
                self.ds.close()
            except Exception:
                pass

    def close(self) -> None:
        if self.pending_rows:
            raise RuntimeError(f"{self.ds.name}: {self.pending_rows} rows were never written")
        self.ds.close()


def overview_factors(height: int, width: int) -> list[int]:
    """GDAL's overview factors for a COG of BLOCK tiles: halve until the longer side fits one block."""
    n = max(0, math.ceil(math.log2(max(height, width) / BLOCK)))
    return [2 ** i for i in range(1, n + 1)]


def write_cog(src: Path, dst: Path, overview_resampling: Resampling, tags: dict | None = None,
              statistics: dict | None = None, colormap: dict | None = None) -> None:
    """Copy a finished single-band GeoTIFF into a Cloud-optimised GeoTIFF (GDAL's COG driver: tiled, deflate,
    internal overviews first), with metadata tags, band statistics and an optional colour table. GDAL copies
    block by block, so memory stays bounded, and compresses blocks on every core."""
    tag_raster(src, tags, statistics, colormap)
    copy_cog(src, dst, overview_resampling)


def tag_raster(src: Path, tags: dict | None = None, statistics: dict | None = None,
               colormap: dict | None = None) -> None:
    """Metadata tags, band statistics and a colour table into a finished GeoTIFF, for `copy_cog` to carry."""
    with rasterio.open(src, "r+") as ds:
        if tags:
            ds.update_tags(**{k: str(v) for k, v in tags.items()})
        if statistics:
            ds.update_tags(1, **{k: f"{v:.8g}" for k, v in statistics.items()})
        if colormap:
            ds.write_colormap(1, colormap)


def copy_cog(src: Path, dst: Path, overview_resampling: Resampling) -> None:
    """The copy half of `write_cog`; reads `src` only, so it may run while others read it too."""
    with rasterio.open(src) as ds:
        floating = ds.dtypes[0].startswith("float")
    # deflate level 1 for scores: noisy floats shrink by 1 % more at level 6, which takes 1.6x as long
    rio_copy(src, dst, driver="COG", COMPRESS="DEFLATE", LEVEL=1 if floating else 6,
             PREDICTOR="FLOATING_POINT" if floating else "STANDARD",
             BLOCKSIZE=BLOCK, OVERVIEW_RESAMPLING=overview_resampling.name.upper(), BIGTIFF="IF_SAFER",
             NUM_THREADS="ALL_CPUS")
    for side in dst.parent.glob(dst.name + ".aux.xml"):
        side.unlink()


def read_bands(path: Path, rows: int = BLOCK):
    """Yield (row, array) bands of a single-band raster; bounded memory for the second pass."""
    with rasterio.open(path) as ds:
        for r in range(0, ds.height, rows):
            n = min(rows, ds.height - r)
            yield r, ds.read(1, window=Window(0, r, ds.width, n))


def tif_to_png(src: Path, dst: Path, kind: str) -> None:
    """8-bit grey+alpha PNG: scores scaled to 0..255 or the mask as 0/255; alpha 0 where nodata.
    GDAL's PNG driver copies line by line, so this stays bounded in memory too."""
    with rasterio.open(src) as ds:
        profile = dict(driver="GTiff", width=ds.width, height=ds.height, count=2, dtype="uint8",
                       tiled=False, compress="deflate")
        staging = dst.with_name(dst.name + ".staging.tif")
        with rasterio.open(staging, "w", **profile) as out:
            for r in range(0, ds.height, 512):
                n = min(512, ds.height - r)
                a = ds.read(1, window=Window(0, r, ds.width, n))
                if kind == "prob":
                    valid = a != PROB_NODATA
                    grey = np.clip(np.round(a * 255), 0, 255)
                else:
                    valid = a != MASK_NODATA
                    grey = (a == 1) * 255
                win = Window(0, r, ds.width, n)
                out.write(np.where(valid, grey, 0).astype("uint8"), 1, window=win)
                out.write((valid * 255).astype("uint8"), 2, window=win)
    try:
        with rasterio.open(staging) as s:
            rio_copy(s, dst, driver="PNG")
    finally:
        staging.unlink(missing_ok=True)
        for side in dst.parent.glob(dst.name + ".aux.xml"):
            side.unlink()

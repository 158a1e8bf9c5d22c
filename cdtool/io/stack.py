"""Stack single-band files (one file per band, as Sentinel-2 products and OSCD ship them) into one
multi-band raster on the finest grid, as a GDAL VRT: a few hundred bytes of XML that QGIS and rasterio
open directly, resampled on the fly, with no full-size copy."""

from __future__ import annotations

import os
import re
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError

from cdtool.domain import sentinel2_band
from cdtool.errors import InputError, OptionError
from cdtool.io.outputs import write_text_atomic

RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".img", ".vrt"}


def natural_key(path: Path) -> list:
    """Sort key that orders B2 < B08 < B8A < B09 < B10, i.e. Sentinel-2's own band order."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def band_files(source: str | os.PathLike) -> list[Path]:
    """The raster files of a folder, in natural band order."""
    folder = Path(source)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES and p.is_file()),
                   key=natural_key)
    if not files:
        raise InputError(f"{folder}: folder holds no raster files ({', '.join(sorted(RASTER_SUFFIXES))})")
    return files


# Sentinel-2's visible bands in GDAL's colour interpretation, for readers that honour it (QGIS 3.22 does not:
# it opens bands 1-2-3, hence `natural_colour_first`)
_S2_COLOURS = {"4": "Red", "3": "Green", "2": "Blue"}

def natural_colour_first(files: list[Path]) -> list[Path]:
    """A Sentinel-2 band folder with B04, B03 and B02 first, then the rest in band order, so every GIS opens
    the stack in natural colour (bands 1-2-3 by default); cdtool finds Sentinel-2 bands by name, not place."""
    found = {sentinel2_band(f.stem): f for f in files}
    first = [found[b] for b in ("4", "3", "2") if b in found]
    if len(first) < 3 or len(files) <= 3:
        return files
    return first + [f for f in files if f not in first]


_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode")


def common_type(dtypes: list[str]) -> str:
    """The one type every band of a stack is read in: the smallest that holds each band's values exactly.
    Real products mix types in one folder (Sentinel-2 L2A puts its uint8 scene classification beside uint16
    reflectances), and a dataset's bands cannot be read together in different types."""
    import numpy as np

    common = np.result_type(*dtypes).name
    return common if common in _GDAL_TYPES else "float64"


def _placement(path: Path, transform: Affine, ref_path: Path, ref: Affine, width: int, height: int) -> tuple:
    """(x_off, y_off, x_size, y_size) of a band file's pixels on the reference grid: its transform in the
    reference grid's pixel coordinates, which must be a plain scale and shift. A grid rotated or sheared
    against the reference (or degenerate) cannot be placed by a VRT's rectangles: refused in one line."""
    if abs(ref.determinant) < 1e-300 or abs(transform.determinant) < 1e-300:
        raise InputError(f"{path if abs(transform.determinant) < 1e-300 else ref_path}: degenerate geotransform "
                         "(zero pixel size); cannot place it on a grid")
    m = ~ref * transform
    tol = 1e-9 * max(abs(m.a), abs(m.e))
    if abs(m.b) > tol or abs(m.d) > tol or m.a <= 0 or m.e <= 0:
        raise InputError(f"{path}: its grid is rotated, sheared or flipped against {ref_path}'s; the bands of one "
                         "stack must share a grid orientation (warp it onto the others' grid first, e.g. gdalwarp)")
    return m.c, m.f, width * m.a, height * m.e


def stack_vrt(files: list[Path], resampling: str = "bilinear") -> str:
    """VRT XML stacking the first band of each file onto the grid of the finest file, all bands in their common
    type (`common_type`). Grids may be rotated, as long as every file's is rotated alike.

    All files must share a CRS and cover the same area (as the bands of one product do)."""
    metas = []
    for f in files:
        if Path(f).exists() and not Path(f).is_file():  # a pipe would block the read forever
            raise InputError(f"{f}: not a regular file (a pipe or device cannot be read as a raster)")
        try:
            with rasterio.open(f) as ds:
                metas.append((Path(f).resolve(), ds.crs, ds.transform, ds.width, ds.height, ds.dtypes[0],
                              ds.nodata, ds.bounds))
        except RasterioIOError as exc:
            raise InputError(f"{f}: cannot read as a raster ({exc})") from None
    if resampling not in RESAMPLINGS:
        raise OptionError("resampling", f"must be one of {', '.join(RESAMPLINGS)}, got {resampling!r}")
    crs0 = metas[0][1]
    for path, crs, *_ in metas[1:]:
        if crs != crs0:
            raise InputError(f"{path}: CRS {crs} differs from {metas[0][0]} ({crs0}); bands must share a CRS")
    b0 = metas[0][7]
    for path, *_, b in metas[1:]:
        if b.left >= b0.right or b.right <= b0.left or b.bottom >= b0.top or b.top <= b0.bottom:
            raise InputError(f"{path}: does not overlap {metas[0][0]}; the bands of one stack must cover one area")
    ref = min(metas, key=lambda m: abs(m[2].determinant))  # finest pixel
    ref_path, _, t, width, height, *_ = ref
    places = [_placement(path, st, ref_path, t, w, h) for path, _, st, w, h, *_ in metas]
    dtype = _GDAL_TYPES[common_type([m[5] for m in metas])]
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs0 is not None:
        parts.append(f"  <SRS>{escape(crs0.to_wkt())}</SRS>")
    parts.append(f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>")
    for i, ((path, _, st, w, h, _, nodata, _), (x_off, y_off, x_size, y_size)) in enumerate(zip(metas, places), 1):
        parts.append(f'  <VRTRasterBand dataType="{dtype}" band="{i}">')
        parts.append(f"    <Description>{escape(path.stem)}</Description>")
        colour = _S2_COLOURS.get(sentinel2_band(path.stem) or "") if len(files) > 3 else None  # GDAL's readers
        if colour:
            parts.append(f"    <ColorInterp>{colour}</ColorInterp>")
        if nodata is not None:
            parts.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        parts.append(f'    <ComplexSource resampling="{resampling}">')
        parts.append(f'      <SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>')
        parts.append("      <SourceBand>1</SourceBand>")
        parts.append(f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>')
        parts.append(f'      <DstRect xOff="{x_off!r}" yOff="{y_off!r}" xSize="{x_size!r}" ySize="{y_size!r}"/>')
        if nodata is not None:
            parts.append(f"      <NODATA>{nodata!r}</NODATA>")
        parts.append("    </ComplexSource>")
        parts.append("  </VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "\n".join(parts) + "\n"


def write_stack(out: str | os.PathLike, sources: list[str | os.PathLike], overwrite: bool = False,
                resampling: str = "bilinear") -> Path:
    """Write a VRT stacking `sources` (files, or one folder of band files); returns its path."""
    files: list[Path] = []
    for s in sources:
        files.extend(natural_colour_first(band_files(s)) if Path(s).is_dir() else [Path(s)])
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the VRT file to write")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such folder to write {out.name} into")
    xml = stack_vrt(files, resampling)
    return write_text_atomic(out, xml)

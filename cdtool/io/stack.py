"""Stack single-band files (one file per band, as Sentinel-2 products and OSCD ship them) into one
multi-band raster on the finest grid, as a GDAL VRT: a few hundred bytes of XML that QGIS and rasterio
open directly, resampled on the fly, with no full-size copy."""

from __future__ import annotations

import os
import re
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio
from rasterio.errors import RasterioIOError

from cdtool.errors import InputError
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


_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode")


def stack_vrt(files: list[Path], resampling: str = "bilinear") -> str:
    """VRT XML stacking the first band of each file onto the grid of the finest file.

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
        raise InputError(f"--resampling must be one of {', '.join(RESAMPLINGS)}, got {resampling!r}")
    crs0 = metas[0][1]
    for path, crs, *_ in metas[1:]:
        if crs != crs0:
            raise InputError(f"{path}: CRS {crs} differs from {metas[0][0]} ({crs0}); bands must share a CRS")
    b0 = metas[0][7]
    for path, *_, b in metas[1:]:
        if b.left >= b0.right or b.right <= b0.left or b.bottom >= b0.top or b.top <= b0.bottom:
            raise InputError(f"{path}: does not overlap {metas[0][0]}; the bands of one stack must cover one area")
    ref = min(metas, key=lambda m: abs(m[2].a * m[2].e))  # finest pixel
    _, _, t, width, height, *_ = ref
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs0 is not None:
        parts.append(f"  <SRS>{escape(crs0.to_wkt())}</SRS>")
    parts.append(f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>")
    for i, (path, _, st, w, h, dtype, nodata, bounds) in enumerate(metas, start=1):
        x_off = (bounds.left - t.c) / t.a
        y_off = (bounds.top - t.f) / t.e
        x_size = w * st.a / t.a
        y_size = h * st.e / t.e
        parts.append(f'  <VRTRasterBand dataType="{_GDAL_TYPES.get(dtype, "Float32")}" band="{i}">')
        parts.append(f"    <Description>{escape(path.stem)}</Description>")
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
        files.extend(band_files(s) if Path(s).is_dir() else [Path(s)])
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the VRT file to write")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such folder to write {out.name} into")
    xml = stack_vrt(files, resampling)
    return write_text_atomic(out, xml)

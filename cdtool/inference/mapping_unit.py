"""The minimum mapping unit: the smallest change region worth reporting (pixels, and m² where the pixel size
is known). The polygons always apply it; with `--mmu-mask` the mask does too, so the map, the polygons and
the changed area all count the same pixels. Without it the mask keeps every pixel over the threshold and
detect.json says how much of that lies in regions that make the unit.

The mask is filtered by rasterising the written polygons back, band by band (a GeoPackage's spatial index
gives each band its polygons): GDAL's polygons follow pixel edges, so each covers exactly its region's pixels
and memory follows the band, not the scene."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from affine import Affine

from cdtool.errors import OptionError

# The default unit of the polygons: 4 pixels, and 20 m² where the pixel size is known, so 0.5 m imagery drops
# sub-car specks and 30 m imagery single pixels.
DEFAULT_MIN_PIXELS = 4
DEFAULT_MIN_AREA_M2 = 20.0


def mapping_unit(min_pixels: int | None, min_area: float | None, gsd: float | None,
                 georeferenced: bool) -> tuple[int, float]:
    """(minimum pixels, minimum m²) of a region: the options given, else the defaults; for pairs without
    georeference the area becomes pixels through the GSD (exact there), and stays for the report."""
    if min_pixels is not None and min_pixels < 1:
        raise OptionError("min_pixels", f"must be at least 1, got {min_pixels}")
    area = min_area if min_area is not None else (DEFAULT_MIN_AREA_M2 if gsd else 0.0)
    if not (math.isfinite(area) and area >= 0):
        raise OptionError("min_area", f"must be zero or a positive area in square metres, got {area}")
    if area and not gsd:
        raise OptionError("min_area", "needs the pixel size: these inputs have no georeference; pass --gsd")
    default = DEFAULT_MIN_PIXELS if min_area is None else 1  # None means not set: 1 is a real choice
    pixels = default if min_pixels is None else min_pixels
    if area and not georeferenced:
        pixels = max(pixels, int(np.ceil(area / (gsd * gsd))))
    return pixels, area


def mask_to_regions(mask_path: Path, gpkg_path: Path, layer: str, transform: Affine, out_path: Path,
                    canvas=None) -> int:
    """Write `out_path`: the staged mask at `mask_path` with changed pixels outside the polygons of `gpkg_path`
    set to unchanged (nodata stays nodata); returns the changed pixels left. `canvas` (a preview) gets the
    filtered mask panel."""
    import pyogrio
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window

    from cdtool.io.writers import BLOCK, MASK_NODATA, BandWriter

    changed = 0
    with rasterio.open(mask_path) as src, \
            BandWriter(out_path, src.height, src.width, "uint8", MASK_NODATA, src.crs, src.transform,
                       "change mask") as out:
        for row in range(0, src.height, BLOCK):
            rows = min(BLOCK, src.height - row)
            mask = src.read(1, window=Window(0, row, src.width, rows))
            band = transform * Affine.translation(0, row)
            x0, y0 = band * (0, rows)
            x1, y1 = band * (src.width, 0)
            shapes = pyogrio.read_dataframe(gpkg_path, layer=layer, columns=[],
                                            bbox=(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))).geometry
            inside = (rasterize(((g, 1) for g in shapes if g is not None), (rows, src.width), transform=band,
                                dtype="uint8") > 0) if len(shapes) else np.zeros(mask.shape, bool)
            kept = (mask == 1) & inside
            changed += int(kept.sum())
            out.write(np.where(mask == MASK_NODATA, MASK_NODATA, kept).astype(np.uint8))
            if canvas is not None:
                canvas.add_band(row, kept, mask != MASK_NODATA, "mask")
        out.close()
    return changed

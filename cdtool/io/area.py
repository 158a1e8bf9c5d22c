"""The part of a scene an analyst asks about: `--aoi` (a polygon layer: only inside counts) and `--exclude`
(a polygon layer, a 0/1 raster, or `water`: never reported). Pixels left out are nodata in every output and
in every area, exactly as a nodata pixel of the inputs is, so the threshold, the changed share and the
polygons all speak of the same ground.

Layers may be in any CRS (reprojected onto BEFORE's grid) and rasters on any grid (warped onto it, nearest);
both are rasterised window by window as the pair is read, so memory follows the window, not the scene.
`water` marks pixels that are water on both dates (NDWI of Sentinel-2's B03 and B08 above 0): the sea and
rivers whose glint and turbidity look like change, while land turned into water (a flood, a new reservoir)
and water turned into land stay reported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from cdtool.errors import InputError

VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".kml", ".gml", ".sqlite"}
WATER = "water"
NDWI_WATER = 0.0  # McFeeters' NDWI (green - NIR) / (green + NIR): open water above 0


def _read_layer(path: Path, crs, what: str):
    """The geometries of a polygon layer in `crs` (BEFORE's), refused in one line when unusable."""
    import pyogrio
    import shapely

    try:
        frame = pyogrio.read_dataframe(path)
    except Exception as exc:  # pyogrio's errors are many and all mean the same to the user
        raise InputError(f"{path}: cannot read as a polygon layer for {what} ({str(exc).splitlines()[0]})") from None
    geoms = frame.geometry[frame.geometry.notna()]
    geoms = geoms[shapely.get_dimensions(geoms.values) == 2]
    if geoms.empty:
        raise InputError(f"{path}: holds no polygons for {what}")
    if crs is None:
        return list(geoms.values)  # a pixel grid: the layer is drawn in it (x = column, y = -row)
    if frame.crs is None:
        raise InputError(f"{path}: has no CRS, so it cannot be placed on the inputs' grid for {what}")
    try:
        return list(geoms.to_crs(crs).values)
    except Exception as exc:
        raise InputError(f"{path}: cannot be transformed to the inputs' CRS for {what} ({exc})") from None


@dataclass
class AreaMask:
    """Which pixels of a pair's grid count: inside `aoi` (all when None) and not in `exclude`."""

    aoi: list | None = None  # polygons in BEFORE's CRS (or pixel grid)
    exclude_shapes: list | None = None
    exclude_raster: str | None = None  # a mask raster (1 = exclude), warped onto the grid window by window
    water: tuple[int, int] | None = None  # 0-based (green, NIR) band indexes for `water`
    crs: object = None
    _raster: object = None  # the exclusion raster on BEFORE's grid, a ChangeMask (see `bind`)

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(left, bottom, right, top) of the AOI in map units, to crop the processing extent; None: no AOI."""
        if not self.aoi:
            return None
        import shapely

        return tuple(shapely.total_bounds(np.array(self.aoi, dtype=object)))

    def counts(self, window, transform: Affine, data: np.ndarray | None) -> np.ndarray:
        """(h, w) bool of the pixels that count in `window` of BEFORE's grid (whose transform is `transform`);
        `data` (2, C, h, w) are both dates' values there, read for `water`."""
        from rasterio.features import geometry_mask

        shape = (int(window.height), int(window.width))
        keep = np.ones(shape, bool)
        if self.aoi:
            keep &= geometry_mask(self.aoi, shape, transform, invert=True)
        if self.exclude_shapes:
            keep &= geometry_mask(self.exclude_shapes, shape, transform)
        if self._raster is not None:
            keep &= ~self._raster.read(window)[0]  # "changed" in the mask's coding: excluded
        if self.water is not None and data is not None:
            keep &= ~self._water(data)
        return keep

    def bind(self, before) -> None:
        """Open the exclusion raster on the grid of `before` (an open dataset): warped once (nearest), read by
        window, its values read by the one mask rule (`cdtool.io.change_mask`: 0/1, 0/255, 1/2 ...), so a mask
        painted as 0/255 excludes its 255s instead of nothing."""
        if self.exclude_raster is None or self._raster is not None:
            return
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        from cdtool.io.change_mask import ChangeMask

        if before.crs is None:
            mask = ChangeMask(self.exclude_raster)
            if mask.shape != (before.height, before.width):
                mask.close()
                raise InputError(f"{self.exclude_raster}: {mask.shape[1]}x{mask.shape[0]} pixels, but without a CRS "
                                 f"an --exclude raster must match the inputs' {before.width}x{before.height}")
            self._raster = mask
            return
        self._raster = ChangeMask(self.exclude_raster, opener=lambda src: WarpedVRT(
            src, crs=before.crs, transform=before.transform, width=before.width, height=before.height,
            resampling=Resampling.nearest, add_alpha=True))

    def _water(self, data: np.ndarray) -> np.ndarray:
        green, nir = self.water
        both = np.ones(data.shape[-2:], bool)
        for date in data:
            g, n = date[green].astype(np.float32), date[nir].astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                ndwi = (g - n) / (g + n)
            both &= ndwi > NDWI_WATER
        return both

    def files(self) -> list[str]:
        return [self.exclude_raster] if self.exclude_raster else []

    def close(self) -> None:
        if self._raster is not None:
            self._raster.close()
            self._raster = None


def _is_raster(path: Path) -> bool:
    return path.suffix.lower() not in VECTOR_SUFFIXES


def area_mask(aoi: str | None, exclude: str | None, crs, band_names: list[str]) -> AreaMask | None:
    """The AreaMask of the options, checked: files readable, layers with polygons in a usable CRS, `water` only
    where the bands say which are green and NIR."""
    if aoi is None and exclude is None:
        return None
    mask = AreaMask(crs=crs)
    if aoi is not None:
        path = Path(aoi)
        if not path.exists():
            raise InputError(f"{path}: no such file (--aoi)")
        mask.aoi = _read_layer(path, crs, "--aoi")
    if exclude == WATER:
        mask.water = _water_bands(band_names)
    elif exclude is not None:
        path = Path(exclude)
        if not path.exists():
            raise InputError(f"{path}: no such file (--exclude takes a polygon layer, a 0/1 raster or 'water')")
        if _is_raster(path):
            _check_exclusion_raster(path, crs)
            mask.exclude_raster = str(path)
        else:
            mask.exclude_shapes = _read_layer(path, crs, "--exclude")
    return mask


def _check_exclusion_raster(path: Path, crs) -> None:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as ds:
            if (ds.crs is None) != (crs is None):
                raise InputError(f"{path}: {'has no CRS' if ds.crs is None else 'has a CRS'} while the inputs "
                                 f"{'have one' if crs is not None else 'have none'}; --exclude cannot be placed")
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read as a raster for --exclude ({str(exc).splitlines()[0]})") from None


def _water_bands(band_names: list[str]) -> tuple[int, int]:
    from cdtool.domain import sentinel2_band

    found = {sentinel2_band(n): i for i, n in enumerate(band_names)}
    nir = found.get("8", found.get("8A"))
    if "3" not in found or nir is None:
        raise InputError("--exclude water needs Sentinel-2 bands B03 and B08 (or B8A) named in the inputs; "
                         "give a water layer or raster instead")
    return found["3"], nir

"""An analyst's labels read onto BEFORE's grid: polygons (GeoPackage, GeoJSON, shapefile; any CRS) with a 0/1
field, or a raster of 1 changed / 0 unchanged / nodata. One rule for every source: a label source yields, window
by window, an id per pixel (0 unlabelled), and each id (a polygon, or a connected patch of the raster) has a class
and is one group for validation. Two passes over the windows count the pixels of each group, then keep a seeded
sample of at most a budget of them, so memory depends on the window and the budget, never on the raster."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdtool.errors import InputError
from cdtool.io.pair import IMAGE_SUFFIXES
from cdtool.windows import Tile

WINDOW = 1024  # label windows are rasterised this many pixels a side at a time
DEFAULT_FIELD = "change"


@dataclass(frozen=True)
class Grid:
    """The pixel grid the labels are read onto (BEFORE's, or the pixel grid x = column, y = -row of a PNG pair)."""
    height: int
    width: int
    transform: object  # affine.Affine
    crs: object | None  # rasterio CRS; None for a pair without georeference


@dataclass
class LabelSample:
    """Labelled pixels kept for fitting, with the group (polygon) and class of each, and what they came from."""
    source: Path
    kind: str  # "polygons" or "raster"
    rows: np.ndarray
    cols: np.ndarray
    label: np.ndarray  # uint8 0/1
    group: np.ndarray  # int32 group id (>= 1)
    pixels: dict[int, int]  # labelled pixels per class, before sampling
    groups: dict[int, int]  # groups (polygons) per class that cover at least one pixel
    notes: list[str] = field(default_factory=list)


class PolygonLabels:
    """Polygons with a 0/1 field, transformed onto the grid, found per window through a spatial index."""

    kind = "polygons"

    def __init__(self, path: Path, field_name: str, grid: Grid):
        import shapely

        self.path, self.grid, self.notes = path, grid, []
        frame = _read_layer(path)
        if field_name not in frame.columns:
            fields = [c for c in frame.columns if c != "geometry"]
            raise InputError(f"{path}: has no field {field_name!r} (fields: {', '.join(fields) or 'none'}); "
                             "pass --labels-field NAME")
        frame = frame[~(frame.geometry.isna() | frame.geometry.is_empty)]
        if frame.empty:
            raise InputError(f"{path}: holds no polygon")
        kinds = set(frame.geometry.geom_type) - {"Polygon", "MultiPolygon"}
        if kinds:
            raise InputError(f"{path}: holds {', '.join(sorted(kinds))} features; labels must be polygons")
        values = _class_values(path, field_name, frame[field_name])
        frame = self._onto_grid(frame)
        self.geoms = np.asarray(frame.geometry.values, dtype=object)
        self.group_class = values
        self.tree = shapely.STRtree(self.geoms)

    def _onto_grid(self, frame):
        if self.grid.crs is None:  # a PNG/JPG pair: the layer is drawn in the pixel grid the outputs use
            if frame.crs is not None and frame.crs.is_geographic:
                self.notes.append(f"{self.path}: its CRS ({frame.crs.name}) is ignored: the pair has no "
                                  "georeference, so polygons are read in its pixel grid (x = column, y = -row)")
            return frame
        if frame.crs is None:
            self.notes.append(f"{self.path}: has no CRS; taken to be the pair's ({self.grid.crs.to_string()})")
            return frame
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = frame.to_crs(self.grid.crs.to_wkt())
        except Exception as exc:  # pyproj raises several types; every one means the same to the user
            raise InputError(f"{self.path}: its polygons cannot be transformed from {frame.crs.name} to the pair's "
                             f"CRS ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        bounds = out.total_bounds
        if not np.all(np.isfinite(bounds)):
            raise InputError(f"{self.path}: its polygons cannot be transformed from {frame.crs.name} to the pair's "
                             "CRS (they fall outside where the transformation is defined)")
        return out

    def ids(self, tile: Tile) -> np.ndarray:
        """(h, w) int32: 1 + the index of the polygon covering each pixel of the tile, 0 where none."""
        from rasterio import features
        from rasterio.windows import Window, bounds

        out = np.zeros((tile.height, tile.width), np.int32)
        import shapely

        box = shapely.box(*bounds(Window(tile.col, tile.row, tile.width, tile.height), self.grid.transform))
        hits = self.tree.query(box, predicate="intersects")
        if len(hits):
            from rasterio.windows import transform as window_transform

            t = window_transform(Window(tile.col, tile.row, tile.width, tile.height), self.grid.transform)
            shapes = ((self.geoms[i], int(i) + 1) for i in sorted(hits))
            features.rasterize(shapes, out=out, transform=t)
        return out


class RasterLabels:
    """A raster of 1 changed / 0 unchanged / nodata (its declared nodata, else 255), warped onto the grid where
    both are georeferenced; each connected patch of a class within a window is one group."""

    kind = "raster"

    def __init__(self, path: Path, grid: Grid):
        import rasterio
        from rasterio.errors import RasterioIOError

        self.path, self.grid, self.notes = path, grid, []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.ds = rasterio.open(path)
        except RasterioIOError as exc:
            raise InputError(f"{path}: cannot read as a label raster ({str(exc).splitlines()[0]})") from None
        self.nodata = self.ds.nodata if self.ds.nodata is not None else 255
        georef = self.ds.crs is not None and not self.ds.transform.is_identity
        if grid.crs is not None and georef:
            from rasterio.enums import Resampling
            from rasterio.vrt import WarpedVRT

            try:
                self.src = WarpedVRT(self.ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                     height=grid.height, resampling=Resampling.nearest, nodata=self.nodata)
            except Exception as exc:
                raise InputError(f"{path}: cannot be transformed onto the pair's grid "
                                 f"({str(exc).splitlines()[0]})") from None
        elif (self.ds.height, self.ds.width) == (grid.height, grid.width):
            self.src = self.ds
        else:
            raise InputError(f"{path}: is {self.ds.width}x{self.ds.height} pixels without a georeference to place "
                             f"it; it must match the pair's {grid.width}x{grid.height}")
        self.group_class: list[int] = []
        self._first_id: dict[Tile, int] = {}

    def ids(self, tile: Tile) -> np.ndarray:
        from rasterio.windows import Window
        from scipy import ndimage

        values = self.src.read(1, window=Window(tile.col, tile.row, tile.width, tile.height))
        labelled = values != self.nodata
        bad = np.unique(values[labelled & (values != 0) & (values != 1)])
        if len(bad):
            raise InputError(f"{self.path}: holds values other than 1 (changed), 0 (unchanged) and nodata "
                             f"({self.nodata:g}): {', '.join(f'{v:g}' for v in bad[:5])}")
        out = np.zeros(values.shape, np.int32)
        first = self._first_id.get(tile)
        fresh = first is None
        if fresh:
            first = self._first_id[tile] = len(self.group_class) + 1
        for cls in (0, 1):
            patches, n = ndimage.label(labelled & (values == cls))
            out[patches > 0] = patches[patches > 0] + first - 1
            first += n
            if fresh:
                self.group_class.extend([cls] * n)
        return out


def _read_layer(path: Path):
    import pyogrio
    import geopandas as gpd

    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gpd.read_file(path, engine="pyogrio")
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read as a polygon layer ({str(exc).splitlines()[0]})") from None


def _class_values(path: Path, name: str, column) -> np.ndarray:
    import pandas as pd

    numbers = pd.to_numeric(column, errors="coerce")
    missing = int(numbers.isna().sum())
    if missing:
        raise InputError(f"{path}: {missing} polygon(s) have no number in field {name!r}; give each 1 (changed) "
                         "or 0 (unchanged)")
    bad = sorted(set(numbers[(numbers != 0) & (numbers != 1)].tolist()))
    if bad:
        raise InputError(f"{path}: field {name!r} holds values other than 1 (changed) and 0 (unchanged): "
                         f"{', '.join(f'{v:g}' for v in bad[:5])}")
    return numbers.to_numpy().astype(np.uint8)


def open_labels(path: str | Path, grid: Grid, field_name: str = DEFAULT_FIELD) -> PolygonLabels | RasterLabels:
    """The label source a file holds: a raster by its suffix (or when GDAL reads it as one), else a layer."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return RasterLabels(path, grid)
    return PolygonLabels(path, field_name, grid)


def windows(grid: Grid, size: int = WINDOW) -> list[Tile]:
    return [Tile(r, c, min(size, grid.height - r), min(size, grid.width - c))
            for r in range(0, grid.height, size) for c in range(0, grid.width, size)]


def sample_labels(source, grid: Grid, budget: int, seed: int = 0, progress: bool = False) -> LabelSample:
    """At most about `budget` labelled pixels, shared equally by the groups (a small polygon counts as much as a
    large one), drawn with a seeded generator: pass 1 counts each group's pixels, pass 2 keeps a share of them."""
    from tqdm import tqdm

    tiles = windows(grid)
    counts = np.zeros(1, np.int64)
    for tile in tqdm(tiles, desc="labels", unit="window", disable=not progress, leave=False):
        found = np.bincount(source.ids(tile).ravel())
        if len(found) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(found) - len(counts), np.int64)])
        counts[:len(found)] += found
    group_class = np.asarray(source.group_class, np.uint8)
    counts = np.concatenate([counts, np.zeros(max(0, len(group_class) + 1 - len(counts)), np.int64)])
    counts[0] = 0
    present = np.flatnonzero(counts)
    if not len(present):
        raise InputError(f"{source.path}: no labelled pixel lies over the pair "
                         f"({grid.width}x{grid.height} pixels{'' if grid.crs is None else ', ' + grid.crs.to_string()})")
    cap = max(50, budget // len(present))
    keep = np.minimum(1.0, cap / np.maximum(counts, 1))
    rng = np.random.default_rng(seed)
    rows, cols, groups = [], [], []
    for tile in tiles:
        ids = source.ids(tile)
        r, c = np.nonzero(ids)
        g = ids[r, c]
        chosen = rng.random(len(g)) < keep[g]
        rows.append(r[chosen] + tile.row)
        cols.append(c[chosen] + tile.col)
        groups.append(g[chosen])
    group = np.concatenate(groups).astype(np.int32)
    label = group_class[group - 1]
    pixels = {cls: int(counts[1:][group_class == cls].sum()) for cls in (0, 1)}
    polys = {cls: int(((counts[1:] > 0) & (group_class == cls)).sum()) for cls in (0, 1)}
    return LabelSample(source.path, source.kind, np.concatenate(rows).astype(np.int32),
                       np.concatenate(cols).astype(np.int32), label, group, pixels, polys, list(source.notes))

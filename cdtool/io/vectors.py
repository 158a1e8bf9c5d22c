"""Change regions as polygons, built band by band from the mask so memory stays bounded.

Each band is labelled into 4-connected regions and polygonised; regions touching the band's last row are
kept open and merged with the regions they touch in the next band (a small union-find), then written
with their pixel count, area and mean/max score once complete. Regions under the minimum mapping unit
(pixels, and square metres where the grid is georeferenced) are dropped; when all are written, each gets
its `rank` by area (1 = largest), so an analyst sorts or filters the largest changes first.
"""

from __future__ import annotations

import heapq
import sqlite3
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyogrio
import shapely
import shapely.affinity
from affine import Affine
from pyproj import CRS as ProjCRS, Geod
from rasterio.crs import CRS
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from cdtool.errors import InputError, disk_full, write_failure

LAYER = "changes"
FLUSH_EVERY = 5000
# GeoPackage 1.2 rather than the newest: QGIS/GDAL releases still in LTS distributions (e.g. Debian 12's
# QGIS 3.22 on GDAL 3.6) warn that 1.4 files are "only partially supported".


def _envelope(blob: bytes | None) -> tuple[bool, tuple[float, ...] | None]:
    """(empty, (minx, maxx, miny, maxy) or None) from a GeoPackage geometry blob's header."""
    import struct

    if blob is None or len(blob) < 8:
        return True, None
    flags = blob[3]
    empty = bool(flags & 0x10)
    if not (flags >> 1) & 0x07:
        return empty, None
    return empty, struct.unpack(("<" if flags & 1 else ">") + "4d", blob[8:40])


def _register_gpkg_functions(db: sqlite3.Connection) -> None:
    """The SpatiaLite functions GDAL's R-tree triggers call on every UPDATE of a GeoPackage table; plain
    sqlite3 lacks them. Read from each geometry's header, as GDAL itself does."""
    db.create_function("ST_IsEmpty", 1, lambda g: int(_envelope(g)[0]), deterministic=True)
    for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        db.create_function(name, 1, lambda g, i=i: (_envelope(g)[1] or (None,) * 4)[i], deterministic=True)


@dataclass
class Region:
    geoms: list = field(default_factory=list)
    pixels: int = 0
    score_sum: float = 0.0
    score_max: float = 0.0

    def absorb(self, other: "Region") -> None:
        self.geoms += other.geoms
        self.pixels += other.pixels
        self.score_sum += other.score_sum
        self.score_max = max(self.score_max, other.score_max)


@contextmanager
def writing(path: Path):
    """A failed write of polygons as one line naming the file: GDAL and SQLite report a full disk as their own
    errors (a missing table, a failed insert), so the free space is named when it has run out."""
    try:
        yield
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, sqlite3.Error, OSError) as exc:
        raise write_failure(path, exc) from None


def check_gpkg_writable(folder: Path) -> None:
    """GDAL's SQLite refuses some paths the file system takes (a newline in a folder's name): an empty
    GeoPackage is made (and removed) in `folder` before the scoring pass, so such an --out is refused in one
    line at the start rather than after all the work."""
    import uuid

    probe = Path(folder) / f".cdtool-probe-{uuid.uuid4().hex[:8]}.gpkg"
    try:
        pyogrio.raw.write(str(probe), geometry=np.array([], dtype=object), field_data=[], fields=[],
                          driver="GPKG", geometry_type="Polygon", layer=LAYER, crs="EPSG:4326")
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        if disk_full(probe):
            raise write_failure(probe, exc) from None
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{folder}: GDAL cannot write a GeoPackage into this folder ({reason}); choose "
                         "another --out") from None
    finally:
        for p in probe.parent.glob(probe.name + "*"):  # with SQLite's -journal / -wal files
            p.unlink(missing_ok=True)


class Polygonizer:
    def __init__(self, path: Path, crs: CRS | None, transform: Affine, min_pixels: int = 1,
                 min_area_m2: float = 0.0, keep_largest: int = 5, ground_scale: float | None = None):
        self.path, self.crs, self.transform, self.min_pixels = path, crs, transform, max(1, min_pixels)
        self.min_area_m2, self.keep_largest = float(min_area_m2), keep_largest
        # fewer pixels than this can never make the minimum (5 % margin on the pixel's ground area)
        self.unit_area = self._unit_area(crs)
        pixel_m2 = abs(transform.determinant) * (ground_scale or self.unit_area)
        self.skip_below = max(self.min_pixels, int(0.95 * self.min_area_m2 / pixel_m2) if pixel_m2 > 0 else 0)
        # ground m² per map unit² at the scene centre, for projected CRSs whose units are not ground metres
        # (Web Mercator stretches with latitude); used where it differs from the unit's own factor by > 1 %
        self.ground_scale = ground_scale
        self.areas: list[tuple[float, int]] = []  # (area, id) of every written polygon, for the ranks
        self.largest: list[tuple[float, int, dict]] = []  # heap of the largest regions' summaries
        self.open_labels: np.ndarray | None = None  # labels of the previous band's last row
        self.open_ids: dict[int, int] = {}  # previous band label -> region id
        self.regions: dict[int, Region] = {}
        self.next_id = 0
        self.rows: list[dict] = []
        self.count = 0
        self.written = False
        self.geod = self._geod(crs)

    @staticmethod
    def _unit_area(crs: CRS | None) -> float:
        """m² per squared map unit of a projected CRS; 0 (unknown, so nothing is skipped by area) otherwise."""
        if crs is None or crs.is_geographic:
            return 0.0
        return ProjCRS.from_user_input(crs.to_wkt()).axis_info[0].unit_conversion_factor ** 2

    @staticmethod
    def _geod(crs: CRS | None) -> Geod | None:
        if crs is None:
            return None
        pcrs = ProjCRS.from_user_input(crs.to_wkt())
        return pcrs.get_geod() if pcrs.is_geographic else None

    def add(self, row: int, changed: np.ndarray, score: np.ndarray) -> None:
        labels, n = ndimage.label(changed)
        ids = np.arange(self.next_id, self.next_id + n)  # region id of label k is ids[k-1]
        self.next_id += n
        if n:
            # statistics over the changed pixels only (a few percent of the band): ndimage.maximum sorted
            # the whole band and was most of the polygon step's time
            where = np.flatnonzero(labels)
            lab, sc = labels.ravel()[where], score.ravel()[where].astype(np.float64)
            pixels = np.bincount(lab, minlength=n + 1)[1:]
            sums = np.bincount(lab, weights=sc, minlength=n + 1)[1:]
            maxs = np.full(n + 1, -np.inf)
            np.maximum.at(maxs, lab, sc)
            maxs = maxs[1:]
            # Regions wholly inside the band and under the minimum are never polygonised: on speckled masks
            # they are most of the regions, and polygonising them was most of the time.
            open_edge = np.zeros(n + 1, bool)
            open_edge[labels[0]] = open_edge[labels[-1]] = True
            keep = (pixels >= self.skip_below) | open_edge[1:]
            drawn = labels if keep.all() else np.where(np.concatenate([[False], keep])[labels], labels, 0)
            # Polygonise in pixel coordinates (exact integers) so pieces of one region meet exactly
            # across bands; the geotransform is applied once the region is complete.
            for geom, value in shapes(drawn.astype(np.int32), mask=drawn > 0, connectivity=4,
                                      transform=Affine.translation(0, row)):
                k = int(value) - 1
                reg = self.regions.setdefault(int(ids[k]), Region())
                reg.geoms.append(shape(geom))
            for k in np.flatnonzero(keep):
                reg = self.regions.setdefault(int(ids[k]), Region())
                reg.pixels, reg.score_sum, reg.score_max = int(pixels[k]), float(sums[k]), float(maxs[k])
        alias: dict[int, int] = {}

        def find(i: int) -> int:
            while i in alias:
                i = alias[i]
            return i

        if self.open_labels is not None and n:
            top = labels[0]
            both = (self.open_labels > 0) & (top > 0)
            for a, b in set(zip(self.open_labels[both].tolist(), top[both].tolist())):
                ra, rb = find(self.open_ids[a]), find(int(ids[b - 1]))
                if ra != rb:
                    self.regions[ra].absorb(self.regions.pop(rb))
                    alias[rb] = ra
        still_open = {find(int(ids[k - 1])) for k in np.unique(labels[-1]) if k > 0}
        for rid in [r for r in self.open_ids.values()]:
            rid = find(rid)
            if rid not in still_open and rid in self.regions:
                self._emit(rid)
        for k in range(1, n + 1):
            rid = find(int(ids[k - 1]))
            if rid not in still_open and rid in self.regions:
                self._emit(rid)
        self.open_labels = labels[-1].copy()
        self.open_ids = {int(k): find(int(ids[k - 1])) for k in np.unique(labels[-1]) if k > 0}

    def _emit(self, rid: int) -> None:
        reg = self.regions.pop(rid)
        if reg.pixels < self.min_pixels:
            return
        geom = reg.geoms[0] if len(reg.geoms) == 1 else shapely.union_all(reg.geoms)
        t = self.transform
        geom = shapely.affinity.affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])
        geom = shapely.make_valid(geom) if not geom.is_valid else geom
        area = float(geom.area)
        if self.geod is not None:
            area_m2 = abs(self.geod.geometry_area_perimeter(geom)[0])
        elif self.crs is not None:
            unit = self.unit_area
            scale = self.ground_scale if self.ground_scale and abs(self.ground_scale / unit - 1) > 0.01 else unit
            area_m2 = area * scale
        else:
            area_m2 = float("nan")
        if area_m2 < self.min_area_m2:  # NaN (no georeference) compares False: only pixels count then
            return
        fid = self.count + len(self.rows) + 1
        size = area if np.isnan(area_m2) else area_m2
        self.areas.append((size, fid))
        c = geom.representative_point()
        summary = {"id": fid, "area_m2": None if np.isnan(area_m2) else round(area_m2, 2), "pixels": reg.pixels,
                   "x": round(c.x, 6), "y": round(c.y, 6), "max_prob": round(reg.score_max, 4)}
        heapq.heappush(self.largest, (size, fid, summary))
        if len(self.largest) > self.keep_largest:
            heapq.heappop(self.largest)
        self.rows.append({"geometry": geom, "pixels": reg.pixels, "area": area, "area_m2": area_m2,
                          "mean_prob": reg.score_sum / reg.pixels, "max_prob": reg.score_max})
        if len(self.rows) >= FLUSH_EVERY:
            self._write()

    def _write(self) -> None:
        import geopandas as gpd

        if not self.rows and self.written:
            return
        columns = ["pixels", "area", "area_m2", "mean_prob", "max_prob"]
        data = {"id": np.arange(self.count + 1, self.count + len(self.rows) + 1, dtype=np.int64)}
        data.update({c: np.array([r[c] for r in self.rows], dtype=np.int64 if c == "pixels" else np.float64)
                     for c in columns})
        data["rank"] = np.zeros(len(self.rows), np.int64)  # filled in by close()
        crs = self.crs.to_wkt() if self.crs else None
        gdf = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([r["geometry"] for r in self.rows], crs=crs), crs=crs)
        with warnings.catch_warnings():  # pixel-space polygons of non-georeferenced pairs have no CRS
            warnings.filterwarnings("ignore", message="'crs' was not provided")
            with writing(self.path):
                pyogrio.write_dataframe(gdf, self.path, layer=LAYER, driver="GPKG", append=self.written,
                                        promote_to_multi=True, geometry_type="MultiPolygon",
                                        dataset_options=None if self.written else {"VERSION": "1.2"})
        self.count += len(self.rows)
        self.rows = []
        self.written = True

    def close(self) -> int:
        """Emit what is still open, write the rest and rank the polygons by area; returns their number."""
        for rid in list(self.regions):
            self._emit(rid)
        self._write()
        if self.areas:
            order = sorted(self.areas, key=lambda a: (-a[0], a[1]))
            with writing(self.path), sqlite3.connect(self.path) as db:  # a GeoPackage is SQLite: ranks in place
                _register_gpkg_functions(db)
                db.executemany(f'UPDATE "{LAYER}" SET rank = ? WHERE id = ?',
                               [(rank, fid) for rank, (_, fid) in enumerate(order, start=1)])
        return self.count

    def largest_regions(self) -> list[dict]:
        """Summaries of the largest regions written (id, area, pixels, a point inside, max score)."""
        return [s for _, _, s in sorted(self.largest, key=lambda t: (-t[0], t[1]))]


def to_geojson(gpkg: Path, dst: Path, georeferenced: bool) -> None:
    """The polygons as GeoJSON: RFC 7946 (WGS84 longitude/latitude) when georeferenced, pixel coordinates
    (x = column, y = -row) otherwise."""
    df = pyogrio.read_dataframe(gpkg, layer=LAYER)
    with warnings.catch_warnings(), writing(dst):
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        pyogrio.write_dataframe(df, dst, driver="GeoJSON", layer=LAYER,
                                layer_options={"RFC7946": "YES"} if georeferenced and df.crs else None)

"""Change regions as polygons, built band by band from the mask so memory and time stay bounded whatever the
mask looks like.

Each band is labelled into 4-connected regions and polygonised in one vectorised step; regions wholly inside
the band are written at once, those touching its last row are kept open and merged with the regions they touch
in the next band (a small union-find), then written with their pixel count, area and mean/max score once
complete. Regions under the minimum mapping unit (pixels, and square metres where the grid is georeferenced)
are dropped; when all are written, each gets its `rank` by area (1 = largest), so an analyst sorts or filters
the largest changes first. Two bounds:

- a region too large to hold open (a changed half of a scene: the pieces of open regions pass HELD_VERTICES
  vertices) is written in pieces split at band boundaries. Its pieces share `region_id` (every other row's is
  its own `id`) and `rank`; each row's pixels, areas and scores are its piece's own.
- past MAX_REGIONS regions (a speckle storm) no polygons are kept: the rest is only counted, the partial layer
  is removed and `overflow` tells the caller, who finishes the rasters and says so.
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
from affine import Affine
from pyproj import CRS as ProjCRS, Geod
from rasterio.crs import CRS
from rasterio.features import shapes
from scipy import ndimage

from cdtool.errors import InputError, disk_full, write_failure

LAYER = "changes"
FLUSH_EVERY = 5000
# More regions than this are not written as polygons: a layer of more is no map an analyst reviews, and a
# speckle storm (independent noise at 10 m: over 200,000 regions on 3072²) wrote for as long as one cared to wait.
MAX_REGIONS = 100_000
# Vertices held in the pieces of open regions (about 10 MB) before the largest are written as pieces: a noisy
# region holds over 300,000 in each band of 256 x 2048 pixels, so one band of it can be written at a time
HELD_VERTICES = 1 << 18
# A band holding a region of more pixels than this is polygonised in sub-bands of SUB_BAND rows: GDAL's
# polygoniser and the region's GeoJSON took 90 MB for a noisy region across a band of 256 x 2048 pixels
SUB_BAND, SUB_BAND_PIXELS = 64, 1 << 16
CHECK_HOLES_BELOW = 1000  # geometries with fewer holes are checked for validity (see Polygonizer._measure)
FIELDS = {"id": np.int64, "pixels": np.int64, "area": np.float64, "area_m2": np.float64, "mean_prob": np.float64,
          "max_prob": np.float64, "rank": np.int64, "region_id": np.int64}
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


@dataclass
class Written:
    """What is already written of a region too large to hold open: its id (its first piece's), its pieces' feature
    ids and its totals so far, so its last piece can complete its rank and summary."""

    rid: int
    fids: list
    pixels: int
    score_sum: float
    score_max: float
    size: float  # m² (map units² where not georeferenced) of the pieces written
    point: tuple  # a point inside its first piece

    def absorb(self, other: "Written") -> "Written":
        first = other if other.rid < self.rid else self
        return Written(first.rid, self.fids + other.fids, self.pixels + other.pixels, self.score_sum + other.score_sum,
                       max(self.score_max, other.score_max), self.size + other.size, first.point)


@dataclass
class Region:
    """A region while it touches the band's last row: the pieces not yet written ((band row, polygon in pixel
    coordinates)), their vertices, pixels and scores, and what was written of it already (`Written`, or None)."""

    pieces: list = field(default_factory=list)
    vertices: int = 0
    pixels: int = 0
    score_sum: float = 0.0
    score_max: float = -np.inf
    written: Written | None = None

    def absorb(self, other: "Region") -> None:
        self.pieces += other.pieces
        self.vertices += other.vertices
        self.pixels += other.pixels
        self.score_sum += other.score_sum
        self.score_max = max(self.score_max, other.score_max)
        if other.written is not None:
            self.written = other.written if self.written is None else self.written.absorb(other.written)

    def clear(self) -> None:
        """Forget the pieces held (written, or dropped): their statistics go with them."""
        self.pieces, self.vertices, self.pixels, self.score_sum, self.score_max = [], 0, 0, 0.0, -np.inf


def _label_stats(labels: np.ndarray, n: int, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels, score sum, score max) per label (index 0 unused), over the changed pixels only (a few percent of
    the band): ndimage.maximum sorted the whole band and was most of the polygon step's time."""
    where = np.flatnonzero(labels)
    lab, sc = labels.ravel()[where], score.ravel()[where].astype(np.float64)
    maxs = np.full(n + 1, -np.inf)
    np.maximum.at(maxs, lab, sc)
    return np.bincount(lab, minlength=n + 1), np.bincount(lab, weights=sc, minlength=n + 1), maxs


def _edge_pixels(labels: np.ndarray, n: int, row: int) -> np.ndarray:
    """(n + 1, 2) pixel coordinates of the centre of a pixel of each label in the band's first or last row."""
    out = np.full((n + 1, 2), np.nan)
    for r in (-1, 0):
        cols = np.flatnonzero(labels[r])
        out[labels[r][cols]] = np.column_stack([cols + 0.5, np.full(len(cols), row + r % len(labels) + 0.5)])
    return out


def _polygons(drawn: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
    """(label, polygon) of every region drawn in a band, in pixel coordinates (exact integers, so pieces of one
    region meet exactly across bands). The rings' coordinates are gathered into arrays (a chunk at a time: as
    Python tuples they take 112 bytes a vertex) and built in one vectorised call: one shapely object per
    GeoJSON ring was most of a speckled band's time."""
    chunks, coords, sizes, per_polygon, values = [], [], [0], [0], []
    for geom, value in shapes(drawn, mask=drawn > 0, connectivity=4, transform=Affine.translation(0, row)):
        for ring in geom["coordinates"]:
            coords.extend(ring)
            sizes.append(len(ring))
        per_polygon.append(len(geom["coordinates"]))
        values.append(int(value))
        if len(coords) >= 1 << 16:
            chunks.append(np.asarray(coords, np.float64))
            coords = []
    if not values:
        return np.zeros(0, np.int64), np.zeros(0, object)
    chunks.append(np.asarray(coords, np.float64).reshape(-1, 2))
    polys = shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.concatenate(chunks),
                                      (np.cumsum(sizes), np.cumsum(per_polygon)))
    return np.asarray(values, np.int64), polys


def _merge(pieces: list[tuple[int, shapely.Polygon, tuple]]):
    """One geometry of a region's pieces ((band row, polygon, a point inside it)). Pieces of one band are
    disjoint (4-connected regions touch at corners at most): a MultiPolygon as they are. Across bands they meet
    only along band boundaries, which their holes never reach (a hole pixel in a band's edge row would touch
    the outside), so only the outer shells are united and each piece's holes put back into the part of the
    union that holds it, as coordinate arrays: uniting whole pieces with thousands of holes took minutes."""
    polys = [p for _, p, _ in pieces]
    if len(polys) == 1:
        return polys[0]
    if len({r for r, _, _ in pieces}) == 1:
        return shapely.MultiPolygon(polys)
    union = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(polys)))
    if shapely.get_num_interior_rings(polys).sum() == 0:
        return union
    parts = shapely.get_parts(union)
    where = np.zeros(len(polys), np.int64) if len(parts) == 1 else _locate(parts, [pt for *_, pt in pieces])
    return _with_holes(parts, polys, where)


def _with_holes(parts: np.ndarray, polys: list, where: np.ndarray):
    """The parts of the shells' union with the holes of the pieces each holds (piece i in part where[i]), built
    from one gathered coordinate array."""
    _, coords, (ring_end, poly_end) = shapely.to_ragged_array(polys)
    _, part_coords, (part_ring_end, part_poly_end) = shapely.to_ragged_array(parts)
    starts = np.concatenate([part_ring_end[:-1], ring_end[:-1] + len(part_coords)])
    lengths = np.concatenate([np.diff(part_ring_end), np.diff(ring_end)])
    order, counts = [], []
    for j in range(len(parts)):  # part j's own rings, then the holes of the pieces inside it
        rings = [np.arange(part_poly_end[j], part_poly_end[j + 1])]
        rings += [len(part_ring_end) - 1 + np.arange(poly_end[i] + 1, poly_end[i + 1])
                  for i in np.flatnonzero(where == j)]
        order.append(np.concatenate(rings))
        counts.append(len(order[-1]))
    order = np.concatenate(order)
    size = lengths[order]
    end = np.cumsum(size)
    index = np.arange(end[-1]) - np.repeat(end - size - starts[order], size)  # each ring's coordinates in turn
    out = shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.concatenate([part_coords, coords])[index],
                                    (np.concatenate([[0], end]), np.concatenate([[0], np.cumsum(counts)])))
    return out[0] if len(out) == 1 else shapely.MultiPolygon(list(out))


def _locate(parts: np.ndarray, points: list[tuple]) -> np.ndarray:
    """Index of the part holding each point (pixel centres, so inside exactly one)."""
    xy = np.asarray(points, np.float64)
    where = np.full(len(xy), -1)
    shapely.prepare(parts)
    for j, part in enumerate(parts):
        where[shapely.contains_xy(part, xy[:, 0], xy[:, 1])] = j
    if (where < 0).any():
        raise AssertionError("a region's piece lies outside the union of their shells")
    return where


class Polygonizer:
    """The change regions of a mask given band by band, as a GeoPackage layer (see the module's docstring)."""

    def __init__(self, path: Path, crs: CRS | None, transform: Affine, min_pixels: int = 1,
                 min_area_m2: float = 0.0, keep_largest: int = 5, ground_scale: float | None = None,
                 max_regions: int = MAX_REGIONS, held_vertices: int = HELD_VERTICES):
        self.path, self.crs, self.transform, self.min_pixels = path, crs, transform, max(1, min_pixels)
        self.min_area_m2, self.keep_largest = float(min_area_m2), keep_largest
        self.max_regions, self.held_vertices = max_regions, held_vertices
        # fewer pixels than this can never make the minimum (5 % margin on the pixel's ground area)
        self.unit_area = self._unit_area(crs)
        pixel_m2 = abs(transform.determinant) * (ground_scale or self.unit_area)
        self.skip_below = max(self.min_pixels, int(0.95 * self.min_area_m2 / pixel_m2) if pixel_m2 > 0 else 0)
        # past max_regions regions are only counted, by their pixels
        self.count_below = max(self.min_pixels, int(np.ceil(self.min_area_m2 / pixel_m2)) if pixel_m2 > 0 else 0)
        # ground m² per map unit² at the scene centre, for projected CRSs whose units are not ground metres
        # (Web Mercator stretches with latitude); used where it differs from the unit's own factor by > 1 %
        self.ground_scale = ground_scale
        self.geod = self._geod(crs)
        self.regions: dict[int, Region] = {}  # open regions (touching the last band's last row)
        self.open_labels: np.ndarray | None = None  # labels of the previous band's last row
        self.open_ids: dict[int, int] = {}  # previous band label -> region id
        self.next_id = 0
        self.region_count = 0  # regions written (a split region once), or counted past max_regions
        self.features = 0  # rows written to the file
        self.pending: list[dict] = []  # batches of rows not yet written
        self.pending_rows = self.pending_vertices = 0
        self.ranked: list[tuple[np.ndarray, np.ndarray]] = []  # (size, region id) of every region, for the ranks
        self.split_fids: dict[int, list[int]] = {}  # region id -> its pieces' feature ids, for split regions
        self.largest: list[tuple[float, int, dict]] = []  # heap of the largest regions' summaries
        self.written = False
        self.overflow = False  # more than max_regions regions: no polygons kept
        self.kept_pixels = 0  # pixels of the regions written (those that make the minimum mapping unit)

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
        """One band of the mask (rows from `row`) and its scores; bands come in order, top to bottom."""
        labels, n = ndimage.label(changed)
        pixels, sums, maxs = _label_stats(labels, n, score)
        if len(changed) > SUB_BAND and pixels[1:].max(initial=0) > SUB_BAND_PIXELS and not self.overflow:
            for r in range(0, len(changed), SUB_BAND):  # see SUB_BAND
                self.add(row + r, changed[r:r + SUB_BAND], score[r:r + SUB_BAND])
            return
        edge = np.zeros(n + 1, bool)
        edge[labels[0]] = edge[labels[-1]] = True
        edge[0] = False
        # Regions wholly inside the band and under the minimum are never polygonised: on speckled masks they
        # are most of the regions, and polygonising them was most of the time.
        keep = (pixels >= self.skip_below) | edge
        keep[0] = False
        if self.overflow:
            self.region_count += int((keep & ~edge & (pixels >= self.count_below)).sum())
            values, polys = np.zeros(0, np.int64), np.zeros(0, object)
        else:
            values, polys = _polygons(np.where(keep[labels], labels, 0).astype(np.int32), row) if keep.any() \
                else (np.zeros(0, np.int64), np.zeros(0, object))
            inner = ~edge[values]
            k = values[inner]
            self._emit_whole(polys[inner], pixels[k], sums[k], maxs[k])
        outer = edge[values] if len(values) else np.zeros(0, bool)
        self._link(row, labels, n, edge, values[outer], polys[outer], (pixels, sums, maxs))

    def _link(self, row: int, labels: np.ndarray, n: int, edge: np.ndarray, values: np.ndarray, polys: np.ndarray,
              stats: tuple) -> None:
        """Merge the band's regions touching its edges with the open regions they touch above (a small
        union-find), write those no longer reaching the band's last row, and keep the open ones' pieces within
        `held_vertices`."""
        base = self.next_id  # label k of this band is region base + k
        self.next_id += n + 1
        for k in np.flatnonzero(edge).tolist():
            self.regions[base + k] = Region(pixels=int(stats[0][k]), score_sum=float(stats[1][k]),
                                            score_max=float(stats[2][k]))
        inside = _edge_pixels(labels, n, row)
        for k, poly, v in zip(values.tolist(), polys, shapely.get_num_coordinates(polys).tolist()):
            if self.overflow:  # max_regions passed in this band: nothing is held any more
                break
            reg = self.regions[base + k]
            reg.pieces.append((row, poly, tuple(inside[k])))
            reg.vertices += v
        alias: dict[int, int] = {}

        def find(i: int) -> int:
            while i in alias:
                i = alias[i]
            return i

        if self.open_labels is not None and n:
            top = labels[0]
            both = (self.open_labels > 0) & (top > 0)
            for a, b in set(zip(self.open_labels[both].tolist(), top[both].tolist())):
                ra, rb = find(self.open_ids[a]), find(base + b)
                if ra != rb:
                    self._join(ra, rb)
                    alias[rb] = ra
        bottom = [k for k in np.unique(labels[-1]).tolist() if k > 0]
        still_open = {find(base + k) for k in bottom}
        for rid in [r for r in self.regions if r not in still_open]:
            self._close(self.regions.pop(rid))
        self.open_labels = labels[-1].copy()
        self.open_ids = {k: find(base + k) for k in bottom}
        self._bound_memory()

    def _join(self, ra: int, rb: int) -> None:
        """Region rb is part of ra; two regions already written in pieces become one region."""
        a, b = self.regions[ra], self.regions.pop(rb)
        if a.written is not None and b.written is not None:
            self.region_count -= 1
        a.absorb(b)

    def _close(self, reg: Region) -> None:
        """A region that no longer reaches the band's last row is complete: write it (or its last piece)."""
        if self.overflow:
            if reg.written is None:  # a split region was counted with its first piece
                self.region_count += int(reg.pixels >= self.count_below)
            return
        if reg.written is not None:
            self._finish_split(reg)
        elif reg.pieces:
            self._emit_whole(np.array([_merge(reg.pieces)], dtype=object), np.array([reg.pixels]),
                             np.array([reg.score_sum]), np.array([reg.score_max]))

    def _bound_memory(self) -> None:
        """Past `held_vertices` vertices in open regions' pieces, the largest regions are written as pieces of
        their region (split at this band's boundary), so memory stays bounded by the window."""
        held = sum(r.vertices for r in self.regions.values())
        if held <= self.held_vertices or self.overflow:
            return
        for reg in sorted(self.regions.values(), key=lambda r: -r.vertices):
            if held <= self.held_vertices // 2 or self.overflow:
                break
            vertices = reg.vertices
            if self._split(reg):
                held -= vertices

    def _measure(self, polys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel-coordinate polygons -> (valid map geometries, area in map units², area in m², NaN where the
        grid is not georeferenced): geodesic for geographic CRSs, scale-corrected where map units are not
        ground metres."""
        t = self.transform
        geoms = shapely.transform(polys, lambda xy: np.column_stack((t.a * xy[:, 0] + t.b * xy[:, 1] + t.c,
                                                                     t.d * xy[:, 0] + t.e * xy[:, 1] + t.f)))
        # GDAL's 4-connected polygons are valid, and so is what _merge makes of them; checked where that is cheap
        # (GEOS took 3 s on one band of a changed half of a scene, for its 50,000 holes)
        parts, owner = shapely.get_parts(geoms, return_index=True)
        holes = np.bincount(owner, weights=shapely.get_num_interior_rings(parts), minlength=len(geoms))
        bad = np.zeros(len(geoms), bool)
        bad[holes < CHECK_HOLES_BELOW] = ~shapely.is_valid(geoms[holes < CHECK_HOLES_BELOW])
        if bad.any():
            geoms[bad] = shapely.make_valid(geoms[bad])
        area = shapely.area(geoms)
        if self.geod is not None:
            area_m2 = np.array([abs(self.geod.geometry_area_perimeter(g)[0]) for g in geoms], np.float64)
        elif self.crs is None and self.ground_scale:  # a pixel grid with --gsd
            area_m2 = area * self.ground_scale
        elif self.crs is not None:
            unit = self.unit_area
            scale = self.ground_scale if self.ground_scale and abs(self.ground_scale / unit - 1) > 0.01 else unit
            area_m2 = area * scale
        else:
            area_m2 = np.full(len(geoms), np.nan)
        return geoms, area, area_m2

    def _counted(self, k: int) -> bool:
        """Count k more regions; True when that passes max_regions (polygons stop: `overflow`)."""
        self.region_count += k
        if self.region_count > self.max_regions and not self.overflow:
            self.overflow = True
            self.pending, self.pending_rows, self.pending_vertices = [], 0, 0
            self.ranked, self.split_fids, self.largest = [], {}, []
            for reg in self.regions.values():
                reg.pieces, reg.vertices = [], 0
        return self.overflow

    def _emit_whole(self, polys: np.ndarray, pixels: np.ndarray, sums: np.ndarray, maxs: np.ndarray) -> None:
        """Write complete regions (pixel-coordinate polygons) that make the minimum mapping unit."""
        if not len(polys):
            return
        geoms, area, area_m2 = self._measure(polys)
        ok = (pixels >= self.min_pixels) & ~(area_m2 < self.min_area_m2)  # NaN (no georeference): pixels only
        if not ok.any() or self._counted(int(ok.sum())):
            return
        geoms, area, area_m2, pixels, sums, maxs = (a[ok] for a in (geoms, area, area_m2, pixels, sums, maxs))
        fids = self._queue(geoms, pixels, area, area_m2, sums / pixels, maxs, None)
        size = np.where(np.isnan(area_m2), area, area_m2)
        self.ranked.append((size, fids))
        for i in self._heap_candidates(size):
            self._push_largest(float(size[i]), int(fids[i]), geoms[i], int(pixels[i]), area_m2[i], float(maxs[i]))

    def _split(self, reg: Region) -> bool:
        """Write the pieces an open region holds as one piece of it; False (held on) while the region has not
        yet shown that it makes the minimum mapping unit."""
        geoms, area, area_m2 = self._measure(np.array([_merge(reg.pieces)], dtype=object))
        first = reg.written is None
        if first and (reg.pixels < self.min_pixels or area_m2[0] < self.min_area_m2):
            return False
        if first and self._counted(1):
            return True
        rid = self.features + self.pending_rows + 1 if first else reg.written.rid
        fid = int(self._queue(geoms, np.array([reg.pixels]), area, area_m2, np.array([reg.score_sum / reg.pixels]),
                              np.array([reg.score_max]), np.array([rid]))[0])
        c = geoms[0].representative_point() if first else None
        piece = Written(rid, [fid], reg.pixels, reg.score_sum, reg.score_max,
                        float(area[0] if np.isnan(area_m2[0]) else area_m2[0]), (c.x, c.y) if first else None)
        reg.written = piece if first else reg.written.absorb(piece)
        reg.clear()
        return True

    def _finish_split(self, reg: Region) -> None:
        """The last piece of a split region, then its rank entry and summary from its totals."""
        if reg.pieces:
            self._split(reg)
        if self.overflow:
            return
        w = reg.written
        self.split_fids[w.rid] = w.fids
        self.ranked.append((np.array([w.size]), np.array([w.rid])))
        if self._heap_candidates(np.array([w.size])).size:
            area_m2 = w.size if self.crs is not None or self.ground_scale else float("nan")
            self._push_summary(w.size, {"id": w.rid, "area_m2": None if np.isnan(area_m2) else round(area_m2, 2),
                                        "pixels": w.pixels, "x": round(w.point[0], 6), "y": round(w.point[1], 6),
                                        "max_prob": round(w.score_max, 4)})

    def _heap_candidates(self, size: np.ndarray) -> np.ndarray:
        """Indices of the sizes that may enter the largest-regions heap (at most keep_largest of them)."""
        floor = self.largest[0][0] if len(self.largest) >= self.keep_largest else -np.inf
        idx = np.flatnonzero(size > floor)
        if len(idx) > self.keep_largest:
            idx = idx[np.argsort(-size[idx], kind="stable")[:self.keep_largest]]
        return idx

    def _push_largest(self, size: float, fid: int, geom, pixels: int, area_m2: float, score_max: float) -> None:
        c = geom.representative_point()
        self._push_summary(size, {"id": fid, "area_m2": None if np.isnan(area_m2) else round(float(area_m2), 2),
                                  "pixels": pixels, "x": round(c.x, 6), "y": round(c.y, 6),
                                  "max_prob": round(score_max, 4)})

    def _push_summary(self, size: float, summary: dict) -> None:
        heapq.heappush(self.largest, (size, summary["id"], summary))
        if len(self.largest) > self.keep_largest:
            heapq.heappop(self.largest)

    def _queue(self, geoms: np.ndarray, pixels: np.ndarray, area: np.ndarray, area_m2: np.ndarray,
               mean: np.ndarray, maxs: np.ndarray, rids: np.ndarray | None) -> np.ndarray:
        """Rows to write (written in batches); returns their feature ids, which are also their region ids
        unless given (pieces of a split region)."""
        fids = np.arange(self.features + self.pending_rows + 1, self.features + self.pending_rows + len(geoms) + 1,
                         dtype=np.int64)
        self.pending.append({"geometry": geoms, "id": fids, "pixels": pixels.astype(np.int64), "area": area,
                             "area_m2": area_m2, "mean_prob": mean, "max_prob": maxs,
                             "rank": np.zeros(len(geoms), np.int64), "region_id": fids if rids is None else rids})
        self.pending_rows += len(geoms)
        self.kept_pixels += int(pixels.sum())
        self.pending_vertices += int(shapely.get_num_coordinates(geoms).sum())
        if self.pending_rows >= FLUSH_EVERY or self.pending_vertices > self.held_vertices:
            self._write()
        return fids

    def _write(self) -> None:
        """Append the pending rows to the layer; the first call makes it (GeoPackage 1.2), even with none."""
        if not self.pending_rows and self.written:
            return
        cols = {k: (np.concatenate([b[k] for b in self.pending]) if self.pending else np.zeros(0, dtype))
                for k, dtype in FIELDS.items()}
        geometry = np.concatenate([b["geometry"] for b in self.pending]) if self.pending else np.zeros(0, object)
        with warnings.catch_warnings():  # pixel-space polygons of non-georeferenced pairs have no CRS
            warnings.filterwarnings("ignore", message="'crs' was not provided")
            with writing(self.path):
                pyogrio.raw.write(str(self.path), geometry=shapely.to_wkb(geometry), field_data=list(cols.values()),
                                  fields=list(cols), layer=LAYER, driver="GPKG", geometry_type="MultiPolygon",
                                  crs=self.crs.to_wkt() if self.crs else None, promote_to_multi=True,
                                  append=self.written, dataset_options=None if self.written else {"VERSION": "1.2"})
        self.features += self.pending_rows
        self.pending, self.pending_rows, self.pending_vertices = [], 0, 0
        self.written = True

    def close(self) -> int:
        """Write what is still open and rank the regions by area; returns the number of regions. Past
        max_regions (`overflow`) the partial layer is removed and the number is the regions counted."""
        for rid in list(self.regions):
            self._close(self.regions.pop(rid))
        if self.overflow:
            for p in [self.path, *self.path.parent.glob(self.path.name + "-*")]:  # with SQLite's -journal, -wal
                p.unlink(missing_ok=True)
            return self.region_count
        self._write()
        self._rank()
        return self.region_count

    def _rank(self) -> None:
        """Each region's rank by area (1 = largest; ties by id) on all its rows, and the final region id of
        pieces whose regions joined after they were written: indexed UPDATEs in place (a GeoPackage is SQLite;
        unindexed, one UPDATE per row made ranking 10,000 regions take minutes)."""
        if not self.ranked:
            return
        size = np.concatenate([s for s, _ in self.ranked])
        rids = np.concatenate([r for _, r in self.ranked])
        rank = np.empty(len(size), np.int64)
        rank[np.lexsort((rids, -size))] = np.arange(1, len(size) + 1)
        rows = ((r, rid, fid) for r, rid in zip(rank.tolist(), rids.tolist())
                for fid in self.split_fids.get(rid, (rid,)))
        with writing(self.path), sqlite3.connect(self.path) as db:
            _register_gpkg_functions(db)
            db.execute(f'CREATE INDEX "cdtool_rank_id" ON "{LAYER}" (id)')
            db.executemany(f'UPDATE "{LAYER}" SET rank = ?, region_id = ? WHERE id = ?', rows)
            db.execute('DROP INDEX "cdtool_rank_id"')

    def largest_regions(self) -> list[dict]:
        """Summaries of the largest regions written (id, area, pixels, a point inside, max score); none past
        max_regions, where the regions seen would be those at the top of the raster."""
        return [s for _, _, s in sorted(self.largest, key=lambda t: (-t[0], t[1]))]


def reproject_layer(gpkg: Path, dst_crs: str) -> None:
    """The polygons of `gpkg` in `dst_crs` (`--dst-crs`), in place: `area` is recomputed in its units, while
    `area_m2` (on the ground) and the scores stay. The layer is read whole: its size is bounded by MAX_REGIONS."""
    import geopandas as gpd

    frame = gpd.read_file(gpkg, layer=LAYER)
    frame = frame.to_crs(dst_crs)
    frame["area"] = frame.geometry.area
    staging = gpkg.with_name(f".{gpkg.stem}.reprojected.gpkg")
    with writing(staging):
        frame.to_file(staging, layer=LAYER, driver="GPKG")
    staging.replace(gpkg)


def to_geojson(gpkg: Path, dst: Path) -> None:
    """The polygons as RFC 7946 GeoJSON (WGS84 longitude/latitude): of a georeferenced pair only, since every
    reader takes GeoJSON coordinates as WGS84."""
    df = pyogrio.read_dataframe(gpkg, layer=LAYER)
    with writing(dst):
        pyogrio.write_dataframe(df, dst, driver="GeoJSON", layer=LAYER, layer_options={"RFC7946": "YES"})

"""`cdtool patches --protocol footprints`: building change from two footprint layers (the WDC dataset of
paper 000): match buildings across dates, classify them, rasterise a change mask, cut building-centred
patch pairs.

Matching links a building of date 1 to one of date 2 when their intersection covers at least
`min_overlap` of the smaller of the two (overlap over the smaller, not IoU, so a building cut into
three parts still links to each part). Connected groups of links are then classified:

    1 -> 0  demolished      0 -> 1  new           1 -> 1  unchanged (IoU >= min_iou) or modified
    1 -> n  split           n -> 1  merged        n -> m  complex (split and merged at once)

The change mask is the footprint difference: new and demolished buildings whole, and for the other
changed groups the symmetric difference of their two outlines.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely import make_valid, force_2d
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.ops import unary_union
from shapely.strtree import STRtree

from cdtool.data.splits import BlockSplitter
from cdtool.data.store import DatasetWriter
from cdtool.data.tiling import footprint
from cdtool.errors import InputError
from cdtool.io.outputs import replaced_when_done, write_text_atomic
from cdtool.windows import Tile

CLASSES = ("unchanged", "modified", "new", "demolished", "split", "merged", "complex")
COLOURS = {"unchanged": "190,190,190", "modified": "255,170,0", "new": "40,170,60", "demolished": "220,40,40",
           "split": "60,120,230", "merged": "160,60,200", "complex": "0,190,190"}


@dataclass(frozen=True)
class FootprintOptions:
    min_overlap: float = 0.5
    min_iou: float = 0.5
    patch: int = 112
    resolution: float = 0.5        # pixel size of the mask grid when no imagery is given
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0


def _polygonal(geom):
    """The polygonal part of a repaired geometry (make_valid can return collections with lines)."""
    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon)) and not g.is_empty]
    return unary_union(polys) if polys else None


def read_footprints(path: Path, layer: str | None = None):
    """A polygon layer in any OGR format, 2-D, with invalid geometries repaired.

    Returns the GeoDataFrame and a report {"repaired": n, "dropped": n}."""
    import geopandas as gpd

    if not Path(path).exists():
        raise InputError(f"{path}: no such file")
    try:
        gdf = gpd.read_file(path, layer=layer)
    except Exception as exc:  # pyogrio raises several types for unreadable vectors
        raise InputError(f"{path}: cannot read as a vector layer ({str(exc).splitlines()[0]})") from None
    if len(gdf) == 0:
        raise InputError(f"{path}: layer holds no features")
    geoms = [force_2d(g) if g is not None else None for g in gdf.geometry.values]
    invalid = [g is not None and not g.is_valid for g in geoms]
    fixed = [_polygonal(make_valid(g)) if bad else _polygonal(g) for g, bad in zip(geoms, invalid)]
    keep = [g is not None for g in fixed]
    if not any(keep):
        raise InputError(f"{path}: no polygon geometries (building footprints must be polygons)")
    gdf = gdf.set_geometry(gpd.GeoSeries(fixed, crs=gdf.crs))[keep].reset_index(drop=True)
    gdf["src_fid"] = np.flatnonzero(keep)
    return gdf, {"repaired": int(sum(invalid)), "dropped": int(len(keep) - sum(keep))}


def classify(before: list, after: list, min_overlap: float = 0.5, min_iou: float = 0.5) -> list[dict]:
    """Groups of matched buildings with their class: dicts with before/after index lists, class, IoU."""
    parent = list(range(len(before) + len(after)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = STRtree(after)
    for i, g in enumerate(before):
        for j in tree.query(g, predicate="intersects"):
            h = after[j]
            inter = g.intersection(h).area
            smaller = min(g.area, h.area)
            if smaller > 0 and inter / smaller >= min_overlap:
                parent[find(i)] = find(len(before) + int(j))
    groups: dict[int, dict] = {}
    for k in range(len(before) + len(after)):
        g = groups.setdefault(find(k), {"before": [], "after": []})
        (g["before"] if k < len(before) else g["after"]).append(k if k < len(before) else k - len(before))
    out = []
    for g in groups.values():
        nb, na = len(g["before"]), len(g["after"])
        ub = unary_union([before[i] for i in g["before"]]) if nb else Polygon()
        ua = unary_union([after[j] for j in g["after"]]) if na else Polygon()
        union = ub.union(ua).area
        iou = ub.intersection(ua).area / union if union > 0 else 0.0
        if nb == 1 and na == 0:
            cls = "demolished"
        elif nb == 0:
            cls = "new"
        elif nb == 1 and na == 1:
            cls = "unchanged" if iou >= min_iou else "modified"
        elif nb == 1:
            cls = "split"
        elif na == 1:
            cls = "merged"
        else:
            cls = "complex"
        if cls in ("new", "demolished"):
            changed = ua if cls == "new" else ub
        else:
            changed = Polygon() if cls == "unchanged" else ub.symmetric_difference(ua)
        out.append({**g, "class": cls, "iou": iou, "geometry": ub.union(ua), "changed": changed,
                    "area_before": ub.area, "area_after": ua.area})
    out.sort(key=lambda g: (min(g["before"], default=10**9), min(g["after"], default=10**9)))
    return out


def qml_style(field: str = "class") -> str:
    """A categorised QGIS style: one colour per change class."""
    cats = "".join(f'<category render="true" symbol="{i}" value="{c}" label="{c}"/>' for i, c in enumerate(CLASSES))
    syms = "".join(
        f'<symbol type="fill" name="{i}" alpha="0.75" clip_to_extent="1" force_rhr="0"><layer class="SimpleFill" '
        f'enabled="1" locked="0" pass="0"><Option type="Map"><Option name="color" type="QString" '
        f'value="{COLOURS[c]},190"/><Option name="outline_color" type="QString" value="{COLOURS[c]},255"/>'
        f'<Option name="outline_width" type="QString" value="0.4"/><Option name="style" type="QString" '
        f'value="solid"/></Option></layer></symbol>' for i, c in enumerate(CLASSES))
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n<qgis version=\"3.28\" "
            "styleCategories=\"Symbology\">"
            f'<renderer-v2 type="categorizedSymbol" attr="{field}" forceraster="0" symbollevels="0" '
            f'enableorderby="0"><categories>{cats}</categories><symbols>{syms}</symbols></renderer-v2></qgis>\n')


def _embed_style(gpkg: Path, layers: list[str], qml: str) -> None:
    """Store the style in the GeoPackage's layer_styles table, so QGIS applies it on opening."""
    with sqlite3.connect(gpkg) as con:
        con.execute("CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                    "f_table_catalog TEXT, f_table_schema TEXT, f_table_name TEXT, f_geometry_column TEXT, "
                    "styleName TEXT, styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, "
                    "owner TEXT, ui TEXT, update_time DATETIME DEFAULT CURRENT_TIMESTAMP)")
        for layer in layers:
            con.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                        "f_geometry_column, styleName, styleQML, useAsDefault, description) "
                        "VALUES ('', '', ?, 'geom', ?, ?, 1, 'cdtool change classes')", (layer, layer, qml))


def write_classification(path: Path, groups: list[dict], before_gdf, after_gdf, crs) -> None:
    """GeoPackage with layers "changes" (one feature per matched group) and "buildings" (every
    footprint of both dates with its group's class), written under a temporary name."""
    import geopandas as gpd

    changes = gpd.GeoDataFrame(
        [{"group": k, "class": g["class"], "n_before": len(g["before"]), "n_after": len(g["after"]),
          "iou": round(g["iou"], 4), "area_before": round(g["area_before"], 2), "area_after": round(g["area_after"], 2),
          "fid_before": ",".join(str(int(before_gdf["src_fid"].iloc[i])) for i in g["before"]),
          "fid_after": ",".join(str(int(after_gdf["src_fid"].iloc[j])) for j in g["after"])}
         for k, g in enumerate(groups)], geometry=[g["geometry"] for g in groups], crs=crs)
    rows, geoms = [], []
    for k, g in enumerate(groups):
        for date, gdf, idx in (("before", before_gdf, g["before"]), ("after", after_gdf, g["after"])):
            for i in idx:
                rows.append({"group": k, "class": g["class"], "date": date, "src_fid": int(gdf["src_fid"].iloc[i])})
                geoms.append(gdf.geometry.iloc[i])
    buildings = gpd.GeoDataFrame(rows, geometry=geoms, crs=crs)
    with replaced_when_done(path) as tmp:
        tmp.unlink(missing_ok=True)
        changes.to_file(tmp, layer="changes", driver="GPKG", VERSION="1.2")  # see io/vectors.py
        buildings.to_file(tmp, layer="buildings", driver="GPKG", mode="a")
        _embed_style(tmp, ["changes", "buildings"], qml_style())
    write_text_atomic(path.with_suffix(".qml"), qml_style())


def grid_from_bounds(bounds, resolution: float) -> tuple[Affine, int, int]:
    """A north-up grid of `resolution` covering `bounds` (used when no imagery is given)."""
    x0, y0, x1, y1 = bounds
    width, height = max(1, int(np.ceil((x1 - x0) / resolution))), max(1, int(np.ceil((y1 - y0) / resolution)))
    return Affine(resolution, 0, x0, 0, -resolution, y1), height, width


def write_mask(path: Path, shapes: list, transform: Affine, height: int, width: int, crs, band_rows: int = 512) -> int:
    """Rasterise the changed geometries as uint8 0/1 in row bands (memory bounded by the band);
    returns the number of changed pixels."""
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1, "height": height, "width": width,
               "transform": transform, "crs": crs, "compress": "deflate", "tiled": True,
               "blockxsize": 256, "blockysize": 256} if width >= 256 and height >= 256 else \
        {"driver": "GTiff", "dtype": "uint8", "count": 1, "height": height, "width": width,
         "transform": transform, "crs": crs, "compress": "deflate"}
    shapes = [s for s in shapes if s is not None and not s.is_empty]
    total = 0
    with replaced_when_done(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, height, band_rows):
            h = min(band_rows, height - r)
            win = Window(0, r, width, h)
            band = rasterize([(s, 1) for s in shapes], out_shape=(h, width), transform=dst.window_transform(win),
                             fill=0, dtype="uint8") if shapes else np.zeros((h, width), np.uint8)
            total += int(band.sum())
            dst.write(band, 1, window=win)
    return total


def _burn(shapes: list, transform: Affine, tile: Tile) -> np.ndarray:
    shapes = [s for s in shapes if s is not None and not s.is_empty]
    t = transform * Affine.translation(tile.col, tile.row)
    if not shapes:
        return np.zeros((tile.height, tile.width), np.uint8)
    return rasterize([(s, 1) for s in shapes], out_shape=(tile.height, tile.width), transform=t, fill=0,
                     dtype="uint8")


def _mask_grid(pair, groups: list[dict], b_gdf, a_gdf, opts: FootprintOptions, before_image: Path | None,
               before_vec: Path) -> tuple[Affine, int, int]:
    """(transform, height, width) of the mask and patches: the imagery's grid, which must overlap the
    footprints, or without imagery a grid of `opts.resolution` over both layers, padded by half a patch."""
    if pair is not None:
        transform, height, width = pair.info.transform, pair.info.height, pair.info.width
        extent = box(*rasterio.transform.array_bounds(height, width, transform))
        if not extent.intersects(unary_union([g["geometry"] for g in groups])):
            raise InputError(f"{before_image}: imagery does not overlap the footprints of {before_vec}")
        return transform, height, width
    bounds = np.array([*b_gdf.total_bounds[:2].clip(max=a_gdf.total_bounds[:2]),
                       *np.maximum(b_gdf.total_bounds[2:], a_gdf.total_bounds[2:])])
    pad = opts.patch * opts.resolution / 2
    transform, height, width = grid_from_bounds(bounds + [-pad, -pad, pad, pad], opts.resolution)
    if height * width > 2**30:
        raise InputError(f"{before_vec}: a {width}x{height} mask grid at --resolution {opts.resolution} is "
                         "too large; raise --resolution or give the imagery")
    return transform, height, width


def _write_patches(writer, groups: list[dict], changed_shapes: list, pair, b_gdf, a_gdf,
                   grid: tuple[Affine, int, int], opts: FootprintOptions) -> int:
    """One patch centred on each group (clipped to the grid), in the split of its block; the image is the
    imagery, or without it the two dates' rasterised footprints. Returns the channels of the last patch
    written (1 when every group fell on a split border)."""
    transform, height, width = grid
    splitter = BlockSplitter("footprints", 4 * opts.patch, opts.seed, opts.fractions)
    half, channels = opts.patch // 2, 1
    for k, g in enumerate(groups):
        cx, cy = ~transform * (g["geometry"].centroid.x, g["geometry"].centroid.y)
        r = int(np.clip(round(cy) - half, 0, height - opts.patch))
        c = int(np.clip(round(cx) - half, 0, width - opts.patch))
        tile = Tile(r, c, opts.patch, opts.patch)
        split = splitter(tile)
        if split is None:
            continue
        mask = _burn([s for s in changed_shapes], transform, tile)
        if pair is not None:
            image, valid = pair.read(tile)
        else:
            image = np.stack([_burn(list(b_gdf.geometry.values), transform, tile),
                              _burn(list(a_gdf.geometry.values), transform, tile)])[:, None]
        channels = int(image.shape[1])
        writer.add({"sample": f"group{k}", "group": k, "class": g["class"], "label": int(g["class"] != "unchanged"),
                    "row": r, "col": c, "height": opts.patch, "width": opts.patch, "iou": g["iou"],
                    "changed_share": float(mask.mean()), "split": split,
                    "footprint": footprint(tile, transform).wkt}, image, mask=mask)
    writer.close()
    return channels


def make_footprints(before_vec: Path, after_vec: Path, out: Path, opts: FootprintOptions, *,
                    before_image: Path | None = None, after_image: Path | None = None,
                    before_layer: str | None = None, after_layer: str | None = None,
                    overwrite: bool = False, progress: bool = False) -> dict:
    """Classify, rasterise and cut patches; returns counts per class and the output paths."""
    from cdtool.io.pair import open_pair

    t0 = time.perf_counter()
    if (before_image is None) != (after_image is None):
        raise InputError(f"{before_image or after_image}: give both --before-image and --after-image, or neither")
    b_gdf, b_rep = read_footprints(before_vec, before_layer)
    a_gdf, a_rep = read_footprints(after_vec, after_layer)
    if (b_gdf.crs is None) != (a_gdf.crs is None):
        missing = before_vec if b_gdf.crs is None else after_vec
        raise InputError(f"{missing}: layer has no CRS while the other has one; assign it first (e.g. ogr2ogr -a_srs)")
    pair = open_pair(before_image, after_image) if before_image else None
    store = None
    try:
        crs = (pair.info.crs if pair is not None else None) or b_gdf.crs
        if crs is not None:
            b_gdf, a_gdf = b_gdf.to_crs(crs), a_gdf.to_crs(crs)
        groups = classify(list(b_gdf.geometry.values), list(a_gdf.geometry.values), opts.min_overlap, opts.min_iou)
        counts = {c: sum(g["class"] == c for g in groups) for c in CLASSES}
        transform, height, width = _mask_grid(pair, groups, b_gdf, a_gdf, opts, before_image, before_vec)
        params = {"before": str(before_vec), "after": str(after_vec), "before_image": str(before_image),
                  "after_image": str(after_image), "min_overlap": opts.min_overlap, "min_iou": opts.min_iou,
                  "patch": opts.patch, "resolution": opts.resolution, "fractions": list(opts.fractions),
                  "seed": opts.seed, "layers": [before_layer, after_layer]}
        dtype = pair.before.dtypes[0] if pair is not None else "uint8"
        store = DatasetWriter(out, "footprints", params, overwrite=overwrite, image_dtype=dtype)
        extra = {"classes": counts, "groups": len(groups), "buildings_before": len(b_gdf),
                 "buildings_after": len(a_gdf), "repaired": b_rep["repaired"] + a_rep["repaired"],
                 "dropped_geometries": b_rep["dropped"] + a_rep["dropped"],
                 "classification": str(out / "footprint_changes.gpkg"), "change_mask": str(out / "change_mask.tif")}
        if store.complete:
            return {**store.summary(), "already_complete": True}
        write_classification(out / "footprint_changes.gpkg", groups, b_gdf, a_gdf, crs)
        changed_shapes = [g["changed"] for g in groups if g["class"] != "unchanged"]
        extra["changed_pixels"] = write_mask(out / "change_mask.tif", changed_shapes, transform, height, width, crs)
        if height < opts.patch or width < opts.patch:
            raise InputError(f"{before_image or before_vec}: grid {width}x{height} is smaller than --patch {opts.patch}")
        channels = _write_patches(store.unit("buildings"), groups, changed_shapes, pair, b_gdf, a_gdf,
                                  (transform, height, width), opts)
        extra["dropped_guard"] = len(groups) - len(store.rows())
        summary = store.finish(crs=crs, channels=channels, extra=extra)
        return {**summary, "seconds": round(time.perf_counter() - t0, 2)}
    except BaseException:
        if store is not None:
            store.abandon()
        raise
    finally:
        if pair is not None:
            pair.close()

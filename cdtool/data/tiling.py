"""`cdtool tile`: cut image pairs (and their change masks) into fixed-size chips on the shared window
grid, with an index of where each chip came from and a leak-free train/val/test split."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from shapely.geometry import Polygon
from tqdm import tqdm

from cdtool.data.sources import MaskReader, PairSource, check_pairs, name_split
from cdtool.data.splits import BlockSplitter, split_of
from cdtool.data.store import DatasetWriter
from cdtool.errors import InputError, OptionError
from cdtool.windows import Tile, starts

ROWS_PER_UNIT = 16  # grid rows per resumable unit: an interruption loses at most this band


# How tiles are assigned to splits: by pair, by spatial block, by the pair's train_/val_/test_ name, or auto
# (name when every pair has one, else pair when there are several, else block).
SPLIT_BY = ("auto", "pair", "block", "name")


@dataclass(frozen=True)
class TileOptions:
    size: int = 256
    stride: int = 256
    max_nodata: float = 0.5      # skip tiles whose invalid share exceeds this
    split_by: str = "auto"       # auto | pair | block | name (train_/val_/test_ file names)
    block: int = 0               # block side in pixels for split_by=block (0: 4 x size)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    bands: tuple[int, ...] | None = None
    align: bool = False
    wrap: bool = False           # 360° panoramas: tiles run across the left/right seam


def tile_grid(height: int, width: int, size: int, stride: int, wrap: bool) -> list[list[Tile]]:
    """Grid rows of tiles; with `wrap` the columns start every `stride` all the way round and the
    last ones run past the right edge (read modulo the width), so the seam is covered like any column."""
    rows = starts(height, size, stride)
    if wrap:
        cols = list(range(0, width, stride))
    else:
        cols = starts(width, size, stride)
    return [[Tile(r, c, size, size) for c in cols] for r in rows]


def footprint(tile: Tile, transform) -> Polygon:
    """The tile's outline in the source CRS (pixel coordinates when the pair has none)."""
    corners = [(tile.col, tile.row), (tile.col_stop, tile.row), (tile.col_stop, tile.row_stop),
               (tile.col, tile.row_stop)]
    return Polygon([transform * c for c in corners])


def make_tiles(pairs: list[PairSource], out: Path, opts: TileOptions, *, overwrite: bool = False,
               progress: bool = False) -> dict:
    """Tile every pair into `out` (see cdtool.data.store for the format); returns counts."""
    t0 = time.perf_counter()
    if opts.size <= 0 or opts.stride <= 0:
        field, value = ("size", opts.size) if opts.size <= 0 else ("stride", opts.stride)
        raise OptionError(field, f"must be positive, got {value}")
    if opts.block < 0:
        raise OptionError("block", f"must not be negative (0: 4 x size), got {opts.block}")
    if not 0.0 <= opts.max_nodata <= 1.0:
        raise OptionError("max_nodata", f"must lie in [0, 1], got {opts.max_nodata}")
    if opts.split_by not in SPLIT_BY:
        raise OptionError("split_by", f"must be one of {', '.join(SPLIT_BY)}, got {opts.split_by!r}")
    bands = list(opts.bands) if opts.bands else None
    metas = check_pairs(pairs, bands, opts.align)
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        raise InputError(f"{pairs[0].before}: two pairs share the name {max(names, key=names.count)}")
    crss = {str(m[3]) for m in metas}
    dtypes = {m[4] for m in metas}
    split_by = opts.split_by
    if split_by == "auto":
        split_by = "name" if all(name_split(p.name) for p in pairs) else ("pair" if len(pairs) > 1 else "block")
    if split_by == "name" and not all(name_split(p.name) for p in pairs):
        raise InputError(f"{pairs[0].before}: --split-by name needs file names starting with train_, val_ or test_")
    block = opts.block or 4 * opts.size
    params = {"size": opts.size, "stride": opts.stride, "max_nodata": opts.max_nodata, "split_by": split_by,
              "block": block, "fractions": list(opts.fractions), "seed": opts.seed, "bands": bands,
              "align": opts.align, "wrap": opts.wrap,
              "pairs": [[p.name, str(p.before), str(p.after), str(p.mask) if p.mask else None] for p in pairs]}
    store = DatasetWriter(out, "tiles", params, overwrite=overwrite,
                          image_dtype=dtypes.pop() if len(dtypes) == 1 else "float32")
    if store.complete:
        return {**store.summary(), "resumed": False, "already_complete": True}
    try:
        return _fill(store, pairs, metas, opts, bands, split_by, block, crss, progress, t0)
    except BaseException:
        store.abandon()
        raise


def _fill(store, pairs, metas, opts: TileOptions, bands, split_by: str, block: int, crss: set, progress: bool,
          t0: float) -> dict:
    """Write the tiles of every unfinished unit, then the index (the body of `make_tiles`)."""
    from cdtool.io.pair import open_pair
    from cdtool.normalization import statistics_record

    out = store.root
    total = sum(len(tile_grid(h, w, opts.size, opts.stride, opts.wrap)) *
                len(tile_grid(h, w, opts.size, opts.stride, opts.wrap)[0])
                for h, w, *_ in metas if h >= opts.size and (opts.wrap or w >= opts.size))
    stats = {"skipped_nodata": 0, "dropped_guard": 0, "skipped_small_pairs": 0}
    resumed = any(p.name != "_params.json" for p in (out / "parts").glob("*.json"))
    bar = tqdm(total=total, desc="tiles", unit="tile", disable=not progress)
    for pair, (height, width, count, crs, _) in zip(pairs, metas):
        if height < opts.size or (not opts.wrap and width < opts.size):
            stats["skipped_small_pairs"] += 1
            continue
        grid_rows = tile_grid(height, width, opts.size, opts.stride, opts.wrap)
        splitter = BlockSplitter(pair.name, block, opts.seed, opts.fractions)
        pair_split = name_split(pair.name) if split_by == "name" else split_of(pair.name, opts.seed, opts.fractions)
        with open_pair(pair.before, pair.after, bands=bands, align=opts.align, wrap=opts.wrap) as rp:
            norm_stats = statistics_record(rp)
            mask = MaskReader(pair.mask, height, width, rp.origin) if pair.mask else None
            has_nodata = any(ds.nodata is not None or any(ds.nodatavals) for ds in (rp.before, rp.after)) or \
                bool(mask and mask.has_nodata)
            try:
                for u0 in range(0, len(grid_rows), ROWS_PER_UNIT):
                    unit = f"{pair.name}.r{u0 // ROWS_PER_UNIT:05d}"
                    band = grid_rows[u0:u0 + ROWS_PER_UNIT]
                    n_band = sum(len(r) for r in band)
                    if store.done(unit):
                        bar.update(n_band)
                        continue
                    writer = store.unit(unit)
                    for tile in (t for r in band for t in r):
                        bar.update(1)
                        split = pair_split if split_by != "block" else \
                            splitter(tile, width if opts.wrap else None)
                        if split is None:
                            stats["dropped_guard"] += 1
                            continue
                        image, valid = rp.read(tile)
                        m = None
                        if mask:  # a pixel the mask holds no truth for is nodata like one the images lack
                            m, mask_valid = mask.read_valid(tile)
                            valid = valid & mask_valid
                        nodata_share = 1.0 - float(valid.mean())
                        if nodata_share > opts.max_nodata or valid.sum() == 0:
                            stats["skipped_nodata"] += 1
                            continue
                        changed = float(m[valid].mean()) if m is not None else None
                        row = {"sample": f"{pair.name}/{tile.row}_{tile.col}", "pair": pair.name,
                               "before": str(pair.before), "after": str(pair.after),
                               "mask_file": str(pair.mask) if pair.mask else None,
                               "row": tile.row, "col": tile.col, "height": tile.height, "width": tile.width,
                               "nodata_share": nodata_share, "changed_share": changed, "label": -1,
                               "split": split, "norm_stats": norm_stats,
                               "footprint": footprint(tile, rp.info.transform).wkt}
                        writer.add(row, image, mask=m, valid=valid if has_nodata else None)
                    writer.close()
            finally:
                if mask:
                    mask.close()
    bar.close()
    crs = crss.pop() if len(crss) == 1 and "None" not in crss else None
    summary = store.finish(crs=crs, channels=metas[0][2], extra=stats)
    return {**summary, "resumed": resumed, "seconds": round(time.perf_counter() - t0, 2)}

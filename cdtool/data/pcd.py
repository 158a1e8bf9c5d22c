"""`cdtool patches --protocol pcd`: centre-labelled patch pairs (paper 000, section 4.1).

A 112x112 pair is positive when its centre 14x14 is all changed, negative when all unchanged; mixed
centres are skipped. Labels come from the mask alone in a first pass, so `max_positives` can keep a
seeded random subset of positives (the rare-event setting: 50 / 500 / all) before any pixels are read;
the second pass reads image row bands of one patch height, so memory is bounded by that band.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cdtool.data.sources import MaskReader, PairSource, check_pairs, name_split
from cdtool.data.splits import BlockSplitter, split_of
from cdtool.data.store import DatasetWriter
from cdtool.data.tiling import footprint, tile_grid
from cdtool.errors import InputError
from cdtool.windows import Tile


@dataclass(frozen=True)
class PcdOptions:
    patch: int = 112
    centre: int = 14
    stride: int = 14
    max_positives: int | None = None   # None keeps all
    max_negatives: int | None = None
    wrap: bool = False
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    bands: tuple[int, ...] | None = None


def centre_labels(mask_band: np.ndarray, valid_band: np.ndarray | None, cols: list[int], centre: int,
                  offset: int) -> np.ndarray:
    """Label per column start from the centre rows of a mask band: 1 all changed, 0 all unchanged,
    -1 mixed or not fully valid. `mask_band` holds the `centre` rows, already extended for wrapping."""
    changed = np.concatenate([[0], np.cumsum(mask_band.sum(axis=0))])
    bad = np.concatenate([[0], np.cumsum((~valid_band).sum(axis=0))]) if valid_band is not None else None
    out = np.full(len(cols), -1, np.int8)
    full = centre * centre
    for i, c in enumerate(cols):
        a, b = c + offset, c + offset + centre
        if bad is not None and bad[b] - bad[a] > 0:
            continue
        n = changed[b] - changed[a]
        out[i] = 1 if n == full else (0 if n == 0 else -1)
    return out


def _candidates(pair: PairSource, height: int, width: int, opts: PcdOptions, origin) -> list[tuple[int, int, int]]:
    """(row, col, label) of every pure-centre window of one pair, from the mask only."""
    if height < opts.patch or (not opts.wrap and width < opts.patch):
        return []
    grid = tile_grid(height, width, opts.patch, opts.stride, opts.wrap)  # `cdtool tile`'s windows, seam and all
    rows, cols = [row[0].row for row in grid], [t.col for t in grid[0]]
    off = (opts.patch - opts.centre) // 2
    ext = opts.patch if opts.wrap else 0
    out = []
    with MaskReader(pair.mask, height, width, origin) as mr:
        for r in rows:
            band, valid = mr.read_valid(Tile(r + off, 0, opts.centre, width + ext))
            for c, lab in zip(cols, centre_labels(band, valid, cols, opts.centre, off)):
                if lab >= 0:
                    out.append((r, c, int(lab)))
    return out


def _splits(pairs, metas, by: str, opts):
    """The split each candidate (pair index, row, col, label) will be written to, known before any pixel is
    read, so positives can be chosen per split; None where a tile straddles two blocks' splits."""
    cache: dict[int, object] = {}

    def of(f) -> str | None:
        k, r, c, _ = f
        pair = pairs[k]
        if by == "name":
            return name_split(pair.name)
        if by == "pair":
            return split_of(pair.name, opts.seed, opts.fractions)
        splitter = cache.setdefault(k, BlockSplitter(pair.name, 4 * opts.patch, opts.seed, opts.fractions))
        return splitter(Tile(r, c, opts.patch, opts.patch), metas[k][1] if opts.wrap else None)

    return of


def make_pcd(pairs: list[PairSource], out: Path, opts: PcdOptions, *, overwrite: bool = False,
             progress: bool = False) -> dict:
    """Cut PCD patch pairs from every pair into `out`; returns counts per class."""
    from cdtool.io.pair import open_pair
    from cdtool.normalization import statistics_record

    t0 = time.perf_counter()
    if not 0 < opts.centre <= opts.patch or opts.stride <= 0:
        raise InputError(f"need 0 < centre <= patch and stride > 0 (got {opts.centre}, {opts.patch}, {opts.stride})")
    bands = list(opts.bands) if opts.bands else None
    metas = check_pairs(pairs, bands)
    found = []
    for k, (pair, (h, w, *_)) in enumerate(zip(pairs, metas)):
        found += [(k, r, c, lab) for r, c, lab in _candidates(pair, h, w, opts, (0, 0))]
    by = "name" if all(name_split(p.name) for p in pairs) else ("pair" if len(pairs) > 1 else "block")
    split_of_candidate = _splits(pairs, metas, by, opts)
    pos = [f for f in found if f[3] == 1]
    neg = [f for f in found if f[3] == 0]
    rng = np.random.default_rng(opts.seed)
    # --max-positives is the rare-event setting: that many positives to TRAIN on; val and test keep all theirs
    train_pos = [f for f in pos if split_of_candidate(f) == "train"]
    other_pos = [f for f in pos if split_of_candidate(f) != "train"]
    keep_pos = pos if opts.max_positives is None or opts.max_positives >= len(train_pos) else \
        sorted(other_pos + [train_pos[i] for i in rng.choice(len(train_pos), opts.max_positives, replace=False)])
    keep_neg = neg if opts.max_negatives is None or opts.max_negatives >= len(neg) else \
        [neg[i] for i in sorted(rng.choice(len(neg), opts.max_negatives, replace=False))]
    keep = sorted(keep_pos + keep_neg)
    dtypes = {m[4] for m in metas}
    params = {"patch": opts.patch, "centre": opts.centre, "stride": opts.stride, "max_positives": opts.max_positives,
              "max_negatives": opts.max_negatives, "wrap": opts.wrap, "fractions": list(opts.fractions),
              "seed": opts.seed, "bands": bands, "split_by": by,
              "pairs": [[p.name, str(p.before), str(p.after), str(p.mask)] for p in pairs]}
    store = DatasetWriter(out, "pcd", params, overwrite=overwrite,
                          image_dtype=dtypes.pop() if len(dtypes) == 1 else "float32")
    counts = {"positives_found": len(pos), "negatives_found": len(neg), "positives": len(keep_pos),
              "negatives": len(keep_neg), "train_positives_found": len(train_pos)}
    if store.complete:
        return {**store.summary(), "already_complete": True}
    bar = tqdm(total=len(keep), desc="pcd patches", unit="pair", disable=not progress)
    for k, (pair, (height, width, *_)) in enumerate(zip(pairs, metas)):
        mine = [f for f in keep if f[0] == k]
        if store.done(pair.name) or not mine:
            bar.update(len(mine))
            if not store.done(pair.name):
                store.unit(pair.name).close()
            continue
        splitter = BlockSplitter(pair.name, 4 * opts.patch, opts.seed, opts.fractions)
        pair_split = name_split(pair.name) if by == "name" else split_of(pair.name, opts.seed, opts.fractions)
        writer = store.unit(pair.name)
        ext = opts.patch - 1 if opts.wrap else 0
        with open_pair(pair.before, pair.after, bands=bands, wrap=opts.wrap) as rp, \
                MaskReader(pair.mask, height, width) as mr:
            norm_stats = statistics_record(rp)
            for r in sorted({f[1] for f in mine}):
                band_tile = Tile(r, 0, opts.patch, width + ext)
                image, valid = rp.read(band_tile)
                mband = mr.read(band_tile)
                for _, _, c, lab in (f for f in mine if f[1] == r):
                    tile = Tile(r, c, opts.patch, opts.patch)
                    split = pair_split if by != "block" else splitter(tile, width if opts.wrap else None)
                    bar.update(1)
                    if split is None:
                        continue
                    sl = slice(c, c + opts.patch)
                    writer.add({"sample": f"{pair.name}/{r}_{c}", "pair": pair.name, "before": str(pair.before),
                                "after": str(pair.after), "mask_file": str(pair.mask), "row": r, "col": c,
                                "height": opts.patch, "width": opts.patch, "label": lab,
                                "changed_share": float(mband[:, sl].mean()), "split": split, "norm_stats": norm_stats,
                                "footprint": footprint(tile, rp.info.transform).wkt},
                               image[..., sl], mask=mband[:, sl])
        writer.close()
    bar.close()
    rows = store.rows()
    counts["dropped_guard"] = len(keep) - len(rows)
    crss = {str(m[3]) for m in metas}
    summary = store.finish(crs=crss.pop() if len(crss) == 1 and "None" not in crss else None,
                           channels=metas[0][2], extra=counts)
    return {**summary, "seconds": round(time.perf_counter() - t0, 2)}

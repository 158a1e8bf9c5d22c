"""Generated GeoTIFF pairs with known changes, of any size, written window by window.

Used where no real pair is at hand: the demo on a machine without ../shared/data, tests, and the
memory/speed benchmarks (a 16384² pair is written in bounded memory). The "before" image is a smooth
multi-band texture; "after" is the same scene with a gain/offset shift, fresh sensor noise, and
rectangular "buildings" of other reflectance in some 256-pixel cells; the truth mask marks them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

CELL = 256


def _texture(rows: np.ndarray, cols: np.ndarray, bands: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(rows.astype(np.float32), cols.astype(np.float32), indexing="ij")
    out = np.empty((bands, len(rows), len(cols)), np.float32)
    for b in range(bands):
        acc = np.zeros_like(x)
        for _ in range(4):
            fx, fy = rng.uniform(0.002, 0.03, 2)
            ph = rng.uniform(0, 2 * np.pi)
            acc += np.sin(fx * x + fy * y + ph)
        out[b] = 0.5 + 0.1 * acc
    return out


def _changes(row0: int, col0: int, height: int, width: int, seed: int, rate: float) -> np.ndarray:
    """Change mask for a window: one rectangle in a `rate` share of the 256-px cells, fixed by seed."""
    mask = np.zeros((height, width), bool)
    for cr in range(row0 // CELL, (row0 + height - 1) // CELL + 1):
        for cc in range(col0 // CELL, (col0 + width - 1) // CELL + 1):
            rng = np.random.default_rng([seed, cr, cc])
            if rng.random() >= rate:
                continue
            h, w = rng.integers(12, 96, 2)
            r, c = cr * CELL + rng.integers(0, CELL - h), cc * CELL + rng.integers(0, CELL - w)
            r0, r1 = max(r, row0) - row0, min(r + h, row0 + height) - row0
            c0, c1 = max(c, col0) - col0, min(c + w, col0 + width) - col0
            if r1 > r0 and c1 > c0:
                mask[r0:r1, c0:c1] = True
    return mask


def _lattice(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """A value in [0, 1) for each integer lattice point, the same whichever window asks (a hash, no state)."""
    h = (i.astype(np.uint64) * np.uint64(0x9E3779B1) ^ j.astype(np.uint64) * np.uint64(0x85EBCA77)
         ^ np.uint64(seed * 0xC2B2AE3D + 1))
    h ^= h >> np.uint64(15)
    h *= np.uint64(0x2C1B3C6D)
    h ^= h >> np.uint64(12)
    return (h & np.uint64(0xFFFFFF)).astype(np.float32) / np.float32(1 << 24)


def _detail(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """(h, w) multi-octave value noise around 0 (cells of 256 to 4 pixels): fields, roofs and grain, so a
    detector's score map has the structure of real imagery rather than smooth waves."""
    out = np.zeros((len(rows), len(cols)), np.float32)
    for octave, (cell, amp) in enumerate(((256, 0.30), (64, 0.20), (16, 0.15), (4, 0.08))):
        y, x = rows / cell, cols / cell
        i, j = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
        fy, fx = (y - i).astype(np.float32), (x - j).astype(np.float32)
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
        corner = lambda di, dj: _lattice(i[:, None] + di, j[None, :] + dj, seed * 7 + octave)  # noqa: E731
        top = corner(0, 0) * (1 - fx) + corner(0, 1) * fx
        bottom = corner(1, 0) * (1 - fx) + corner(1, 1) * fx
        out += amp * ((top * (1 - fy[:, None]) + bottom * fy[:, None]) - 0.5)
    return out


def pair_block(r: int, c: int, h: int, w: int, bands: int, seed: int, rate: float, dtype: str,
               detail: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(before, after, change) of the window at row r, column c: a pure function of its arguments, so blocks
    can be made in any order or process."""
    scale = 255.0 if dtype == "uint8" else 10000.0
    rows, cols = np.arange(r, r + h), np.arange(c, c + w)
    base = _texture(rows, cols, bands, seed)
    if detail:
        base += _detail(rows, cols, seed)[None] * np.linspace(0.8, 1.2, bands, dtype=np.float32)[:, None, None]
    rng = np.random.default_rng([seed, r, c])
    before = base + rng.normal(0, 0.02, base.shape).astype(np.float32)
    after = 0.9 * base + 0.05 + rng.normal(0, 0.02, base.shape).astype(np.float32)
    change = _changes(r, c, h, w, seed, rate)
    roof = rng.uniform(0.1, 0.9, (bands, 1, 1)).astype(np.float32)
    after = np.where(change, roof + rng.normal(0, 0.02, base.shape).astype(np.float32), after)
    return (np.clip(before * scale, 0, scale).astype(dtype), np.clip(after * scale, 0, scale).astype(dtype),
            change.astype("uint8")[None])


def write_pair(folder: str | Path, size: int = 1024, bands: int = 3, seed: int = 0, rate: float = 0.3,
               dtype: str = "uint8", crs: str | None = "EPSG:32632", block: int = 1024, width: int | None = None,
               detail: bool = False, processes: int = 1) -> tuple[Path, Path, Path]:
    """Write before.tif, after.tif and truth.tif (0/1) of size rows × `width` columns (default: square) into
    `folder`; returns their paths. `detail` adds multi-octave texture (benchmarks: realistic write costs);
    `processes` > 1 makes the blocks in that many processes (large benchmark pairs)."""
    from concurrent.futures import ProcessPoolExecutor

    height, width = size, width or size
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    transform = Affine(0.5, 0, 500000.0, 0, -0.5, 5400000.0) if crs else Affine.identity()
    common = dict(driver="GTiff", width=width, height=height, crs=crs, transform=transform, tiled=True,
                  blockxsize=256, blockysize=256, compress="deflate")
    paths = folder / "before.tif", folder / "after.tif", folder / "truth.tif"
    windows = [(r, c, min(block, height - r), min(block, width - c))
               for r in range(0, height, block) for c in range(0, width, block)]
    args = [(r, c, h, w, bands, seed, rate, dtype, detail) for r, c, h, w in windows]
    with rasterio.open(paths[0], "w", count=bands, dtype=dtype, **common) as b, \
            rasterio.open(paths[1], "w", count=bands, dtype=dtype, **common) as a, \
            rasterio.open(paths[2], "w", count=1, dtype="uint8", **common) as t:
        pool = ProcessPoolExecutor(processes) if processes > 1 else None
        try:
            blocks = pool.map(pair_block, *zip(*args)) if pool else (pair_block(*x) for x in args)
            for (r, c, h, w), (before, after, change) in zip(windows, blocks):
                win = Window(c, r, w, h)
                b.write(before, window=win)
                a.write(after, window=win)
                t.write(change, window=win)
        finally:
            if pool:
                pool.shutdown()
    return paths

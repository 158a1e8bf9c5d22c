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


def write_pair(folder: str | Path, size: int = 1024, bands: int = 3, seed: int = 0, rate: float = 0.3,
               dtype: str = "uint8", crs: str | None = "EPSG:32632", block: int = 1024) -> tuple[Path, Path, Path]:
    """Write before.tif, after.tif and truth.tif (0/1) of size×size into `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scale = 255.0 if dtype == "uint8" else 10000.0
    transform = Affine(0.5, 0, 500000.0, 0, -0.5, 5400000.0) if crs else Affine.identity()
    common = dict(driver="GTiff", width=size, height=size, crs=crs, transform=transform, tiled=True,
                  blockxsize=256, blockysize=256, compress="deflate")
    paths = folder / "before.tif", folder / "after.tif", folder / "truth.tif"
    with rasterio.open(paths[0], "w", count=bands, dtype=dtype, **common) as b, \
            rasterio.open(paths[1], "w", count=bands, dtype=dtype, **common) as a, \
            rasterio.open(paths[2], "w", count=1, dtype="uint8", **common) as t:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                rows, cols = np.arange(r, r + h), np.arange(c, c + w)
                base = _texture(rows, cols, bands, seed)
                rng = np.random.default_rng([seed, r, c])
                before = base + rng.normal(0, 0.02, base.shape).astype(np.float32)
                after = 0.9 * base + 0.05 + rng.normal(0, 0.02, base.shape).astype(np.float32)
                change = _changes(r, c, h, w, seed, rate)
                roof = rng.uniform(0.1, 0.9, (bands, 1, 1)).astype(np.float32)
                after = np.where(change, roof + rng.normal(0, 0.02, base.shape).astype(np.float32), after)
                win = Window(c, r, w, h)
                b.write(np.clip(before * scale, 0, scale).astype(dtype), window=win)
                a.write(np.clip(after * scale, 0, scale).astype(dtype), window=win)
                t.write(change.astype("uint8")[None], window=win)
    return paths

"""Train/val/test assignment that keeps neighbours together.

A split is a pure function of (seed, key) through a hash, not of the order things were processed in,
so re-runs, resumed runs and runs over a superset of the pairs agree. Keys are whole source pairs, or
square blocks of a raster; a tile that touches a block of another split is dropped (a guard band), so no
pixel is ever seen by two splits even with overlapping tiles.
"""

from __future__ import annotations

import hashlib

from cdtool.errors import InputError
from cdtool.windows import Tile


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.7,0.15,0.15' -> fractions of train, val, test (normalised)."""
    try:
        vals = [float(t) for t in text.replace(" ", "").split(",")]
    except ValueError:
        raise InputError(f"--split {text!r}: expected three numbers like 0.7,0.15,0.15") from None
    if len(vals) != 3 or any(v < 0 for v in vals) or sum(vals) <= 0:
        raise InputError(f"--split {text!r}: expected three non-negative numbers like 0.7,0.15,0.15")
    total = sum(vals)
    return vals[0] / total, vals[1] / total, vals[2] / total


def split_of(key: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """Deterministic split of one key."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    if h < fractions[0]:
        return "train"
    return "val" if h < fractions[0] + fractions[1] else "test"


class BlockSplitter:
    """Splits one raster into square blocks of `block` pixels, each hashed to a split."""

    def __init__(self, pair: str, block: int, seed: int, fractions: tuple[float, float, float]):
        self.pair, self.block, self.seed, self.fractions = pair, block, seed, fractions

    def block_split(self, br: int, bc: int) -> str:
        return split_of(f"{self.pair}/{br}/{bc}", self.seed, self.fractions)

    def __call__(self, tile: Tile, width: int | None = None) -> str | None:
        """Split of the block under the tile's centre, or None when the tile reaches into a block of
        another split (columns are taken modulo `width` for panoramas)."""
        b = self.block
        cr, cc = tile.row + tile.height // 2, tile.col + tile.width // 2
        own = self.block_split(cr // b, (cc % width if width else cc) // b)
        for br in range(tile.row // b, (tile.row_stop - 1) // b + 1):
            for bc in range(tile.col // b, (tile.col_stop - 1) // b + 1):
                if self.block_split(br, (bc * b % width) // b if width else bc) != own:
                    return None
        return own

"""Tiles as a frozen value type, and pure functions that lay tile grids over a raster shape.

Training tiling and sliding-window detection share these, so a tile means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

# Rasters larger than this are refused unless the caller raises the limit (detect and evaluate --max-pixels):
# a 120-byte TIFF may claim 10^6 x 10^6 pixels, and 10 gigapixels (100,000²) already take about 30 min with
# cva on 2 cores.
MAX_PIXELS = 10**10


@dataclass(frozen=True, order=True)
class Tile:
    """A rectangle of pixels: top-left (row, col) and size. Coordinates may lie outside a raster
    (negative or past its edge) when a caller pads, e.g. circularly for 360° panoramas."""

    row: int
    col: int
    height: int
    width: int

    @property
    def row_stop(self) -> int:
        return self.row + self.height

    @property
    def col_stop(self) -> int:
        return self.col + self.width

    def shift(self, drow: int, dcol: int) -> "Tile":
        return Tile(self.row + drow, self.col + dcol, self.height, self.width)

    def intersection(self, other: "Tile") -> "Tile | None":
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_stop, other.row_stop), min(self.col_stop, other.col_stop)
        if r1 <= r0 or c1 <= c0:
            return None
        return Tile(r0, c0, r1 - r0, c1 - c0)

    def slices(self) -> tuple[slice, slice]:
        """Numpy slices of this tile in an array whose origin is (0, 0)."""
        return slice(self.row, self.row_stop), slice(self.col, self.col_stop)


def starts(length: int, size: int, stride: int, begin: int = 0) -> list[int]:
    """Start offsets of windows of `size` covering [begin, begin + length) with at most `stride` between
    them. The last window is pulled back to end exactly at the edge, so no window reads past it; a
    length shorter than `size` yields one window at `begin` (the caller shrinks it)."""
    if size <= 0 or stride <= 0:
        raise ValueError(f"size and stride must be positive, got size={size} stride={stride}")
    if length <= size:
        return [begin]
    out = list(range(begin, begin + length - size, stride))
    out.append(begin + length - size)
    return out


def aligned_spans(length: int, size: int, stride: int, begin: int = 0, align: int = 1) -> list[tuple[int, int]]:
    """(start, size) of windows as `starts` lays them, each start a multiple of `align` from `begin`: the last
    window, pulled back to the edge, starts on the multiple below and grows by up to align - 1 instead. Models
    equivariant only to shifts by a multiple (U-Nets, centre-patch scorers) then see every window as the
    whole image would."""
    span = min(size, length)
    out = [(s, span) for s in starts(length, span, stride, begin)]
    last = begin + (out[-1][0] - begin) // align * align
    if last != out[-1][0]:
        out = [o for o in out[:-1] if o[0] < last] + [(last, begin + length - last)]
    return out


def grid(height: int, width: int, size: int, stride: int,
         row_begin: int = 0, col_begin: int = 0, align: int = 1) -> list[list[Tile]]:
    """Tiles of `size`×`size` (shrunk to the raster when it is smaller) covering a height×width area
    whose top-left is (row_begin, col_begin), grouped by grid row so callers can stream row bands; with
    `align`, every tile starts on that multiple (see `aligned_spans`)."""
    rows = aligned_spans(height, size, stride, row_begin, align)
    cols = aligned_spans(width, size, stride, col_begin, align)
    return [[Tile(r, c, h, w) for c, w in cols] for r, h in rows]


def wrapped_runs(col: int, col_stop: int, width: int) -> list[tuple[int, int]]:
    """Columns [col, col_stop) of a 360° panorama `width` wide as runs inside [0, width), wrapping around."""
    runs, c = [], col
    while c < col_stop:
        start = c % width
        n = min(width - start, col_stop - c)
        runs.append((start, start + n))
        c += n
    return runs


def fitted_spans(length: int, size: int, overlap: int, begin: int = 0, align: int = 1) -> list[tuple[int, int]]:
    """(start, size) of windows of at most `size` (plus what alignment adds) covering the length with at least
    `overlap` between neighbours, laid to score the fewest pixels: as many windows as `aligned_spans` would
    lay, evenly spaced and each shrunk to what the length needs, unless the plain layout scores fewer. A
    2048 px side in 512 px windows overlapping by 64 takes five windows of 464 px (2320 px scored) where
    plain 512 px windows take 2560; starts stay on multiples of `align`."""
    plain = aligned_spans(length, size, max(align, (size - overlap) // align * align), begin, align)
    if length <= size:
        return plain
    windows = -(-(length - overlap) // (size - overlap))  # ceil: as many as the plain layout needs
    step = -(-(length - overlap) // windows)  # the least step that still covers the length with them
    step = -(-step // align) * align
    even = aligned_spans(length, min(length, step + overlap), step, begin, align)
    return min(plain, even, key=lambda spans: sum(span for _, span in spans))


def fitted_grid(height: int, width: int, size: int, overlap: int,
                row_begin: int = 0, col_begin: int = 0, align: int = 1) -> list[list[Tile]]:
    """`grid` with windows fitted to each side (`fitted_spans`): detection's grid, where every pixel a window
    scores twice is model time spent again."""
    rows = fitted_spans(height, size, overlap, row_begin, align)
    cols = fitted_spans(width, size, overlap, col_begin, align)
    return [[Tile(r, c, h, w) for c, w in cols] for r, h in rows]

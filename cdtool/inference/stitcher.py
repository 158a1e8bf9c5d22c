"""Blend overlapping tile outputs into one map, streaming finished row bands.

Each tile adds `score × weight` and `weight` into a buffer that holds only the rows still in flight (one
tile height), so memory grows with the raster's width and the tile size, never with its height. Weights
taper towards tile edges (cosine or Gaussian) so seams vanish, and are zero in a `halo` band along edges
that lie inside the raster, where a convolutional model sees padding instead of context: a stitched map
then equals the whole-image map. With `wrap` (360° panoramas) the canvas is padded left and right and
the padding is folded back onto the opposite edge, so blending runs across the seam. A model with several
output channels (a flow's dx and dy) is stitched with the same weights for each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cdtool.windows import Tile

BLENDS = ("cosine", "gaussian")


def taper(n: int, kind: str, cut_start: int, cut_end: int) -> np.ndarray:
    """1-D weights over n pixels: zero for the first `cut_start` and last `cut_end`, tapered in between."""
    w = np.zeros(n, np.float64)
    m = n - cut_start - cut_end
    if m <= 0:
        raise ValueError(f"tile of {n} px leaves nothing after trimming {cut_start}+{cut_end} px of halo")
    x = (np.arange(m) + 0.5) / m  # (0, 1)
    if kind == "cosine":
        core = np.sin(np.pi * x) ** 2
    elif kind == "gaussian":
        core = np.exp(-0.5 * ((x - 0.5) / 0.125) ** 2)
    else:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {kind!r}")
    w[cut_start:cut_start + m] = np.maximum(core, 1e-6)
    return w


@dataclass
class Band:
    """A finished band of rows [row, row + height) of the output, full width."""

    row: int
    score: np.ndarray  # float32 (h, W), or (C, h, W) for several channels; undefined where ~valid
    valid: np.ndarray  # bool (h, W): both dates valid and covered by a tile


class Stitcher:
    def __init__(self, height: int, width: int, tile_height: int, halo: int = 0, blend: str = "cosine",
                 wrap_pad: int = 0, start_row: int = 0, band_rows: int = 256, channels: int = 1):
        if wrap_pad > width:
            raise ValueError("wrap padding cannot exceed the image width")
        self.height, self.width, self.halo, self.blend, self.pad = height, width, halo, blend, wrap_pad
        self.band_rows = band_rows  # finished rows leave in bands of at most this many: bounds what consumers copy
        self.top = start_row  # raster row of buffer row 0
        self.start = start_row  # rows above were finished by an earlier run (resume): tiles' parts there are dropped
        cw = width + 2 * wrap_pad
        # float32 halves the band buffer (its size is what bounds memory); sums of a few weights lose nothing.
        self.channels = channels
        self.acc = np.zeros((channels, tile_height, cw), np.float32)
        self.wsum = np.zeros((tile_height, cw), np.float32)
        self.valid = np.zeros((tile_height, cw), bool)

    def weights(self, tile: Tile) -> np.ndarray:
        h = self.halo
        top = h if tile.row > 0 else 0
        bottom = h if tile.row_stop < self.height else 0
        if self.pad:  # columns wrap: no edge is the image's edge
            left = right = h
        else:
            left = h if tile.col > 0 else 0
            right = h if tile.col_stop < self.width else 0
        return np.outer(taper(tile.height, self.blend, top, bottom),
                        taper(tile.width, self.blend, left, right)).astype(np.float32)

    def add(self, tile: Tile, score: np.ndarray, valid: np.ndarray) -> None:
        """Add a tile's (h, w) scores ((C, h, w) for several channels); rows above `tile.row` must not be added
        after they were flushed."""
        w = self.weights(tile)
        score = score.reshape(self.channels, tile.height, tile.width)
        if tile.row < self.start:  # a resumed run re-scores this tile only for its rows below `start`
            cut = min(self.start - tile.row, tile.height)
            score, valid, w = score[:, cut:], valid[cut:], w[cut:]
            tile = Tile(tile.row + cut, tile.col, tile.height - cut, tile.width)
        elif tile.row < self.top:
            raise ValueError(f"{tile} starts above rows already flushed ({self.top})")
        self._ensure_rows(tile.row_stop - self.top)
        r = slice(tile.row - self.top, tile.row_stop - self.top)
        c = slice(tile.col + self.pad, tile.col_stop + self.pad)
        self.acc[:, r, c] += score * w
        self.wsum[r, c] += w
        self.valid[r, c] |= valid

    def _ensure_rows(self, rows: int) -> None:
        if rows > self.wsum.shape[0]:
            extra = rows - self.wsum.shape[0]
            self.acc = np.pad(self.acc, ((0, 0), (0, extra), (0, 0)))
            self.wsum = np.pad(self.wsum, ((0, extra), (0, 0)))
            self.valid = np.pad(self.valid, ((0, extra), (0, 0)))

    def flush(self, until_row: int) -> Iterator[Band]:
        """Emit rows [top, until_row) as finished: no later tile may touch them."""
        n = min(until_row, self.height) - self.top
        if n <= 0:
            return
        acc, wsum, valid = self.acc[:, :n], self.wsum[:n], self.valid[:n]
        if self.pad:
            acc, wsum = acc.copy(), wsum.copy()
            p, w = self.pad, self.width
            acc[..., w:w + p] += acc[..., :p]
            wsum[:, w:w + p] += wsum[:, :p]
            acc[..., p:2 * p] += acc[..., w + p:]
            wsum[:, p:2 * p] += wsum[:, w + p:]
            acc, wsum, valid = acc[..., p:w + p], wsum[:, p:w + p], valid[:, p:w + p]
        for r0 in range(0, n, self.band_rows):
            rows = slice(r0, min(n, r0 + self.band_rows))
            covered = wsum[rows] > 0
            score = np.zeros(acc[:, rows].shape, np.float32)
            np.divide(acc[:, rows], wsum[rows], out=score, where=covered)
            yield Band(self.top + r0, score[0] if self.channels == 1 else score, valid[rows] & covered)
        for buf in (self.acc, self.wsum, self.valid):
            rows_axis = buf[None] if buf.ndim == 2 else buf  # one view shape for the channel-less buffers
            if n < rows_axis.shape[1]:
                rows_axis[:, :-n] = rows_axis[:, n:]  # overlapping copy: numpy handles the overlap
            rows_axis[:, -n:] = 0
        self.top += n

    def finish(self) -> Iterator[Band]:
        yield from self.flush(self.height)

"""Morphological clean-up of the change mask, streamed band by band: an opening (erosion then dilation with a
(2r+1)² square) removes specks and hairlines thinner than the square while keeping the shape of larger
changes. Each band is cleaned with 2r rows of context from its neighbours, so the result equals the opening
of the whole mask; the raster's own edges count as changed for the erosion, so changes touching them stay."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
from scipy import ndimage


def open_mask(hit: np.ndarray, radius: int) -> np.ndarray:
    s = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    eroded = ndimage.binary_erosion(hit, s, border_value=1)
    return ndimage.binary_dilation(eroded, s, border_value=0)


def opened_bands(bands: Iterable[tuple[int, np.ndarray, np.ndarray, np.ndarray]], radius: int
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(row, hit, valid, score) bands in raster order -> the same with `hit` opened; one band behind."""
    if radius <= 0:
        yield from bands
        return
    ctx = 2 * radius
    tail = np.zeros((0, 0), bool)  # the last rows of the band before the pending one
    pending = None
    for band in bands:
        if pending is not None:
            yield _clean(pending, tail, band[1][:ctx], radius)
            tail = pending[1][-ctx:]
        pending = band
    if pending is not None:
        yield _clean(pending, tail, None, radius)


def _clean(band, tail: np.ndarray, head: np.ndarray | None, radius: int):
    row, hit, valid, score = band
    parts = ([tail] if tail.size else []) + [hit] + ([head] if head is not None and head.size else [])
    buf = np.concatenate(parts) if len(parts) > 1 else hit
    # rows beyond the raster (above the first band, below the last) are edges: erosion keeps changes there
    opened = open_mask(buf, radius)
    start = tail.shape[0] if tail.size else 0
    return row, opened[start:start + hit.shape[0]] & valid, valid, score

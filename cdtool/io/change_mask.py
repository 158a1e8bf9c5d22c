"""One rule for reading a change mask, whatever wrote it: `cdtool tile`, `patches`, training on pair folders
and `cdtool evaluate` all read masks here, so one file means the same pixels everywhere.

Masks come coded several ways (LEVIR 0/255, plain 0/1, OSCD's 1 = unchanged / 2 = changed, cdtool's own
0/1 with 255 nodata, black-and-white PNGs). The coding is decided once per file from every value in it,
scanned in bounded windows, never per window: a window of an OSCD mask may hold only 1s, which alone reads
"all changed" under 0/1 and "no change" under OSCD's coding.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from cdtool.errors import InputError
from cdtool.windows import MAX_PIXELS

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # PNG masks have no georeference

SCAN_PIXELS = 1 << 20  # pixels per window of the scan: memory stays bounded whatever the mask's size
MAX_VALUES = 4  # a mask has at most 0/1/2/255: more distinct values mean scores or an image
# GDAL decodes whole blocks: a file stored in larger ones (a 300-byte TIFF may claim one tile of 10^6 x 10^6
# pixels) cannot be read in bounded memory, so it is refused before any pixel is read
MAX_BLOCK_BYTES = 1 << 28


class NotAMask(InputError):
    """The file's values fit no mask coding (fractions, negatives, many grey levels or colours); evaluate reads
    such a prediction file as scores instead."""


@dataclass(frozen=True)
class Encoding:
    """How a file codes change: `changed` and `nodata` band values (beside the file's own nodata and alpha),
    or, for colour images, any non-black colour as change."""

    name: str
    changed: tuple = ()
    nodata: tuple = ()
    colour: bool = False

    def classify(self, data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(changed, valid) of (bands, h, w) values read from the file; changed is False where not valid."""
        if self.colour:
            changed = (data != 0).any(axis=0)
        else:
            changed = np.isin(data[0], self.changed)
            valid = valid & ~np.isin(data[0], self.nodata)
        return changed & valid, valid


def decide(values: set, colour: bool, path) -> Encoding:
    """The coding of a mask from the set of its valid values (colours: tuples), by this table:

    ============================  =========  =========  ======
    values in the file            unchanged  changed    nodata
    ============================  =========  =========  ======
    0/v, one v > 0 (0/1, 0/255)   0          v          –
    0/1/2                         0          1, 2       –
    0/1/255, 0/2/255, 0/1/2/255   0          1, 2       255
    1/2 (OSCD), 1/2/255           1          2          255
    RGB(A), grey + alpha          black      one other  alpha 0
                                             colour
    the file's nodata value, NaN                        always
    only 1s (or 1/255)            refused: 0/1 reads all changed, OSCD no change
    anything else                 refused (NotAMask): fractions, negatives, more values or colours
    ============================  =========  =========  ======

    A file with a single value v ≠ 1 is all changed (0/v) or all unchanged (v = 0); 2 means change in both
    codings that hold it."""
    if colour:
        return _colour(values, path)
    if any(not float(v).is_integer() or v < 0 for v in values) or len(values) > MAX_VALUES:
        raise NotAMask(f"{path}: not a change mask: values {_show(values)} (expected 0/1, 0/255, 0/1/2[/255] or "
                       "OSCD 1/2)")
    core = values - {255} if values <= {0, 1, 2, 255} and (values - {255}) & {1, 2} else values
    nodata = tuple(values - core)
    if core == {1}:
        raise InputError(f"{path}: ambiguous change mask: every valid pixel is 1 (all changed as 0/1, no change as "
                         "OSCD 1/2); recode it as 0/1 or 1/2")
    if not core:
        return Encoding("all nodata")
    if core <= {1, 2}:
        return Encoding("1/2 (OSCD)" + "/255" * bool(nodata), (2,), nodata)
    if (0 in core and len(core) <= 2) or core == {0, 1, 2} or len(core) == 1:
        return Encoding("/".join(f"{v:g}" for v in sorted(values)), tuple(core - {0}), nodata)
    raise NotAMask(f"{path}: not a change mask: values {_show(values)} (expected 0/1, 0/255, 0/1/2[/255] or "
                   "OSCD 1/2)")


def _colour(colours: set, path) -> Encoding:
    others = {c for c in colours if any(c)}
    if len(others) > 1:
        raise NotAMask(f"{path}: not a change mask: a colour image with {len(colours)}"
                       f"{'+' if len(colours) > MAX_VALUES else ''} colours (expected black and one colour)")
    return Encoding("colour", colour=True)


def _show(values: set) -> str:
    shown = "/".join(f"{v:g}" for v in sorted(values)[:MAX_VALUES])
    return shown + ("/…" if len(values) > MAX_VALUES else "")


def open_raster(path):
    """The file opened with rasterio, or one line saying why it cannot be."""
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read as a mask ({str(exc).splitlines()[0]})") from None


def check_readable(ds, path, max_pixels: int | None = None) -> None:
    """Refuse, before any pixel is read, a raster that cannot be read in bounded memory (blocks over
    MAX_BLOCK_BYTES: no limit helps) or, where a limit is given (evaluate: MAX_PIXELS), in reasonable time."""
    bh, bw = ds.block_shapes[0]
    size = bh * bw * ds.count * np.dtype(ds.dtypes[0]).itemsize
    if size > MAX_BLOCK_BYTES:
        raise InputError(f"{path}: stored in blocks of {bw}x{bh} pixels ({size / 2**30:,.3g} GiB each), too large "
                         "to read in bounded memory; rewrite it tiled (gdal_translate -co TILED=YES)")
    n = ds.height * ds.width
    if max_pixels is not None and n > max_pixels:
        raise InputError(f"{path}: {ds.width}x{ds.height} pixels ({n:,}) is more than the limit of {max_pixels:,}; "
                         f"pass --max-pixels {n} to read it anyway")


def windows(ds, pixels: int = SCAN_PIXELS):
    """Windows covering a raster in reading order, each of whole blocks and at most `pixels` pixels (or one
    block, where a block is larger): full-width row bands, or runs of block columns where a band of one block
    row is wider than that."""
    height, width = ds.height, ds.width
    bh, bw = (min(b, n) for b, n in zip(ds.block_shapes[0], (height, width)))
    if bh * width <= pixels:
        rows, cols = max(bh, pixels // width // bh * bh), width
    else:
        rows, cols = bh, max(bw, pixels // bh // bw * bw)
    for r0 in range(0, height, rows):
        for c0 in range(0, width, cols):
            yield Window(c0, r0, min(cols, width - c0), min(rows, height - r0))


def mask_bands(ds) -> list[int]:
    """The bands that code change: the colour bands of an RGB(A) or grey + alpha image, else band 1."""
    interp = list(ds.colorinterp)
    colour = ds.count >= 2 and (ColorInterp.alpha in interp or
                                interp[:3] == [ColorInterp.red, ColorInterp.green, ColorInterp.blue])
    return [i for i, c in enumerate(interp, 1) if c != ColorInterp.alpha] if colour else [1]


class ChangeMask:
    """A change-mask file, opened once, its coding decided from all its values (`decide`); windows of it
    read as (changed, valid)."""

    def __init__(self, path, max_pixels: int | None = None, opener=None):
        self.path = path
        self.ds = self._file = open_raster(path)
        try:
            if opener is not None:  # a view of the file, e.g. warped onto another grid
                self.ds = opener(self._file)
            check_readable(self.ds, path, max_pixels)
            self.bands = mask_bands(self.ds)
            self.encoding = decide(self._scan(), len(self.bands) > 1, path)
        except BaseException:
            self.close()
            raise

    @property
    def shape(self) -> tuple[int, int]:
        return self.ds.height, self.ds.width

    @property
    def has_nodata(self) -> bool:
        """Whether any pixel may read as nodata: a coded nodata value, the file's nodata, alpha or mask band, NaN."""
        return bool(self.encoding.nodata) or self.ds.dtypes[0].startswith("float") or \
            any(MaskFlags.all_valid not in flags for flags in self.ds.mask_flag_enums)

    def _raw(self, window: Window | None) -> tuple[np.ndarray, np.ndarray]:
        data = self.ds.read(self.bands, window=window)
        valid = self.ds.read_masks(self.bands[0], window=window) > 0
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        return data, valid

    def _scan(self) -> set:
        """Every distinct valid value (colours: tuples), window by window; stops once there are too many."""
        found: set = set()
        for window in windows(self.ds):
            data, valid = self._raw(window)
            px = data[:, valid]
            if len(self.bands) == 1:
                found |= set(np.unique(px[0]).tolist())
            else:
                found |= set(map(tuple, np.unique(px.T, axis=0).tolist()))
            if len(found) > MAX_VALUES:
                break
        return found

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(changed, valid) bool arrays of a window (None: the whole file)."""
        return self.encoding.classify(*self._raw(window))

    def close(self) -> None:
        self.ds.close()
        self._file.close()

    def __enter__(self) -> "ChangeMask":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_change_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(changed, valid) of a whole mask file, by the one rule (`decide`)."""
    with ChangeMask(path) as cm:
        return cm.read()

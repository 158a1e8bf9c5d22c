"""Open two images of the same place as one pair on one pixel grid, and read windows of both.

GeoTIFFs (any band count and dtype), folders of single-band files (stacked on the fly) and plain
PNG/JPG panoramas all come through here. The pair owns the checks that make a comparison meaningful
(CRS, grid, size, bands) and, when asked, warps AFTER onto BEFORE's grid with a WarpedVRT so no
full-size copy is ever made.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from cdtool.errors import InputError
from cdtool.io.image_align import align_images
from cdtool.io.stack import band_files, stack_vrt
from cdtool.windows import Tile, wrapped_runs

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


# GDAL dataset names that are not plain paths: virtual file systems and driver-prefixed subdatasets
# what a single-file raster (an image, not a band folder or a layer) is named, for telling inputs apart
IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt", ".img", ".bmp"}
# A date is grey when its bands differ by under 0.5 % of its value range on average (a grey image stored as RGB,
# JPEG noise included), in colour above 2 %: one of each looks like two sensors (sensor_difference).
GREY_BAND_SPREAD, COLOUR_BAND_SPREAD = 0.005, 0.02
_GDAL_NAME = re.compile(r"^(/vsi[a-z0-9_]+/|[A-Za-z0-9_]{2,}:)")


def open_raster(source: str | Path):
    """Open a raster file, a GDAL dataset name (`/vsizip/...`, `NETCDF:"f.nc":var`), or a folder of
    single-band files as one stacked raster."""
    text = str(source)
    gdal_name = bool(_GDAL_NAME.match(text)) and not Path(text).exists()
    path = Path(source)
    if not gdal_name and not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not gdal_name and not (path.is_dir() or path.is_file()):
        raise InputError(f"{path}: not a regular file (a pipe or device cannot be read as a raster)")
    try:
        if path.is_dir():
            return rasterio.open(stack_vrt(band_files(path)))
        ds = rasterio.open(text if gdal_name else path)
    except RasterioIOError as exc:
        raise InputError(f"{text}: cannot read as a raster ({str(exc).splitlines()[0]})") from None
    if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
        return expand_palette(ds, text if gdal_name else str(path))
    if ds.count == 0:
        subs = ds.subdatasets
        ds.close()
        if subs:
            raise InputError(f"{text}: holds {len(subs)} subdatasets and no bands of its own; pass one, e.g. "
                             f"{subs[0]} ({', '.join(s.rsplit(':', 1)[-1] for s in subs[:8])})")
        raise InputError(f"{text}: has no raster bands")
    return ds


def expand_palette(ds, name: str):
    """A paletted raster opened as the colours it shows, RGB plus alpha where the palette is transparent or a
    nodata index is set, through a VRT whose lookup tables map each index to its colour. Indexes mean nothing
    across files: two PNGs of identical colours whose palettes list them in another order were compared index
    by index and flagged 10 % of their pixels."""
    from xml.sax.saxutils import escape

    colours = ds.colormap(1)
    transparent = ds.nodata is not None and float(ds.nodata).is_integer()
    if transparent:
        colours[int(ds.nodata)] = (*colours.get(int(ds.nodata), (0, 0, 0))[:3], 0)
    alpha = transparent or any(c[3] < 255 for c in colours.values() if len(c) > 3)
    width, height, t = ds.width, ds.height, ds.transform
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if ds.crs is not None:
        parts.append(f"  <SRS>{escape(ds.crs.to_wkt())}</SRS>")
    if not t.is_identity:
        parts.append(f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>")
    for k, interp in enumerate(("Red", "Green", "Blue", "Alpha")[: 4 if alpha else 3]):
        lut = ",".join(f"{i}:{(tuple(c) + (255,))[k]}" for i, c in sorted(colours.items()))
        parts += [f'  <VRTRasterBand dataType="Byte" band="{k + 1}">', f"    <ColorInterp>{interp}</ColorInterp>",
                  "    <ComplexSource>", f'      <SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>',
                  "      <SourceBand>1</SourceBand>", f"      <LUT>{lut}</LUT>", "    </ComplexSource>",
                  "  </VRTRasterBand>"]
    ds.close()
    try:
        return rasterio.open("\n".join(parts + ["</VRTDataset>"]))
    except RasterioIOError as exc:
        raise InputError(f"{name}: cannot expand its palette ({str(exc).splitlines()[0]})") from None


_VSI_PREFIX = re.compile(r"^/vsi[a-z0-9_]+/")


def _on_disk(name: str) -> Path | None:
    """The local file behind a GDAL file name: the path itself, or the archive or compressed file a /vsizip/,
    /vsitar/, /vsigzip/... name reads from (its longest prefix that is a file); None for remote names."""
    rest = name
    while _VSI_PREFIX.match(rest):
        rest = _VSI_PREFIX.sub("", rest, count=1).replace("{", "").replace("}", "")
    path = Path(rest)
    try:
        return next((c.resolve() for c in (path, *path.parents) if c.is_file()), None)
    except (OSError, ValueError):  # a name no file system holds (too long, NUL)
        return None


def dataset_files(ds, seen: set[Path] | None = None) -> list[Path]:
    """Every local file a dataset reads (resolved): the raster, its sidecars, the members of a stacked band
    folder and a VRT's sources (nested VRTs followed), an archive for a /vsizip/ name. A resumed run and the
    outputs' overlap check need them all: a changed band or an output written over a source is as bad as
    a change to the file named."""
    seen = set() if seen is None else seen
    for name in ds.files:
        path = _on_disk(str(name))
        if path is None or path in seen:
            continue
        seen.add(path)
        if path.suffix.lower() == ".vrt" and str(name) != str(ds.name):
            try:
                with rasterio.open(path) as nested:
                    dataset_files(nested, seen)
            except RasterioIOError:
                pass  # GDAL reported it among the files; what it reads is not ours to judge here
    return sorted(seen)


def data_bands(ds, bands: list[int] | None, name: str) -> list[int]:
    """1-based band indexes to compare: the ones asked for, else every band but alpha."""
    if bands:
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise InputError(f"{name}: has {ds.count} bands, so band(s) {bad} do not exist")
        return list(bands)
    picked = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci != ColorInterp.alpha]
    return picked or list(range(1, ds.count + 1))


def _grid_differences(a, b) -> list[str]:
    diffs = []
    if a.crs != b.crs:
        diffs.append(f"CRS {_crs_name(a.crs)} vs {_crs_name(b.crs)}")
    if (a.width, a.height) != (b.width, b.height):
        diffs.append(f"size {a.width}x{a.height} vs {b.width}x{b.height}")
    if not a.transform.almost_equals(b.transform, precision=1e-9 * max(1.0, abs(a.transform.a))):
        diffs.append(f"origin/pixel size ({a.transform.c:g}, {a.transform.f:g}, {a.transform.a:g}) vs "
                     f"({b.transform.c:g}, {b.transform.f:g}, {b.transform.a:g})")
    return diffs


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:40]


def ground_sampling_distance(crs: CRS | None, transform: Affine, height: int, width: int) -> float | None:
    """Metres on the ground per pixel at the raster's centre: the geometric mean of a pixel's width and
    height measured on the WGS84 ellipsoid, so geographic CRSs and Web Mercator (whose "metres" stretch with
    latitude) give true distances; the CRS's linear unit when the centre cannot be put on the ellipsoid."""
    if crs is None:
        return None
    x, y = transform * (width / 2, height / 2)
    x1, y1 = transform * (width / 2 + 1, height / 2)
    x2, y2 = transform * (width / 2, height / 2 + 1)
    try:
        from pyproj import Geod, Transformer

        to_lonlat = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
        (lon, lon1, lon2), (lat, lat1, lat2) = to_lonlat.transform([x, x1, x2], [y, y1, y2])
        geod = Geod(ellps="WGS84")
        dx, dy = geod.inv(lon, lat, lon1, lat1)[2], geod.inv(lon, lat, lon2, lat2)[2]
    except Exception:  # a CRS pyproj cannot place on the ellipsoid (local engineering CRSs)
        if crs.is_geographic:
            return None
        try:
            unit = float(crs.linear_units_factor[1])
        except Exception:
            return None
        dx, dy = math.hypot(transform.a, transform.d) * unit, math.hypot(transform.b, transform.e) * unit
    gsd = math.sqrt(abs(dx * dy))
    return gsd if math.isfinite(gsd) and gsd > 0 else None


@dataclass
class PairInfo:
    """What the writers need to know of the processing grid."""

    height: int
    width: int
    count: int
    crs: CRS | None
    transform: Affine
    georeferenced: bool
    band_names: list[str]
    colors: list[str] = field(default_factory=list)  # colour interpretation per band: red, green, gray, ...
    dtype: str = "float32"
    gsd: float | None = None  # metres per pixel (geodesic for geographic CRSs); None when not georeferenced


class RasterPair:
    """Two co-registered rasters read window by window. Use `open_pair` to build one."""

    def __init__(self, before: str | Path, after: str | Path, bands: list[int] | None = None,
                 align: bool = False, wrap: bool = False, skip_bad_windows: bool = False,
                 offset: list[float] | str | None = None, aoi: str | None = None, exclude: str | None = None,
                 repeat_single_band: bool = False):
        self.before_path, self.after_path = Path(before), Path(after)
        self.repeat_single_band = repeat_single_band
        # (the single-band date, the other date) when the first is read once per band of the other; else None
        self.single_band_date: tuple[Path, Path] | None = None
        self.skip_bad_windows = skip_bad_windows
        self.requested_bands, self.align = bands, align  # as asked, so a worker process can open the same pair
        self.bad_blocks: set[tuple[str, int, int]] = set()  # (file, row, col) of blocks read as nodata
        self.sources = (str(before), str(after))  # as given: GDAL names such as /vsizip//abs/path keep their //
        self.wrap = wrap
        self._open = []
        self.offset: np.ndarray | None = None  # per band, subtracted on reading (see `_choose_offset`)
        self.notes: list[str] = []  # what the reader changed, for the user to know
        self.before_smoothing: tuple[float, float] | None = None  # (rows, cols) taps: see `resampling_match`
        self.aoi, self.exclude = aoi, exclude
        self.area = None  # an AreaMask: the pixels --aoi and --exclude leave to count
        try:
            self._setup(bands, align)
            self._set_offset(offset)
        except BaseException:
            self.close()
            raise

    def _setup(self, bands, align):
        b = open_raster(self.sources[0])
        self._open.append(b)
        a = open_raster(self.sources[1])
        self._open.append(a)
        self.bands_before = data_bands(b, bands, str(self.before_path))
        self.bands_after = data_bands(a, bands, str(self.after_path))
        if len(self.bands_before) != len(self.bands_after) and self.repeat_single_band:
            self._repeat_single_band()
        if len(self.bands_before) != len(self.bands_after):
            raise InputError(f"{self.after_path}: has {len(self.bands_after)} bands but {self.before_path} has "
                             f"{len(self.bands_before)}; pick common bands with --bands")
        georef = b.crs is not None and not b.transform.is_identity
        self.origin = (0, 0)
        height, width = b.height, b.width
        if align and not (georef and a.crs is not None):  # photos, panoramas: aligned by their content
            a = align_images(b, a, self.bands_before, self.bands_after, self.wrap)
            self._open.append(a)
        diffs = _grid_differences(b, a)
        if diffs and not align:
            raise InputError(f"{self.after_path}: not on the grid of {self.before_path}: " + "; ".join(diffs)
                             + (" (use --align to warp it onto BEFORE's grid)" if georef else ""))
        if diffs:
            window = self._common_window(b, a)
            self.origin = (int(window.row_off), int(window.col_off))
            height, width = int(window.height), int(window.width)
            self.before_smoothing = resampling_match(b, a)
            a = WarpedVRT(a, crs=b.crs, transform=b.transform, width=b.width, height=b.height,
                          resampling=Resampling.bilinear)
            self._open.append(a)
        self.before, self.after = b, a
        if self.aoi is not None or self.exclude is not None:
            height, width = self._set_area(b, georef, height, width)
        transform = b.window_transform(Window(self.origin[1], self.origin[0], width, height))
        names = [b.descriptions[i - 1] or f"band {i}" for i in self.bands_before]
        colors = [b.colorinterp[i - 1].name for i in self.bands_before]
        gsd = ground_sampling_distance(b.crs, transform, height, width) if georef else None
        self.info = PairInfo(height, width, len(self.bands_before), b.crs if georef else None, transform,
                             georef, names, colors, b.dtypes[self.bands_before[0] - 1], gsd)
        self.profile = b.profile
        self.native_dtype = compact_dtype([b.dtypes[i - 1] for i in self.bands_before]
                                          + [a.dtypes[i - 1] for i in self.bands_after])

    def _set_area(self, b, georef: bool, height: int, width: int) -> tuple[int, int]:
        """Read --aoi / --exclude and crop the extent to the AOI's bounds; returns the new (height, width)."""
        from cdtool.io.area import area_mask

        names = [b.descriptions[i - 1] or f"band {i}" for i in self.bands_before]
        self.area = area_mask(self.aoi, self.exclude, b.crs if georef else None, names)
        self.area.bind(b)
        bounds = self.area.bounds()
        if bounds is None:
            return height, width
        left, bottom, right, top = bounds
        if georef:
            w = from_bounds(left, bottom, right, top, b.transform)
            r0, c0, r1, c1 = w.row_off, w.col_off, w.row_off + w.height, w.col_off + w.width
        else:  # the pixel grid: x = column, y = -row
            r0, c0, r1, c1 = -top, left, -bottom, right
        r0, c0 = max(self.origin[0], math.floor(r0)), max(self.origin[1], math.floor(c0))
        r1 = min(self.origin[0] + height, math.ceil(r1))
        c1 = min(self.origin[1] + width, math.ceil(c1))
        if r1 <= r0 or c1 <= c0:
            raise InputError(f"{self.aoi}: the --aoi polygons do not overlap {self.before_path}")
        self.origin = (r0, c0)
        return r1 - r0, c1 - c0

    def _window_transform(self, win: Window) -> Affine:
        """Where a window of BEFORE's grid lies: map coordinates, or the pixel grid (x = column, y = -row)."""
        if self.info.georeferenced:
            return self.before.window_transform(win)
        return Affine(1.0, 0.0, float(win.col_off), 0.0, -1.0, -float(win.row_off))

    def _set_offset(self, offset: list[float] | str | None) -> None:
        """Use `offset` (one value per band; zeros or None: none), or with "auto", choose one for bands of a type
        float32 cannot hold exactly (see `_choose_offset`) and say so in `notes`. Only `detect` asks for "auto":
        its normaliser takes the offset back out where a model wants raw units, while chips and training batches
        keep the files' own values."""
        types = [self.before.dtypes[i - 1] for i in self.bands_before] + \
            [self.after.dtypes[i - 1] for i in self.bands_after]
        if offset is None or (offset == "auto" and not any(lossy_in_float32(t) for t in types)):
            return
        chosen = self._choose_offset() if offset == "auto" else np.asarray(offset, np.float64)
        if not chosen.any():
            return
        self.offset = chosen
        self.native_dtype = np.dtype(np.float32)
        if offset == "auto":
            self.notes.append(f"{self.sources[0]}: {', '.join(sorted(set(types)))} values are read less a per-band "
                              f"offset ({', '.join(f'{v:.10g}' for v in chosen)}), so float32 keeps them exact; the "
                              "normalisation accounts for it")

    def _choose_offset(self) -> np.ndarray:
        """Per band, the rounded mean of the valid pixels of both dates over a spread sample of windows (0 where
        none is valid), read in float64. Values near 2^31 differ by 256 between neighbouring float32 numbers: a
        uint32 pair was scored on values rounded that coarsely and flagged 41 % of its pixels where the same data
        as uint8 flags 3-4 %. Less the offset, such values are small and float32 holds them exactly."""
        from cdtool.normalization import sample_tiles

        total, n = np.zeros(self.info.count), 0
        for tile in sample_tiles(*self.shape):
            data, valid = self._read_inside(tile.row, tile.col, tile.height, tile.width, np.dtype(np.float64))
            total += data[:, :, valid].sum(axis=(0, 2))
            n += 2 * int(valid.sum())
        return np.round(total / n) if n else np.zeros(self.info.count)

    def _common_window(self, b, a) -> Window:
        left, bottom, right, top = transform_bounds(a.crs, b.crs, *a.bounds)
        bl, bb, br, bt = b.bounds
        il, ib, ir, it = max(left, bl), max(bottom, bb), min(right, br), min(top, bt)
        if ir <= il or it <= ib:
            raise InputError(f"{self.after_path}: does not overlap {self.before_path}")
        w = from_bounds(il, ib, ir, it, b.transform)
        r0, c0 = max(0, math.floor(w.row_off + 1e-6)), max(0, math.floor(w.col_off + 1e-6))
        r1 = min(b.height, math.ceil(w.row_off + w.height - 1e-6))
        c1 = min(b.width, math.ceil(w.col_off + w.width - 1e-6))
        if r1 <= r0 or c1 <= c0:
            raise InputError(f"{self.after_path}: overlaps {self.before_path} by less than one pixel")
        return Window(c0, r0, c1 - c0, r1 - r0)

    def _repeat_single_band(self) -> None:
        """A single-band date beside an N-band one (SAR or panchromatic beside optical) is read as N copies of
        its band, so both dates are (C, h, w) arrays; only a cross-sensor model may then compare them."""
        for mine, other, paths in ((self.bands_before, self.bands_after, (self.before_path, self.after_path)),
                                   (self.bands_after, self.bands_before, (self.after_path, self.before_path))):
            if len(mine) == 1 and len(other) > 1:
                mine[:] = mine * len(other)
                self.single_band_date = paths
                return

    def sensor_difference(self) -> str | None:
        """Why the two dates look like images from two sensors, or None: a single-band date beside a multi-band
        one, or one date grey in every band (a SAR or panchromatic image stored as RGB) beside one in colour.
        Judged from a few small windows spread over the pair."""
        if self.single_band_date is not None:
            single, other = self.single_band_date
            return f"{single.name} has 1 band, {other.name} has {len(self.bands_before)}"
        if len(self.bands_before) < 2:
            return None
        from cdtool.normalization import sample_tiles

        grey = [[], []]
        for tile in sample_tiles(*self.shape, size=64, per_side=3):
            data, valid = self.read(tile)
            for k in (0, 1):
                bands = data[k][:, valid]
                if bands.shape[1]:
                    spread = np.percentile(bands, 99) - np.percentile(bands, 1)
                    grey[k].append(np.abs(bands - bands[:1]).mean() / max(float(spread), 1e-12))
        if not grey[0] or not grey[1]:
            return None
        apart = [float(np.mean(g)) for g in grey]
        for k, path, other in ((0, self.before_path, self.after_path), (1, self.after_path, self.before_path)):
            if apart[k] < GREY_BAND_SPREAD and apart[1 - k] > COLOUR_BAND_SPREAD:
                return f"{path.name} is grey in all {len(self.bands_before)} bands, {other.name} is in colour"
        return None

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.info.height, self.info.width

    def read(self, tile: Tile, native: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of both dates in `tile` as float32 (2, C, h, w), and where both are valid (h, w); 0 where
        invalid. `native` keeps the files' own integer type where it is compact (`native_dtype`): a uint8
        tile is a quarter of the bytes to read, queue and send to a GPU, converted once where it is scored.

        With `wrap`, columns outside [0, width) wrap around (360° panoramas); rows must lie inside."""
        if tile.row < 0 or tile.row_stop > self.info.height:
            raise ValueError(f"{tile} reaches outside rows 0..{self.info.height}")
        if not self.wrap and (tile.col < 0 or tile.col_stop > self.info.width):
            raise ValueError(f"{tile} reaches outside columns 0..{self.info.width}")
        dtype = self.native_dtype if native else np.dtype(np.float32)
        pieces = [self._read_inside(tile.row, c0, tile.height, c1 - c0, dtype)
                  for c0, c1 in wrapped_runs(tile.col, tile.col_stop, self.info.width)]
        if len(pieces) == 1:
            return pieces[0]
        return (np.concatenate([p[0] for p in pieces], axis=-1), np.concatenate([p[1] for p in pieces], axis=-1))

    def _read_inside(self, row: int, col: int, height: int, width: int,
                     dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        win = Window(col + self.origin[1], row + self.origin[0], width, height)
        stack, valid = [], np.ones((height, width), bool)
        final, dtype = dtype, np.dtype(np.float64) if self.offset is not None else dtype
        for ds, bands, name in ((self.before, self.bands_before, self.sources[0]),
                                (self.after, self.bands_after, self.sources[1])):
            if ds is self.before and self.before_smoothing is not None:
                data, masks = self._read_smoothed(ds, bands, win, name)
                data = data.astype(dtype) if dtype.kind == "f" else np.rint(data).astype(dtype)
            else:
                data, masks = self._read_window(ds, bands, win, dtype, name)
            valid &= (masks > 0).all(axis=0)
            if dtype.kind == "f":
                valid &= np.isfinite(data).all(axis=0)
            stack.append(data)
        pair = np.stack(stack)
        if self.area is not None:
            valid &= self.area.counts(win, self._window_transform(win), pair)
        if self.offset is not None:
            pair = (pair - self.offset[:, None, None]).astype(final)
        pair[:, :, ~valid] = 0
        return pair, valid

    def _read_window(self, ds, bands: list[int], win: Window, dtype: np.dtype,
                     name: str) -> tuple[np.ndarray, np.ndarray]:
        """(data, masks) of `win`; a window GDAL cannot read is refused, or salvaged with --skip-bad-windows."""
        try:
            return ds.read(bands, window=win, out_dtype=dtype), ds.read_masks(bands, window=win)
        except RasterioIOError as exc:
            if not self.skip_bad_windows:
                cause = exc.__cause__ or exc  # rasterio's own text only points at GDAL's, its cause
                raise InputError(f"{name}: cannot read rows {win.row_off}-{win.row_off + win.height - 1}, columns "
                                 f"{win.col_off}-{win.col_off + win.width - 1} ({str(cause).splitlines()[0]}); "
                                 "--skip-bad-windows writes nodata there instead") from None
            return self._salvage(ds, bands, win, dtype)

    def _read_smoothed(self, ds, bands: list[int], win: Window, name: str) -> tuple[np.ndarray, np.ndarray]:
        """BEFORE's `win` filtered by the symmetric taps of `before_smoothing`, over its valid pixels only
        (normalised convolution), read with a one-pixel border so windows join without seams."""
        r0, c0 = int(win.row_off), int(win.col_off)
        h, w = int(win.height), int(win.width)
        top, left = max(0, r0 - 1), max(0, c0 - 1)
        bottom, right = min(ds.height, r0 + h + 1), min(ds.width, c0 + w + 1)
        data, masks = self._read_window(ds, bands, Window(left, top, right - left, bottom - top),
                                        np.dtype(np.float64), name)
        weight = (masks > 0).all(axis=0).astype(np.float64)
        data = np.where(np.isfinite(data), data, 0.0) * weight
        for axis, tap in ((0, self.before_smoothing[0]), (1, self.before_smoothing[1])):
            data, weight = _taps(data, tap, axis + 1), _taps(weight, tap, axis)
        inner = (slice(r0 - top, r0 - top + h), slice(c0 - left, c0 - left + w))
        data, weight = data[(slice(None),) + inner], weight[inner]
        masks = masks[(slice(None),) + inner]
        return data / np.maximum(weight, 1e-12), masks

    def _salvage(self, ds, bands: list[int], win: Window, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Read a window that failed block by block of the file's own block grid; blocks that still fail become
        nodata and are recorded by their place in that grid, so a block met by several windows counts once."""
        bh, bw = ds.block_shapes[0]
        r0, c0, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
        data = np.zeros((len(bands), h, w), dtype)
        masks = np.zeros((len(bands), h, w), np.uint8)
        for br in range(r0 // bh, (r0 + h - 1) // bh + 1):
            for bc in range(c0 // bw, (c0 + w - 1) // bw + 1):
                top, left = max(r0, br * bh), max(c0, bc * bw)
                bottom, right = min(r0 + h, (br + 1) * bh), min(c0 + w, (bc + 1) * bw)
                sub = Window(left, top, right - left, bottom - top)
                sl = (slice(None), slice(top - r0, bottom - r0), slice(left - c0, right - c0))
                try:
                    data[sl] = ds.read(bands, window=sub, out_dtype=dtype)
                    masks[sl] = ds.read_masks(bands, window=sub)
                except RasterioIOError:
                    self.bad_blocks.add((ds.name, br, bc))
        return data, masks

    def files(self) -> list[Path]:
        """Every local file the pair reads (see `dataset_files`), both dates, resolved."""
        seen: set[Path] = set()
        for ds in self._open[:2]:  # the datasets as opened; a WarpedVRT on top reads the same files
            dataset_files(ds, seen)
        for area_file in (self.aoi, self.exclude):
            if area_file is not None and Path(area_file).is_file():
                seen.add(Path(area_file).resolve())
        return sorted(seen)

    def folders(self) -> list[Path]:
        """The band folders given as inputs, resolved: nothing may be written into them."""
        return [Path(s).resolve() for s in self.sources if Path(s).is_dir()]

    def open_args(self) -> dict:
        """The arguments of `open_pair` that open this pair again, picklable for a Dask worker."""
        return dict(before=self.sources[0], after=self.sources[1], bands=self.requested_bands, align=self.align,
                    wrap=self.wrap, skip_bad_windows=self.skip_bad_windows,
                    offset=self.offset.tolist() if self.offset is not None else None, aoi=self.aoi,
                    exclude=self.exclude, repeat_single_band=self.repeat_single_band)

    def reopen(self) -> "RasterPair":
        """The same pair opened again: another reader thread needs its own GDAL handles."""
        return open_pair(**self.open_args())

    def close(self) -> None:
        if self.area is not None:
            self.area.close()
        for ds in reversed(self._open):
            ds.close()
        self._open.clear()

    def __enter__(self) -> "RasterPair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# integer types that hold every value of the files' bands in at most 4 bytes and that torch casts everywhere
# (uint16 travels as its int16 bit pattern: see `as_float_tensor`)
COMPACT_TYPES = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32"))


def resampling_match(before, after) -> tuple[float, float]:
    """Per axis (rows, columns), the outer tap `t` of a [t, 1 - 2t, t] filter that removes as much noise from
    BEFORE as bilinear resampling removes from AFTER when AFTER is warped onto BEFORE's grid, so the order of
    the dates does not decide how smooth each one is (and with it where an automatic threshold lands).

    Bilinear at a sub-pixel offset d keeps (1 - d)² + d² of white noise's variance; the filter keeps
    2t² + (1 - 2t)². Same CRS and pixel size: d is the grids' constant offset; otherwise d varies over the
    scene and its mean, 2/3, is matched."""
    def tap(kept: float) -> float:
        return (2 - math.sqrt(max(0.0, 6 * kept - 2))) / 6

    b, a = before.transform, after.transform
    same = (before.crs == after.crs and b.b == b.d == a.b == a.d == 0
            and math.isclose(a.a, b.a, rel_tol=1e-9) and math.isclose(a.e, b.e, rel_tol=1e-9))
    if not same:
        return tap(2 / 3), tap(2 / 3)
    kept = []
    for shift in ((b.f - a.f) / a.e, (b.c - a.c) / a.a):  # BEFORE's pixel edges in AFTER's pixels
        d = shift - math.floor(shift)
        kept.append((1 - d) ** 2 + d ** 2)
    return tap(kept[0]), tap(kept[1])


def _taps(x: np.ndarray, t: float, axis: int) -> np.ndarray:
    """x filtered along `axis` by [t, 1 - 2t, t], edges repeated."""
    if t <= 0:
        return x
    x = np.moveaxis(x, axis, -1)
    p = np.concatenate([x[..., :1], x, x[..., -1:]], axis=-1)
    return np.moveaxis(t * (p[..., :-2] + p[..., 2:]) + (1 - 2 * t) * x, -1, axis)


def lossy_in_float32(dtype: str) -> bool:
    """Whether float32 (24-bit significand) may round values of this type: 32- and 64-bit integers, float64."""
    kind = np.dtype(dtype)
    return (kind.kind in "iu" and kind.itemsize >= 4) or (kind.kind == "f" and kind.itemsize > 4)


def compact_dtype(dtypes: list[str]) -> np.dtype:
    """The type a tile of these bands is read in natively: their common type where it is a compact integer,
    float32 otherwise (floats, and integers such as uint32 that float32 would round anyway)."""
    common = np.result_type(*dtypes)
    return common if common in COMPACT_TYPES else np.dtype(np.float32)


def open_pair(before: str | Path, after: str | Path, *, bands: list[int] | None = None, align: bool = False,
              wrap: bool = False, skip_bad_windows: bool = False,
              offset: list[float] | str | None = None, aoi: str | None = None,
              exclude: str | None = None, repeat_single_band: bool = False) -> RasterPair:
    """Open BEFORE and AFTER as one pair, checking they can be compared (see RasterPair); `offset`, one value per
    band subtracted on reading, or "auto": chosen for types float32 cannot hold exactly; `aoi` and `exclude`
    (see cdtool.io.area) leave pixels out as nodata; `repeat_single_band`: a single-band date beside a
    multi-band one is read as that many copies of its band (for models that compare each date only with itself,
    `ChangeModel.cross_sensor`), where otherwise the pair is refused."""
    return RasterPair(before, after, bands=bands, align=align, wrap=wrap, skip_bad_windows=skip_bad_windows,
                      offset=offset, aoi=aoi, exclude=exclude, repeat_single_band=repeat_single_band)

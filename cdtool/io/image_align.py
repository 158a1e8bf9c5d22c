"""Align two photos or panoramas of the same street by their content, for pairs no CRS can put on one grid.

Street-level images taken months apart are never shot from the same spot: compared pixel by pixel, every
edge is "change". `--align` on a pair without a CRS therefore estimates a geometric transform from the
images themselves (SIFT features, Lowe's ratio test, a RANSAC homography refined on its inliers, or a
similarity where the agreeing matches cover too little of the image to pin a homography down) and warps AFTER
onto BEFORE's grid window by window as it is read, so `detect` keeps its bounded windowed reads; what falls
outside AFTER becomes nodata. For 360° panoramas (`--wrap`) a horizontal circular shift (the change of
heading) is found first from the matches, the transform is fitted to the matches unwrapped around it in a
frame that starts in the widest arc without matches, and its drift over one turn is taken out in that arc, so
the warped panorama still closes at its seam.

The transform is estimated on a copy read about ESTIMATE_PX pixels large (a 24 Mpx photo is read
decimated, never whole), then scaled to full resolution. A pair whose matches do not agree on one plausible
transform (two unrelated images, a blank one) is refused in one line rather than warped into nonsense.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from cdtool.errors import InputError
from cdtool.windows import wrapped_runs

ESTIMATE_PX = 1_000_000  # pixels of the copy each image is read at for the estimate (a 24 Mpx photo: 1/24)
MAX_UPSAMPLING = 2.0  # ... but a small image is enlarged at most this much: SIFT then finds about 4x the
# matches on a 1024 x 224 panorama (195 against 47), of which 48 agree against 8 at its own size
MAX_FEATURES = 8000  # SIFT keypoints kept per image: more only slows the matching
RATIO = 0.8  # Lowe's ratio test: a match must be clearly better than the second best
RANSAC_PX = 3.0  # inlier distance in the estimate copy's pixels
MIN_INLIERS = 15  # fewer matches agreeing on one transform is chance: unrelated pairs got at most 6, the real
# TSUNAMI pair 27-29 (its dates are years and a tsunami apart), synthetic street pairs 500-1100
MIN_INLIER_SHARE = 0.15  # ... or a small minority of the matches, which a wrong model can also gather
COVERAGE_GRID = (4, 8)  # rows, columns of cells over the image for judging where the inliers lie
MIN_COVERAGE = 0.3  # a homography needs inliers in this share of the cells; else a similarity is fitted
MAX_AREA_CHANGE = 4.0  # a plausible viewpoint change scales no part of the image by more than this (area)


@dataclass(frozen=True)
class Alignment:
    """BEFORE pixel -> AFTER pixel (pixel centres at integer coordinates, full resolution), how well it fits,
    and for panoramas the period over which it wraps."""

    matrix: np.ndarray  # 3x3 homography, BEFORE -> AFTER
    matches: int
    inliers: int
    residual_px: float  # RMS distance of the inlier matches from the homography, in AFTER's pixels
    before_size: tuple[int, int]  # (width, height)
    after_size: tuple[int, int]
    wrap: bool = False
    shift_px: float | None = None  # panoramas: the circular shift found first (AFTER columns)
    estimate_scale: float = 1.0  # the estimate copy's pixels per full-resolution pixel
    origin_px: float = 0.0  # panoramas: BEFORE column where the homography's frame of one turn starts
    ramp_px: float = 0.0  # panoramas: the columns before `origin_px` where its drift over a turn is taken out
    model: str = "homography"  # or "similarity" where the inliers cover too little of the image (fit_homography)

    def map(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AFTER coordinates (x, y) of BEFORE pixels at (cols, rows), broadcast.

        Panoramas: the homography holds in a frame of one turn starting at `origin_px`, set in the widest arc
        without matches; over that frame's last `ramp_px` columns (inside the arc) its drift over one turn is
        taken out linearly, so G(x + W) = G(x) + (W_after, 0): the warped panorama closes at every column, and
        where the matches lie the homography stays as fitted. x is not reduced modulo AFTER's width."""
        if not self.wrap:
            return _apply(self.matrix, cols, rows)
        wb, wa, o = self.before_size[0], self.after_size[0], self.origin_px
        cols, rows = np.broadcast_arrays(np.asarray(cols, float), np.asarray(rows, float))
        u = o + np.mod(cols - o, wb)
        x, y = _apply(self.matrix, u, rows)
        x0, y0 = _apply(self.matrix, o, rows)
        x1, y1 = _apply(self.matrix, o + wb, rows)
        ramp = np.clip((u - (o + wb - self.ramp_px)) / self.ramp_px, 0.0, 1.0)
        return x - ramp * (x1 - x0 - wa), y - ramp * (y1 - y0)

    def record(self) -> dict:
        """What detect.json keeps of it."""
        return {"method": f"circular shift + {self.model}" if self.wrap else self.model,
                "matrix": np.round(self.matrix, 9).tolist(), "matches": self.matches, "inliers": self.inliers,
                "residual_px": round(self.residual_px, 3),
                "shift_px": None if self.shift_px is None else round(float(self.shift_px), 2),
                "estimated_at_scale": round(self.estimate_scale, 4),
                **({"frame_origin_px": round(self.origin_px, 2), "ramp_px": round(self.ramp_px, 2)}
                   if self.wrap else {})}

    def line(self) -> str:
        """The one line `detect` prints."""
        shift = "" if self.shift_px is None else \
            f"circular shift {self.shift_px:+.1f} px ({360 * self.shift_px / self.after_size[0]:+.1f}°) then "
        return (f"aligned AFTER onto BEFORE: {shift}{self.model} from {self.inliers} of {self.matches} feature matches,"
                f" residual {self.residual_px:.2f} px")


def _apply(h: np.ndarray, cols, rows) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.broadcast_arrays(np.asarray(cols, float), np.asarray(rows, float))
    w = h[2, 0] * cols + h[2, 1] * rows + h[2, 2]
    return (h[0, 0] * cols + h[0, 1] * rows + h[0, 2]) / w, (h[1, 0] * cols + h[1, 1] * rows + h[1, 2]) / w


# -- estimating ---------------------------------------------------------------------------------------------
def estimate_alignment(before, after, bands_before: list[int], bands_after: list[int], wrap: bool,
                       names: tuple[str, str]) -> Alignment:
    """The homography taking BEFORE's pixels to AFTER's, from features of both images' estimate copies;
    refused (InputError) where too few matches agree or the transform is implausible."""
    img_b, valid_b, fb = grey_copy(before, bands_before)
    img_a, valid_a, fa = grey_copy(after, bands_after)
    pb, pa = match_features(img_b, valid_b, img_a, valid_a)
    frame = PanoramaFrame(0.0, 0.0, 0.0)
    if wrap and len(pb):
        frame, pb, pa = panorama_frame(pb, pa, img_b.shape[1], img_a.shape[1])
    h_small, inliers, model = fit_homography(pb, pa, (frame.origin, 0.0, img_b.shape[1], img_b.shape[0]))
    _refuse_weak(len(pb), inliers, names)
    h = _to_full(fa) @ h_small @ np.linalg.inv(_to_full(fb))
    found = Alignment(h, len(pb), int(inliers.sum()), 0.0, (before.width, before.height), (after.width, after.height),
                      wrap, frame.shift * fa[0] if wrap else None, 1 / fb[0], (frame.origin + 0.5) * fb[0] - 0.5,
                      frame.ramp * fb[0], model)
    pb_full, pa_full = _full_points(pb[inliers], fb), _full_points(pa[inliers], fa)
    x, y = found.map(pb_full[:, 0], pb_full[:, 1])
    found = replace(found, residual_px=float(np.sqrt(np.mean((x - pa_full[:, 0]) ** 2 + (y - pa_full[:, 1]) ** 2))))
    _refuse_implausible(found, names)
    return found


def grey_copy(ds, bands: list[int]) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The bands' mean, read about ESTIMATE_PX large (averaged where that shrinks it, so a large photo is read
    in one bounded pass, never whole; enlarged at most MAX_UPSAMPLING), stretched to uint8 between its 1st and
    99th percentiles (any dtype). Returns the image, where it is valid, and the full-resolution pixels per copy
    pixel along x and y."""
    factor = max(1.0 / MAX_UPSAMPLING, math.sqrt(ds.width * ds.height / ESTIMATE_PX))
    h, w = max(1, round(ds.height / factor)), max(1, round(ds.width / factor))
    how = Resampling.average if factor > 1 else Resampling.cubic
    data = ds.read(bands, out_shape=(len(bands), h, w), resampling=how, out_dtype="float32")
    valid = (ds.read_masks(bands, out_shape=(len(bands), h, w), resampling=Resampling.nearest) > 0).all(axis=0)
    grey = data.mean(axis=0)
    valid &= np.isfinite(grey)
    factors = (ds.width / w, ds.height / h)
    if not valid.any():
        return np.zeros((h, w), np.uint8), valid, factors
    lo, hi = np.percentile(grey[valid], [1, 99])
    scaled = np.clip((grey - lo) * (255.0 / max(hi - lo, 1e-9)), 0, 255)
    return np.where(valid, scaled, 0).astype(np.uint8), valid, factors


def match_features(img_b: np.ndarray, valid_b: np.ndarray, img_a: np.ndarray,
                   valid_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) matched points (x, y) in each image: SIFT keypoints (scale and rotation invariant, and normalised
    for contrast, so a lighting change keeps them) away from nodata, matched by nearest descriptor with Lowe's
    ratio test."""
    import cv2

    sift = cv2.SIFT_create(nfeatures=MAX_FEATURES)
    kb, db = sift.detectAndCompute(img_b, _feature_mask(valid_b))
    ka, da = sift.detectAndCompute(img_a, _feature_mask(valid_a))
    if db is None or da is None or len(kb) < 2 or len(ka) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(db, da, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    pb = np.array([kb[m.queryIdx].pt for m in good], np.float64).reshape(-1, 2)
    pa = np.array([ka[m.trainIdx].pt for m in good], np.float64).reshape(-1, 2)
    return _one_to_one(pb, pa, np.array([m.distance for m in good]))


def _one_to_one(pb: np.ndarray, pa: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point of either image in at most one match, its closest: many keypoints of BEFORE matched to one of
    AFTER (SIFT also repeats a keypoint at one place for each of its orientations) would let RANSAC count one
    coincidence many times (an unrelated pair reached 22 "inliers", all on one AFTER point)."""
    order = np.argsort(distance, kind="stable")
    _, first_a = np.unique(np.round(pa[order], 1), axis=0, return_index=True)
    keep = order[np.sort(first_a)]
    _, first_b = np.unique(np.round(pb[keep], 1), axis=0, return_index=True)
    keep = keep[np.sort(first_b)]
    return pb[keep], pa[keep]


def _feature_mask(valid: np.ndarray) -> np.ndarray | None:
    """Where keypoints may lie: valid pixels 4 or more from nodata, whose edge would pass for a feature; None
    (everywhere) for an image without nodata."""
    if valid.all():
        return None
    from scipy.ndimage import binary_erosion

    return binary_erosion(valid, iterations=4).astype(np.uint8)


@dataclass(frozen=True)
class PanoramaFrame:
    """Where a panorama's homography is fitted (estimate-copy pixels): AFTER's circular shift, the BEFORE column
    its frame of one turn starts at, and the width of the ramp before it (see Alignment.map)."""

    shift: float
    origin: float
    ramp: float


def panorama_frame(pb: np.ndarray, pa: np.ndarray, width_b: int, width_a: int):
    """The circular shift most matches agree on (the peak of their horizontal displacements modulo the width,
    refined by the median near it); the frame starting at the end of the widest arc without matches that agree
    with it, and its ramp (see `_widest_gap`); and both images' match points moved by whole turns into that
    frame, so one transform fits them across the seam. The real TSUNAMI pair matches only around its seam
    (columns 930-83): fitted on the image's own columns, its two clusters sat a turn apart and the seam
    correction cost 9 px of residual."""
    expected = pb[:, 0] * (width_a / width_b)
    dx = np.mod(pa[:, 0] - expected, width_a)
    bins = max(8, width_a // 8)
    counts = np.bincount((dx * bins / width_a).astype(int) % bins, minlength=bins)
    counts = counts + np.roll(counts, 1) + np.roll(counts, -1)  # a peak on a bin edge still wins
    peak = (np.argmax(counts) + 0.5) * width_a / bins
    near = np.mod(dx - peak + width_a / 2, width_a) - width_a / 2
    shift = peak + float(np.median(near[np.abs(near) <= 1.5 * width_a / bins]))
    shift = (shift + width_a / 2) % width_a - width_a / 2  # the smaller turn
    agree = np.abs(np.mod(dx - shift + width_a / 2, width_a) - width_a / 2) <= width_a / 16
    origin, ramp = _widest_gap(pb[agree, 0], width_b)
    ub = origin + np.mod(pb[:, 0] - origin, width_b)
    turns = np.round((ub * (width_a / width_b) + shift - pa[:, 0]) / width_a)
    return PanoramaFrame(shift, origin, ramp), np.column_stack([ub, pb[:, 1]]), \
        np.column_stack([pa[:, 0] + turns * width_a, pa[:, 1]])


def _widest_gap(xs: np.ndarray, width: int) -> tuple[float, float]:
    """(origin, ramp): the end of the widest circular gap between the columns `xs` and the gap's width, where it
    spans a quarter turn or more; else (matches all round) a ramp over the whole turn, starting at that gap."""
    if len(xs) < 2:
        return 0.0, float(width)
    xs = np.sort(xs)
    gaps = np.diff(np.append(xs, xs[0] + width))
    i = int(np.argmax(gaps))
    origin = float(np.mod(xs[i] + gaps[i], width))
    return origin, float(gaps[i]) if gaps[i] >= width / 4 else float(width)


def fit_homography(pb: np.ndarray, pa: np.ndarray, frame: tuple[float, float, int, int]):
    """RANSAC homography BEFORE -> AFTER (refined on its inliers by OpenCV), its inlier flags and the model's
    name. Where the inliers cover under MIN_COVERAGE of the image (`frame`: x0, y0, width, height, estimate-copy
    pixels), a similarity (rotation, scale, shift) instead: 8 parameters fitted to one strip of matches bend
    the rest of the image at will (the TSUNAMI pair, matched along one band of rows, got a shear of 1.2 px
    per row, 260 px over its height, at 0.45 px of residual). (identity, none) where too few matches to try."""
    import cv2

    if len(pb) < 8:
        return np.eye(3), np.zeros(len(pb), bool), "homography"
    h, flags = cv2.findHomography(pb, pa, cv2.RANSAC, RANSAC_PX, maxIters=5000, confidence=0.999)
    if h is None:
        return np.eye(3), np.zeros(len(pb), bool), "homography"
    inliers = flags.ravel().astype(bool)
    if coverage(pb[inliers], frame) >= MIN_COVERAGE:
        return h / h[2, 2], inliers, "homography"
    a, flags = cv2.estimateAffinePartial2D(pb, pa, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                           maxIters=5000, confidence=0.999)
    if a is None:
        return np.eye(3), np.zeros(len(pb), bool), "similarity"
    return np.vstack([a, [0, 0, 1]]), flags.ravel().astype(bool), "similarity"


def coverage(points: np.ndarray, frame: tuple[float, float, int, int]) -> float:
    """Share of the cells of a COVERAGE_GRID over the frame that hold at least one of the points."""
    x0, y0, width, height = frame
    rows, cols = COVERAGE_GRID
    r = np.clip(((points[:, 1] - y0) * rows / height).astype(int), 0, rows - 1)
    c = np.clip(((points[:, 0] - x0) * cols / width).astype(int), 0, cols - 1)
    return len(set(zip(r.tolist(), c.tolist()))) / (rows * cols)


def _to_full(factor: tuple[float, float]) -> np.ndarray:
    """Estimate-copy pixel -> full-resolution pixel (centres at integers): x = (x' + 0.5) f - 0.5."""
    fx, fy = factor
    return np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])


def _full_points(p: np.ndarray, factor: tuple[float, float]) -> np.ndarray:
    return (p + 0.5) * np.asarray(factor) - 0.5


def _refuse_weak(matches: int, inliers: np.ndarray, names: tuple[str, str]) -> None:
    n = int(inliers.sum())
    if n < MIN_INLIERS or n < MIN_INLIER_SHARE * matches:
        raise InputError(f"{names[1]}: cannot be aligned with {names[0]}: only {n} of {matches} feature matches "
                         f"agree on one transform (at least {MIN_INLIERS} and {MIN_INLIER_SHARE:.0%} needed); "
                         "are both images of the same place?")


def _refuse_implausible(found: Alignment, names: tuple[str, str]) -> None:
    """A homography that folds the image (its denominator changes sign), or scales some part of it by more than
    MAX_AREA_CHANGE beyond the two sizes' ratio, is a fit to a few coincident matches, not a viewpoint change."""
    wb, hb = found.before_size
    start = found.origin_px if found.wrap else 0.0  # a panorama's homography holds in its frame of one turn
    cols, rows = np.meshgrid(np.linspace(start, start + wb - 1, 17), np.linspace(0, hb - 1, 17))
    h = found.matrix
    w = h[2, 0] * cols + h[2, 1] * rows + h[2, 2]
    ratio = (found.after_size[0] * found.after_size[1]) / (wb * hb)
    det = np.linalg.det(h) / w ** 3 / ratio  # the local area scale of a homography, relative to the sizes
    if (w <= 0).any() or not (1 / MAX_AREA_CHANGE <= det).all() or not (det <= MAX_AREA_CHANGE).all():
        raise InputError(f"{names[1]}: cannot be aligned with {names[0]}: the best transform ({found.inliers} of "
                         f"{found.matches} matches) distorts the image beyond a change of viewpoint; are both "
                         "images of the same place?")


# -- warping ------------------------------------------------------------------------------------------------
class AlignedAfter:
    """AFTER as seen on BEFORE's grid: reads (and masks) any window by warping the part of AFTER it maps onto,
    bilinearly, so memory stays that of a window. Offers the parts of a rasterio dataset `RasterPair` uses;
    the dataset it wraps is closed by its owner."""

    def __init__(self, source, before, alignment: Alignment):
        self.source, self.alignment = source, alignment
        self.width, self.height = before.width, before.height
        self.crs, self.transform = before.crs, before.transform
        self.count, self.dtypes, self.colorinterp = source.count, source.dtypes, source.colorinterp
        self.descriptions, self.name, self.files = source.descriptions, source.name, source.files
        self.nodata, self.nodatavals = None, tuple(float("nan") for _ in range(source.count))  # outside: nodata
        self.block_shapes = [(min(256, self.height), min(256, self.width))] * source.count
        self._last: tuple | None = None

    def read(self, bands, window: Window, out_dtype="float32") -> np.ndarray:
        return self._warped(bands, window, np.dtype(out_dtype))[0]

    def read_masks(self, bands, window: Window) -> np.ndarray:
        return self._warped(bands, window, None)[1]

    def close(self) -> None:
        self._last = None

    def _warped(self, bands, window: Window, dtype) -> tuple:
        """(data, masks) of a window; the last one is kept, since the pair asks for data and masks in turn."""
        key = (tuple(bands), int(window.row_off), int(window.col_off), int(window.height), int(window.width))
        if self._last is None or self._last[0] != key or (dtype is not None and self._last[1].dtype != dtype):
            self._last = (key, *self._warp(list(bands), *key[1:], dtype or np.dtype(np.float32)))
        return self._last[1:]

    def _warp(self, bands, row, col, height, width, dtype) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.alignment.map(np.arange(col, col + width)[None, :], np.arange(row, row + height)[:, None])
        if self.alignment.wrap:  # the same AFTER columns, a whole turn apart across the frame's start: one turn
            wa = self.alignment.after_size[0]
            x = x - wa * np.round((x - x[height // 2, width // 2]) / wa)
        data = np.zeros((len(bands), height, width), dtype)
        masks = np.zeros((len(bands), height, width), np.uint8)
        box = self._box(x, y)
        if box is None:
            return data, masks
        src, valid, (x0, y0) = self._read_box(bands, *box)
        values, inside = bilinear(src, valid, x - x0, y - y0)
        data[:] = np.clip(np.rint(values), *_limits(dtype)) if dtype.kind in "iu" else values
        data[:, ~inside] = 0
        masks[:, inside] = 255
        return data, masks

    def _box(self, x: np.ndarray, y: np.ndarray) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of AFTER that the window maps into, one pixel more each side for the bilinear
        weights; rows clipped to the image, columns too unless they wrap. None when nothing lies inside."""
        wa, ha = self.alignment.after_size
        finite = np.isfinite(x) & np.isfinite(y)
        if not finite.any():
            return None
        x0, x1 = math.floor(x[finite].min()) - 1, math.ceil(x[finite].max()) + 2
        y0, y1 = max(0, math.floor(y[finite].min()) - 1), min(ha, math.ceil(y[finite].max()) + 2)
        if not self.alignment.wrap:
            x0, x1 = max(0, x0), min(wa, x1)
        return None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)

    def _read_box(self, bands, x0, y0, x1, y1) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """AFTER's pixels and validity in the box, columns wrapping around a panorama."""
        pieces, masks = [], []
        for c0, c1 in wrapped_runs(x0, x1, self.alignment.after_size[0]):
            win = Window(c0, y0, c1 - c0, y1 - y0)
            pieces.append(self.source.read(bands, window=win, out_dtype="float64"))
            masks.append((self.source.read_masks(bands, window=win) > 0).all(axis=0))
        data, valid = np.concatenate(pieces, axis=-1), np.concatenate(masks, axis=-1)
        valid &= np.isfinite(data).all(axis=0)
        return np.where(valid, data, 0), valid, (x0, y0)


def bilinear(src: np.ndarray, valid: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) samples of `src` (C, H, W) at (x, y), and where all four pixels they weigh are valid. In
    float64 from the coordinates themselves, so a pixel gets the same value whichever window reads it (OpenCV's
    remap rounds its weights to 1/32 pixel relative to the window read)."""
    h, w = valid.shape
    fx, fy = np.floor(x), np.floor(y)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    tx, ty = x - fx, y - fy
    inside = (ix >= 0) & (iy >= 0) & (ix < w - 1) & (iy < h - 1)
    ix, iy = np.clip(ix, 0, w - 2), np.clip(iy, 0, h - 2)
    corners = [(iy, ix, (1 - ty) * (1 - tx)), (iy, ix + 1, (1 - ty) * tx), (iy + 1, ix, ty * (1 - tx)),
               (iy + 1, ix + 1, ty * tx)]
    out = np.zeros((src.shape[0], *x.shape))
    for r, c, weight in corners:
        out += src[:, r, c] * weight
        inside &= valid[r, c]
    return out, inside


def _limits(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return info.min, info.max


# Estimates by input (names, file sizes and times, bands, wrap): a pair reopened for another reader thread
# warps with the transform already found instead of estimating it again.
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 8


def align_images(before, after, bands_before: list[int], bands_after: list[int], wrap: bool) -> AlignedAfter:
    """AFTER warped onto BEFORE's grid by the transform estimated from their content (see module doc)."""
    key = (_identity(before), _identity(after), tuple(bands_before), tuple(bands_after), wrap)
    found = _CACHE.get(key)
    if found is None:
        found = estimate_alignment(before, after, bands_before, bands_after, wrap, (before.name, after.name))
        _CACHE[key] = found
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return AlignedAfter(after, before, found)


def _identity(ds) -> tuple:
    """A dataset's name with the size and time of each file it reads: a file changed in place is estimated anew."""
    stats = []
    for name in ds.files:
        try:
            st = Path(name).stat()
            stats.append((str(name), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((str(name), None, None))
    return (str(ds.name), tuple(stats), ds.width, ds.height)

"""preview.png: before, after, change score and mask side by side, for a look without QGIS.

Every panel is read downsampled (GDAL serves it from overviews where they exist), so the preview of a
100 000-pixel mosaic costs no more memory than one of a crop. Images are stretched per band between their
2nd and 98th percentiles; Sentinel-2 stacks show B04/B03/B02, other inputs their first three bands (or one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from cdtool.domain import sentinel2_band

SIDE = 400  # pixels on the long side of each panel


def _display_bands(names: list[str]) -> list[int]:
    """0-based indexes of the bands to show as RGB (or one grey band)."""
    found = {sentinel2_band(n): i for i, n in enumerate(names)}
    s2 = [found.get(k) for k in ("4", "3", "2")]
    if len(names) > 3 and all(i is not None for i in s2):
        return s2  # type: ignore[return-value]
    return [0, 1, 2] if len(names) >= 3 else [0]


def _stretch(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros_like(img, dtype=np.float32)
    for c in range(img.shape[0]):
        v = img[c][valid]
        lo, hi = (np.percentile(v, (2, 98)) if v.size else (0.0, 1.0))
        out[c] = np.clip((img[c] - lo) / max(hi - lo, 1e-9), 0, 1)
    return np.where(valid, out, 1.0)


def read_image(pair, which: int, shape: tuple[int, int]) -> np.ndarray:
    """Date `which` (0 before, 1 after) of the pair's processing window, downsampled to `shape`, (h, w, 3)."""
    ds, bands = (pair.before, pair.bands_before) if which == 0 else (pair.after, pair.bands_after)
    show = [bands[i] for i in _display_bands(pair.info.band_names)]
    win = Window(pair.origin[1], pair.origin[0], pair.info.width, pair.info.height)
    data = ds.read(show, window=win, out_shape=(len(show), *shape), resampling=Resampling.average,
                   out_dtype="float32", masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(data.filled(np.nan)).all(axis=0)
    img = _stretch(np.ma.filled(data, 0.0), valid)
    return np.repeat(img, 3, axis=0).transpose(1, 2, 0) if img.shape[0] == 1 else img.transpose(1, 2, 0)


def _image_or_blank(pair, which: int, shape: tuple[int, int]) -> np.ndarray:
    """The date's panel, or a grey one where the file cannot be read (a corrupt block skipped by detect)."""
    from rasterio.errors import RasterioIOError

    try:
        return read_image(pair, which, shape)
    except RasterioIOError:
        return np.full((*shape, 3), 0.5, np.float32)


def _read_output(path: Path, shape: tuple[int, int], kind: str) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        a = ds.read(1, out_shape=shape, resampling=Resampling.nearest).astype(np.float32)
        alpha = ds.read(2, out_shape=shape, resampling=Resampling.nearest) if ds.count == 2 else None
    if alpha is not None:  # 8-bit PNG outputs: grey x 255, alpha 0 at nodata
        return np.where(alpha == 0, np.nan, a / 255.0)
    nodata = -1.0 if kind == "prob" else 255
    return np.where(a == nodata, np.nan, a)


def write_preview(path: Path, pair, prob: Path, mask: Path, threshold: float,
                  truth: np.ndarray | None = None) -> Path:
    """Write the side-by-side PNG to `path`; `truth` (a full-size bool array) adds a panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = pair.shape
    k = max(1, int(np.ceil(max(h, w) / SIDE)))
    shape = (max(1, h // k), max(1, w // k))
    panels = [("before", _image_or_blank(pair, 0, shape), None), ("after", _image_or_blank(pair, 1, shape), None),
              (f"change score (mask at {threshold:.2f})", _read_output(prob, shape, "prob"), "magma"),
              ("change mask", _read_output(mask, shape, "mask"), "Reds")]
    if truth is not None:
        panels.append(("ground truth", truth[::k, ::k][: shape[0], : shape[1]].astype(np.float32), "Reds"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4 * shape[0] / shape[1] + 0.4))
    for ax, (title, img, cmap) in zip(axes, panels):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path

"""preview.png: before, after, change score and mask side by side, for a look without QGIS.

Every panel shows the centre pixel of each k x k cell (`PreviewGrid`), gathered while detect streams its
tiles and row bands (`PreviewCanvas`), so the preview of a 100 000-pixel mosaic costs no second read of the
inputs or outputs and no more memory than one of a crop. Images are stretched per band between their 2nd
and 98th percentiles; Sentinel-2 stacks show B04/B03/B02, other inputs their first three bands (or one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from cdtool.domain import sentinel2_band
from cdtool.windows import Tile

SIDE = 400  # pixels on the long side of each panel
MAX_PANEL_INCHES = 8.0  # the figure's panel height at most (at 100 dpi)


def display_bands(names: list[str]) -> list[int]:
    """0-based indexes of the bands to show as RGB (or one grey band)."""
    found = {sentinel2_band(n): i for i, n in enumerate(names)}
    s2 = [found.get(k) for k in ("4", "3", "2")]
    if len(names) > 3 and all(i is not None for i in s2):
        return s2  # type: ignore[return-value]
    return [0, 1, 2] if len(names) >= 3 else [0]


def stretch_for_display(img: np.ndarray) -> np.ndarray:
    """(C, h, w) samples, NaN where invalid -> (h, w, 3) in [0, 1], invalid white."""
    valid = np.isfinite(img).all(axis=0)
    out = np.zeros_like(img, dtype=np.float32)
    for c in range(img.shape[0]):
        v = img[c][valid]
        lo, hi = (np.percentile(v, (2, 98)) if v.size else (0.0, 1.0))
        out[c] = np.clip((img[c] - lo) / max(hi - lo, 1e-9), 0, 1)
    out = np.where(valid, out, 1.0)
    return np.repeat(out, 3, axis=0).transpose(1, 2, 0) if out.shape[0] == 1 else out.transpose(1, 2, 0)


def _centres(start: int, stop: int, k: int, count: int) -> tuple[int, int]:
    """Canvas indexes [i0, i1) whose sampled pixel i * k + k // 2 lies in [start, stop)."""
    c = k // 2
    return max(0, -(-(start - c) // k)), min(count, -(-(stop - c) // k))


@dataclass(frozen=True)
class PreviewGrid:
    """Which pixels the preview shows: the centre of every k x k cell, so any tiling, any worker and a resumed
    run all sample the same pixels. Small and picklable: Dask workers take their tiles' samples with it."""

    height: int
    width: int
    k: int
    show: tuple[int, ...]

    @classmethod
    def for_raster(cls, height: int, width: int, band_names: list[str]) -> "PreviewGrid":
        return cls(height, width, max(1, int(np.ceil(max(height, width) / SIDE))), tuple(display_bands(band_names)))

    @property
    def shape(self) -> tuple[int, int]:
        return max(1, self.height // self.k), max(1, self.width // self.k)

    def cells(self, tile: Tile) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Canvas rows and columns inside `tile`, and their pixel offsets within it."""
        (r0, r1), (c0, c1) = (_centres(tile.row, tile.row_stop, self.k, self.shape[0]),
                              _centres(max(tile.col, 0), min(tile.col_stop, self.width), self.k, self.shape[1]))
        rows = np.arange(r0, max(r0, r1)) * self.k + self.k // 2 - tile.row
        cols = np.arange(c0, max(c0, c1)) * self.k + self.k // 2 - tile.col
        return slice(r0, r0 + len(rows)), slice(c0, c0 + len(cols)), rows, cols

    def take(self, tile: Tile, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(2, shown bands, r, c) float32 samples of a read tile (data (2, C, h, w)), NaN where invalid."""
        _, _, rows, cols = self.cells(tile)
        picked = data[:, list(self.show)][..., rows[:, None], cols[None, :]].astype(np.float32)
        return np.where(valid[rows[:, None], cols[None, :]], picked, np.nan)


class PreviewCanvas:
    """The preview's four panels, filled while detect streams: input samples per tile, scores and mask per
    row band. Memory: a few 400-pixel panels."""

    def __init__(self, grid: PreviewGrid):
        self.grid = grid
        self.images = np.full((2, len(grid.show), *grid.shape), np.nan, np.float32)
        self.score = np.full(grid.shape, np.nan, np.float32)
        self.mask = np.full(grid.shape, np.nan, np.float32)
        self.sampled_rows = np.zeros(grid.shape[0], bool)

    def add_inputs(self, tile: Tile, samples: np.ndarray) -> None:
        rows, cols, _, _ = self.grid.cells(tile)
        self.images[:, :, rows, cols] = samples
        self.sampled_rows[rows] = True

    def add_band(self, row: int, values: np.ndarray, valid: np.ndarray, panel: str) -> None:
        """Rows [row, row + len) of the score ('score') or the mask ('mask'), with their validity."""
        rows, cols, r, c = self.grid.cells(Tile(row, 0, values.shape[0], self.grid.width))
        picked = values[r[:, None], c[None, :]].astype(np.float32)
        getattr(self, panel)[rows, cols] = np.where(valid[r[:, None], c[None, :]], picked, np.nan)

    def fill_missing_inputs(self, pair) -> None:
        """Read the sampled rows no tile delivered (those a resumed run did not score again), one at a time."""
        for i in np.flatnonzero(~self.sampled_rows):
            if int(i) * self.grid.k + self.grid.k // 2 >= self.grid.height:
                continue  # a raster fewer rows tall than a cell: its one panel row stays blank
            tile = Tile(int(i) * self.grid.k + self.grid.k // 2, 0, 1, self.grid.width)
            data, valid = pair.read(tile)
            self.add_inputs(tile, self.grid.take(tile, data, valid))

    def write(self, path: Path, threshold: float, truth: np.ndarray | None = None) -> Path:
        """Write the side-by-side PNG to `path`; `truth` (a full-size bool array) adds a panel."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k, (h, w) = self.grid.k, self.grid.shape
        panels = [("before", stretch_for_display(self.images[0]), None),
                  ("after", stretch_for_display(self.images[1]), None),
                  (f"change score (mask at {threshold:.2f})", self.score, "magma"), ("change mask", self.mask, "Reds")]
        if truth is not None:
            panels.append(("ground truth", truth[k // 2::k, k // 2::k][:h, :w].astype(np.float32), "Reds"))
        # panels keep the raster's aspect; a tall strip (32768 × 2048) would make a figure 55 inches high and
        # its rendering 140 MB, so the height is capped and such panels come out narrower instead
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), min(3.4 * h / w, MAX_PANEL_INCHES) + 0.4))
        for ax, (title, img, cmap) in zip(axes, panels):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=100, format="png")
        plt.close(fig)
        return path


def write_preview(path: Path, pair, prob: Path, mask: Path, threshold: float,
                  truth: np.ndarray | None = None) -> Path:
    """The preview of finished outputs (read back band by band): for a run whose preview was not gathered while
    it streamed, e.g. to add a ground-truth panel."""
    import rasterio

    grid = PreviewGrid.for_raster(*pair.shape, pair.info.band_names)
    canvas = PreviewCanvas(grid)
    canvas.fill_missing_inputs(pair)
    for path_, panel in ((prob, "score"), (mask, "mask")):
        with rasterio.open(path_) as ds:
            for r in range(0, ds.height, 256):
                win = Window(0, r, ds.width, min(256, ds.height - r))
                a = ds.read(1, window=win).astype(np.float32)
                if ds.count == 2:  # 8-bit PNG outputs: grey x 255, alpha 0 at nodata
                    valid, a = ds.read(2, window=win) > 0, a / 255.0
                else:
                    valid = a != (-1.0 if panel == "score" else 255)
                canvas.add_band(r, a, valid, panel)
    return canvas.write(path, threshold, truth)

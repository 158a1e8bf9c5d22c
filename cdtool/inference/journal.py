"""The finished row bands of the scoring pass, kept in the output folder (`.cdtool-resume/`) as the run goes:
the staged score map itself (mosaicked by a VRT, `cdtool.io.staging`) and what `cdtool detect --resume`
continues from. Each band is written atomically (a tiled float32 GeoTIFF, zstd level 1, nodata where no score),
beside a fingerprint of everything that decides the scores (inputs, their sizes and times, model, tiling,
bands, options).

A resumed run replays the journal's bands into the histogram and preview, then scores the grid again from
the first tile row that reaches past them; the stitcher drops what those tiles add above the journal, so every
pixel gets the same sums in the same order and the outputs equal an uninterrupted run's. The journal is
removed when a run completes, and a run without --resume starts afresh.
"""

from __future__ import annotations

import json
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from cdtool.errors import InputError
from cdtool.inference.stitcher import Band
from cdtool.io.outputs import replaced_when_done, write_text_atomic
from cdtool.io.writers import BLOCK, PROB_NODATA

JOURNAL = ".cdtool-resume"
FORMAT = 4  # 4: the fingerprint holds every file read; 3: nodata-filled GeoTIFF bands (zstd); 2 had a validity
# mask; 1 was zlib-deflated raw bytes
# GDAL's zstd at level 1 writes a band of scores 6x faster than zlib at its fastest, at the same size: zlib cost
# a second core the whole scoring pass. No predictor: noisy floats shrink less with one. Tiled as the outputs
# are: GDAL copied a mosaic of 16-row strips into the score COG 6x slower (8192²: 9.6 s against 1.7 s).
BAND_PROFILE = dict(driver="GTiff", count=1, dtype="float32", compress="zstd", zstd_level=1, tiled=True,
                    blockxsize=BLOCK, blockysize=BLOCK, nodata=PROB_NODATA)


def _rows_from(row: int) -> Affine:
    """A band's place in the raster: pixel centres at their column and row. Never the identity, which GDAL
    drops with a warning."""
    return Affine(1.0, 0.0, -0.5, 0.0, 1.0, row - 0.5)


def fingerprint(paths: list[Path], settings: dict) -> dict:
    """The inputs (path, size, modification time in ns) and the settings the scores depend on. `paths` are the
    names given and every file they read (a band folder's members, a VRT's sources, a /vsizip/ archive:
    `RasterPair.files`): size and time, not a hash of the contents, so a resume costs no pass over the
    inputs; a file rewritten in place gets a new time."""
    files = []
    for p in paths:
        try:
            st = Path(p).stat()
        except (OSError, ValueError):  # a GDAL dataset name, not a path
            st = None
        files.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    return json.loads(json.dumps({"inputs": files, "settings": settings}, default=str))


def _difference(saved: dict, now: dict) -> str:
    """How an interrupted run's fingerprint differs from this run's, naming the first changed file."""
    old = {p: stamp for p, *stamp in saved.get("inputs", [])}
    new = {p: stamp for p, *stamp in now["inputs"]}
    changed = next((p for p in old if p in new and old[p] != new[p]), None)
    if changed is not None:
        return f"{changed} changed after the interrupted run (its size or modification time differs)"
    other = [k for k in ("inputs", "settings") if saved.get(k) != now[k]] or ["inputs"]
    return f"the interrupted run there used other {' and '.join(other)}"


class Journal:
    """Bands are compressed and written on a background thread (GDAL drops the GIL), at most one behind the
    scoring pass."""

    def __init__(self, folder: Path, prints: dict, resume: bool):
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdtool-journal")
        self._pending: deque = deque()
        self.dir = Path(folder) / JOURNAL
        self.prints = prints
        self.bands: list[int] = []  # start rows of the saved bands, in order
        state = self.dir / "state.json"
        if resume and state.is_file():
            saved = json.loads(state.read_text())
            if saved.get("format") != FORMAT:
                raise InputError(f"{folder}: the interrupted run there was made by another cdtool version; "
                                 "run again without --resume to start afresh")
            if saved.get("fingerprint") != prints:
                raise InputError(f"{folder}: cannot resume: {_difference(saved.get('fingerprint', {}), prints)}; "
                                 "run again without --resume to start afresh")
            self.bands = [int(r) for r in saved.get("bands", [])]
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_state()

    @property
    def rows_done(self) -> int:
        """Rows [0, rows_done) are finished and saved."""
        if not self.bands:
            return 0
        with rasterio.open(self._band_path(self.bands[-1])) as ds:
            return self.bands[-1] + ds.height

    def replay(self):
        """The saved bands, in order."""
        for row in self.bands:
            with rasterio.open(self._band_path(row)) as ds:
                score = ds.read(1)
                yield Band(row, score, score != PROB_NODATA)

    def pieces(self, height: int) -> list[tuple[Path, int, int]]:
        """(file, first row, rows) of each saved band, for the mosaic of the staged score map; call after
        close()."""
        rows = [*self.bands, height]
        return [(self._band_path(r), r, rows[k + 1] - r) for k, r in enumerate(self.bands)]

    def save(self, band: Band) -> None:
        """Queue a finished band; waits while one is still being written. A failed write raises here or at
        close()."""
        while self._pending:
            self._pending.popleft().result()
        self._pending.append(self._writer.submit(self._store, band))

    def close(self) -> None:
        """Wait for the queued bands (an interrupted run keeps what was finished) and stop the writer."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._writer.shutdown(wait=True)

    def _store(self, band: Band) -> None:
        h, w = band.score.shape
        with replaced_when_done(self._band_path(band.row)) as tmp, \
                rasterio.open(tmp, "w", height=h, width=w, transform=_rows_from(band.row), **BAND_PROFILE) as ds:
            ds.write(np.where(band.valid, band.score, np.float32(PROB_NODATA)).astype(np.float32, copy=False), 1)
        self.bands.append(band.row)
        self._write_state()  # after the band: a kill in between leaves the band unlisted, so unused

    def _band_path(self, row: int) -> Path:
        return self.dir / f"{row:09d}.tif"

    def _write_state(self) -> None:
        write_text_atomic(self.dir / "state.json",
                          json.dumps({"format": FORMAT, "fingerprint": self.prints, "bands": self.bands}))



def discard_journal(folder: Path) -> None:
    shutil.rmtree(Path(folder) / JOURNAL, ignore_errors=True)


def rows_kept(folder: Path) -> int:
    """Rows [0, n) a failed or interrupted run into `folder` finished and saved (0: nothing to resume)."""
    state = Path(folder) / JOURNAL / "state.json"
    try:
        bands = [int(r) for r in json.loads(state.read_text()).get("bands", [])]
        if not bands:
            return 0
        with rasterio.open(Path(folder) / JOURNAL / f"{bands[-1]:09d}.tif") as ds:
            return bands[-1] + ds.height
    except (OSError, ValueError, TypeError, rasterio.errors.RasterioIOError):
        return 0

"""What `cdtool detect --resume` continues from: the finished row bands of the scoring pass, kept in the output
folder (`.cdtool-resume/`) as the run goes, each written atomically (deflated float32), with a fingerprint
of everything that decides the scores (inputs, their sizes and times, model, tiling, bands, options).

A resumed run replays the journal's bands into the score raster and histogram, then scores the grid again
from the first tile row that reaches past them; the stitcher drops what those tiles add above the journal,
so every pixel gets the same sums in the same order and the outputs equal an uninterrupted run's. The
journal is removed when a run completes, and a run without --resume starts afresh.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cdtool.errors import InputError
from cdtool.inference.stitcher import Band
from cdtool.io.outputs import replaced_when_done, write_text_atomic

JOURNAL = ".cdtool-resume"


def fingerprint(paths: list[Path], settings: dict) -> dict:
    """The inputs (path, size, modification time) and the settings the scores depend on."""
    files = []
    for p in paths:
        st = Path(p).stat() if Path(p).exists() else None
        files.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    return json.loads(json.dumps({"inputs": files, "settings": settings}, default=str))


class Journal:
    """Bands are compressed and written on a background thread (zlib drops the GIL), at most one behind the
    scoring pass, so keeping a run resumable costs it no time on a machine with a core to spare."""

    def __init__(self, folder: Path, prints: dict, resume: bool):
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdtool-journal")
        self._pending: deque = deque()
        self.dir = Path(folder) / JOURNAL
        self.prints = prints
        self.bands: list[int] = []  # start rows of the saved bands, in order
        state = self.dir / "state.json"
        if resume and state.is_file():
            saved = json.loads(state.read_text())
            if saved.get("fingerprint") != prints:
                changed = [k for k in ("inputs", "settings") if saved.get("fingerprint", {}).get(k) != prints[k]]
                raise InputError(f"{folder}: the interrupted run there used other {' and '.join(changed)}; "
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
        with open(self.dir / f"{self.bands[-1]:09d}.band", "rb") as f:
            h = int(np.frombuffer(f.read(8), np.int64)[0])
        return self.bands[-1] + h

    def replay(self):
        """The saved bands, in order."""
        for row in self.bands:
            raw = (self.dir / f"{row:09d}.band").read_bytes()
            h, w = np.frombuffer(raw[:16], np.int64)
            flat = np.frombuffer(zlib.decompress(raw[16:]), np.uint8)
            score = flat[:h * w * 4].view(np.float32).reshape(h, w)
            valid = flat[h * w * 4:].view(bool).reshape(h, w)
            yield Band(row, score.copy(), valid.copy())

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
        # one zlib stream of the score bytes then the validity bytes, fed from the arrays' own buffers: a wide
        # band is not copied whole on its way to the file
        stream = zlib.compressobj(1)
        parts = [np.array([h, w], np.int64).tobytes(), stream.compress(np.ascontiguousarray(band.score, np.float32)),
                 stream.compress(np.ascontiguousarray(band.valid, bool)), stream.flush()]
        with replaced_when_done(self.dir / f"{band.row:09d}.band") as tmp, open(tmp, "wb") as f:
            f.writelines(parts)
        self.bands.append(band.row)
        self._write_state()  # after the band: a kill in between leaves the band unlisted, so unused

    def _write_state(self) -> None:
        write_text_atomic(self.dir / "state.json", json.dumps({"fingerprint": self.prints, "bands": self.bands}))



def discard_journal(folder: Path) -> None:
    shutil.rmtree(Path(folder) / JOURNAL, ignore_errors=True)

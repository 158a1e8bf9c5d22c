"""The on-disk dataset format shared by `cdtool tile` and `cdtool patches`, and its writer.

Layout of an output folder::

    dataset.json            kind, parameters, channel count, dtypes, counts; written last = "complete"
    index.gpkg              layer "samples": one row per sample (footprint, source files, window,
                            changed share, label, split, shard, offset)
    shards/<unit>-<k>.<array>.npy   stacked arrays per shard: image (N,2,C,H,W) in the source dtype,
                            mask (N,H,W) uint8, valid (N,H,W) bool, flow (N,2,H,W) float32
    parts/<unit>.json       rows of one finished work unit (a source pair, a protocol batch): the
                            resume record; parts/_params.json holds the parameters of the run

Why plain .npy shards: they open with `np.load(mmap_mode="r")`, so a DataLoader worker touches only
the pages of the samples it reads (bounded memory, no decoding cost, no extra dependency), and a shard
is flushed once its buffer reaches a byte budget, so writing is bounded too. Every file is written
under a temporary name and renamed when complete; a unit is done only when its part file exists, so
an interrupted run resumes at the first unfinished unit and a finished run is a no-op.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cdtool.errors import InputError
from cdtool.io.outputs import LOCK, FolderLock, replaced_when_done, write_text_atomic

FORMAT = "cdtool-chips/1"
SPLITS = ("train", "val", "test")
ARRAYS = ("image", "mask", "valid", "flow")
SHARD_BYTES = 64 * 2**20


def _atomic_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    with replaced_when_done(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr))


@dataclass
class UnitWriter:
    """Buffers the samples of one work unit and flushes them to shards of bounded size."""

    store: "DatasetWriter"
    unit: str
    rows: list[dict] = field(default_factory=list)
    _buf: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _bytes: int = 0
    _shard: int = 0
    _offset: int = 0

    def add(self, row: dict, image: np.ndarray, mask: np.ndarray | None = None,
            valid: np.ndarray | None = None, flow: np.ndarray | None = None) -> None:
        """Queue one sample: `image` (2, C, H, W); optional mask/valid (H, W), flow (2, H, W)."""
        arrays = {"image": image.astype(self.store.image_dtype, copy=False)}
        if mask is not None:
            arrays["mask"] = (np.asarray(mask) > 0).astype(np.uint8)
        if valid is not None:
            arrays["valid"] = np.asarray(valid, bool)
        if flow is not None:
            arrays["flow"] = np.asarray(flow, np.float32)
        if self._buf and set(arrays) != set(self._buf):
            self.flush()
        for k, a in arrays.items():
            self._buf.setdefault(k, []).append(a)
            self._bytes += a.nbytes
        self.rows.append({**row, "shard": self._shard_name(), "offset": self._offset})
        self._offset += 1
        if self._bytes >= self.store.shard_bytes:
            self.flush()

    def _shard_name(self) -> str:
        return f"{self.unit}-{self._shard:04d}"

    def flush(self) -> None:
        if not self._buf:
            return
        for k, items in self._buf.items():
            _atomic_npy(self.store.root / "shards" / f"{self._shard_name()}.{k}.npy", np.stack(items))
        self._buf, self._bytes = {}, 0
        self._shard += 1
        self._offset = 0

    def close(self) -> None:
        """Flush and write the part file that marks the unit as done."""
        self.flush()
        _atomic_json(self.store.root / "parts" / f"{self.unit}.json", self.rows)


# Files a dataset folder gets besides shards/ and parts/ (footprints adds its classification and mask).
DATASET_FILES = ("dataset.json", "index.gpkg", "footprint_changes.gpkg", "footprint_changes.qml", "change_mask.tif")


class DatasetWriter:
    """Creates (or resumes) a dataset folder; see the module docstring for the layout."""

    def __init__(self, root: str | Path, kind: str, params: dict, *, overwrite: bool = False,
                 image_dtype: str = "float32", shard_bytes: int = SHARD_BYTES):
        self.root = Path(root)
        self.kind = kind
        self.params = json.loads(json.dumps({"kind": kind, **params}, default=str))
        self.image_dtype = np.dtype(image_dtype)
        self.shard_bytes = shard_bytes
        self.complete = False
        self.lock = FolderLock(self.root)  # one run writes a dataset folder at a time; released by finish()
        try:
            self._prepare(overwrite)
        except BaseException:
            self.lock.release()
            raise
        if self.complete:  # nothing to write: a re-run is a no-op
            self.lock.release()

    def _prepare(self, overwrite: bool) -> None:
        root = self.root
        meta, params_file = root / "dataset.json", root / "parts" / "_params.json"
        if any(p.name != LOCK for p in root.iterdir()):
            ours = meta.exists() or params_file.exists()
            if overwrite:
                if not ours and any(p.name not in ("shards", "parts", "index.gpkg", LOCK) for p in root.iterdir()):
                    raise InputError(f"{root}: folder is not empty and was not written by cdtool; "
                                     "pick an empty or new --out folder")
                for name in ("shards", "parts"):
                    shutil.rmtree(root / name, ignore_errors=True)
                for name in DATASET_FILES:  # what cdtool writes here, and nothing else: the user's files stay
                    (root / name).unlink(missing_ok=True)
            elif not ours:
                raise InputError(f"{root}: folder is not empty and holds no cdtool dataset; "
                                 "pick another --out or pass --overwrite")
            else:
                previous = json.loads((meta if meta.exists() else params_file).read_text())
                previous = previous.get("params", previous)
                if previous != self.params:
                    changed = sorted(k for k in set(previous) | set(self.params)
                                     if previous.get(k) != self.params.get(k))
                    raise InputError(f"{root}: holds a dataset made with other settings ({', '.join(changed)}); "
                                     "pass --overwrite to replace it")
                self.complete = meta.exists() and (root / "index.gpkg").exists()
        (root / "shards").mkdir(parents=True, exist_ok=True)
        (root / "parts").mkdir(exist_ok=True)
        if not params_file.exists():
            _atomic_json(params_file, self.params)
        for tmp in list(root.glob("**/.*.partial.*")):  # what a killed run was writing (`replaced_when_done`)
            tmp.unlink()

    def done(self, unit: str) -> bool:
        return (self.root / "parts" / f"{unit}.json").exists()

    def unit(self, unit: str) -> UnitWriter:
        # A crashed unit may have left shards without a part file: start it afresh.
        for stale in (self.root / "shards").glob(f"{unit}-[0-9][0-9][0-9][0-9].*.npy"):
            stale.unlink()
        return UnitWriter(self, unit)

    def fixed_size_units(self, prefix: str, total: int, per_unit: int,
                         bar=None) -> Iterator[tuple[UnitWriter, range]]:
        """Samples 0..total-1 in units `{prefix}.00000`, ... of `per_unit` each, for protocols that draw
        every unit from its own seed: yields a writer and the sample numbers of each unfinished unit and
        closes the unit when the caller asks for the next, so a crash leaves it unfinished and a rerun
        redoes only it. Finished units just advance the progress `bar`."""
        for u0 in range(0, total, per_unit):
            unit, samples = f"{prefix}.{u0 // per_unit:05d}", range(u0, min(u0 + per_unit, total))
            if self.done(unit):
                if bar is not None:
                    bar.update(len(samples))
                continue
            writer = self.unit(unit)
            yield writer, samples
            writer.close()

    def rows(self) -> list[dict]:
        out = []
        for part in sorted((self.root / "parts").glob("*.json")):
            if part.name != "_params.json":
                out.extend(json.loads(part.read_text()))
        return out

    def finish(self, crs: Any = None, channels: int | None = None, extra: dict | None = None) -> dict:
        """Write index.gpkg and dataset.json from the part files; returns the summary."""
        rows = self.rows()
        if not rows:
            raise InputError(f"{self.root}: no samples were produced; check the inputs and thresholds")
        write_index(self.root / "index.gpkg", rows, crs)
        counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
        labels = [r.get("label") for r in rows if r.get("label") is not None and r.get("label") >= 0]
        summary = {"format": FORMAT, "kind": self.kind, "params": self.params, "samples": len(rows),
                   "splits": counts, "channels": channels, "image_dtype": str(self.image_dtype),
                   "arrays": sorted({a for p in (self.root / "shards").glob("*.npy")
                                     for a in [p.name.split(".")[-2]]})}
        if labels:
            summary["labels"] = {str(v): int(n) for v, n in zip(*np.unique(labels, return_counts=True))}
            summary["labels_by_split"] = {s: {str(v): sum(1 for r in rows if r["split"] == s and r.get("label") == v)
                                              for v in sorted(set(labels))} for s in SPLITS}
        summary.update(extra or {})
        _atomic_json(self.root / "dataset.json", summary)
        self.complete = True
        self.lock.release()
        return summary

    def summary(self) -> dict:
        return json.loads((self.root / "dataset.json").read_text())

    def abandon(self) -> None:
        """After a failure: unlock, and when no sample was kept (nothing for a rerun to resume) remove the
        scaffolding this writer made, so the folder is as it was (the lock removes a folder it created)."""
        if not self.complete:
            if not self.rows():
                for name in ("shards", "parts"):
                    shutil.rmtree(self.root / name, ignore_errors=True)
                for name in DATASET_FILES:
                    (self.root / name).unlink(missing_ok=True)
            self.lock.release()


def write_index(path: Path, rows: Iterable[dict], crs: Any) -> None:
    """The index as a GeoPackage (layer "samples"): QGIS shows where every chip came from."""
    import geopandas as gpd
    from shapely import wkt

    rows = list(rows)
    geoms = [wkt.loads(r["footprint"]) if r.get("footprint") else None for r in rows]
    attrs = [{k: v for k, v in r.items() if k != "footprint"} for r in rows]
    gdf = gpd.GeoDataFrame(attrs, geometry=geoms, crs=crs)
    import warnings
    with replaced_when_done(path) as tmp, warnings.catch_warnings():
        tmp.unlink(missing_ok=True)
        warnings.simplefilter("ignore", UserWarning)  # pixel-space footprints legitimately have no CRS
        gdf.to_file(tmp, layer="samples", driver="GPKG", VERSION="1.2")  # see io/vectors.py


def read_index(root: str | Path):
    """The index rows as a pandas DataFrame (no geometry parsing, so it is fast)."""
    import pyogrio

    path = Path(root) / "index.gpkg"
    if not path.exists() or not (Path(root) / "dataset.json").exists():
        raise InputError(f"{root}: not a finished cdtool dataset (no index.gpkg / dataset.json); "
                         "run or resume `cdtool tile` / `cdtool patches` first")
    return pyogrio.read_dataframe(path, layer="samples", read_geometry=False)

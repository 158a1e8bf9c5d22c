"""Many pairs in one run: `cdtool detect --pairs pairs.csv` (or a folder of pair folders).

Each pair gets its own output folder, as a single `detect` would write it; a pair that fails is reported and
skipped, so one bad file does not cost the night's batch; `--resume` continues each pair where it stopped
(finished pairs are kept). The batch ends with one table of every pair: summary.csv, and summary.gpkg with
each georeferenced pair's footprint (WGS84) carrying the same columns, to see in QGIS where change was found."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from cdtool.errors import CdtoolError, InputError, NothingToDo
from cdtool.io.dates import date_from_dates_txt, date_in_name
from cdtool.io.outputs import write_text_atomic
from cdtool.io.pair import IMAGE_SUFFIXES

# names of the two dates inside a pair folder, in (before, after) order
DATE_NAMES = (("before", "after"), ("a", "b"), ("imgs_1", "imgs_2"), ("t1", "t2"), ("1", "2"))
COLUMNS = ("name", "status", "before", "after", "model", "threshold", "changed_share", "changed_area_m2",
           "valid_area_m2", "regions", "seconds", "message")
_SAFE_NAME = re.compile(r"^[\w.@+-]+$")


@dataclass
class PairJob:
    before: str
    after: str
    name: str
    aoi: str | None = None


@dataclass
class BatchResult:
    rows: list[dict] = field(default_factory=list)
    summary_csv: Path | None = None
    summary_gpkg: Path | None = None

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]


def _resolve(value: str, base: Path) -> str:
    """A path from the table, relative to the table's folder; GDAL names (/vsizip/…, NETCDF:…) as given."""
    if value.startswith("/vsi") or re.match(r"^[A-Za-z0-9_]+:", value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _check_name(name: str, where: str) -> str:
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        raise InputError(f"{where}: pair name {name!r} is not a plain folder name (letters, digits, . _ - + @)")
    return name


def read_pairs_csv(path: Path) -> list[PairJob]:
    """Rows of `path` (columns before, after, and optional name, aoi) as jobs."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the pairs table ({exc})") from None
    if not rows:
        raise InputError(f"{path}: the pairs table has no rows (columns: before, after, name, aoi)")
    missing = {"before", "after"} - {(k or "").strip().lower() for k in rows[0]}
    if missing:
        raise InputError(f"{path}: the pairs table lacks the column(s) {', '.join(sorted(missing))}")
    jobs, base = [], path.parent
    for i, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        if not row["before"] or not row["after"]:
            raise InputError(f"{path}: line {i} lacks a before or an after file")
        name = row.get("name") or f"{Path(row['before']).stem}_{Path(row['after']).stem}"
        jobs.append(PairJob(_resolve(row["before"], base), _resolve(row["after"], base),
                            _check_name(name, f"{path}, line {i}"),
                            _resolve(row["aoi"], base) if row.get("aoi") else None))
    return _unique(jobs, str(path))


def _dates_of(folder: Path) -> tuple[Path, Path]:
    """The (before, after) inputs in one pair folder: by their names (before/after, A/B, imgs_1/imgs_2, t1/t2),
    else the only two rasters or band folders there, ordered by their dates (dates.txt, names), else by name."""
    entries = [p for p in folder.iterdir() if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES]
    by_name = {p.stem.lower(): p for p in entries}
    for first, second in DATE_NAMES:
        if first in by_name and second in by_name:
            return by_name[first], by_name[second]
    if len(entries) != 2:
        raise InputError(f"{folder}: a pair folder holds two rasters (or band folders) named before/after, A/B or "
                         f"imgs_1/imgs_2; found {len(entries)} candidates")
    a, b = sorted(entries, key=lambda p: (date_from_dates_txt(str(p)) or date_in_name(p.name) or "", p.name))
    return a, b


def read_pairs_folder(folder: Path) -> list[PairJob]:
    """One job per sub-folder of `folder` (named after it)."""
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not subs:
        raise InputError(f"{folder}: holds no pair folders")
    jobs = []
    for sub in subs:
        before, after = _dates_of(sub)
        jobs.append(PairJob(str(before), str(after), _check_name(sub.name, str(sub))))
    return _unique(jobs, str(folder))


def read_pairs(source: str | Path) -> list[PairJob]:
    """The jobs of a pairs table (.csv) or a folder of pair folders."""
    source = Path(source)
    if source.is_dir():
        return read_pairs_folder(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    return read_pairs_csv(source)


def _unique(jobs: list[PairJob], where: str) -> list[PairJob]:
    seen: set[str] = set()
    for job in jobs:
        if job.name.lower() in seen:
            raise InputError(f"{where}: two pairs are named {job.name!r}; their outputs would share a folder")
        seen.add(job.name.lower())
    return jobs


def _row(job: PairJob, status: str, out: Path, message: str = "") -> dict:
    row = dict.fromkeys(COLUMNS, None) | {"name": job.name, "status": status, "before": job.before,
                                          "after": job.after, "message": message}
    summary_path = out / "detect.json"
    if status != "failed" and summary_path.exists():
        s = json.loads(summary_path.read_text())
        areas = s.get("summary", {})
        row |= {"model": s.get("model"), "threshold": s.get("threshold"), "changed_share": s.get("changed_share"),
                "changed_area_m2": areas.get("changed_area_m2"), "valid_area_m2": areas.get("valid_area_m2"),
                "regions": s.get("regions"), "seconds": s.get("seconds")}
    return row


def detect_pairs(jobs: list[PairJob], out: str | Path, options, announce: Callable[[str], None] = print,
                 run: Callable | None = None) -> BatchResult:
    """Detect each job into `out/<name>/` with `options` (a DetectOptions; an `aoi` column overrides its aoi),
    then write out/summary.csv and out/summary.gpkg. `run` is `detect` (given for tests)."""
    if run is None:
        from cdtool.inference.detect import detect as run
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = BatchResult()
    for i, job in enumerate(jobs, start=1):
        folder = out / job.name
        opts = replace(options, aoi=job.aoi) if job.aoi else options
        try:
            run(job.before, job.after, folder, opts)
            row = _row(job, "done", folder)
        except NothingToDo:
            row = _row(job, "done before", folder, "finished in an earlier run")
        except CdtoolError as exc:
            row = _row(job, "failed", folder, str(exc))
        result.rows.append(row)
        share = f"{100 * row['changed_share']:.2f} % changed" if row["changed_share"] is not None else row["message"]
        announce(f"[{i}/{len(jobs)}] {job.name}: {row['status']}, {share}")
    result.summary_csv = _write_csv(out / "summary.csv", result.rows)
    result.summary_gpkg = _write_footprints(out / "summary.gpkg", result.rows, out)
    return result


def _write_csv(path: Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def _footprint(folder: Path):
    """The WGS84 outline of a pair's score map; None when it has no georeference or is missing."""
    import rasterio
    from rasterio.warp import transform_geom
    from shapely.geometry import box, shape

    tif = folder / "change_prob.tif"
    if not tif.exists():
        return None
    with rasterio.open(tif) as ds:
        if ds.crs is None:
            return None
        return shape(transform_geom(ds.crs, "EPSG:4326", box(*ds.bounds).__geo_interface__, precision=-1))


def _write_footprints(path: Path, rows: list[dict], out: Path) -> Path | None:
    """summary.gpkg: the rows with their pairs' footprints; None when no pair has one."""
    import geopandas as gpd

    geoms = [_footprint(out / r["name"]) if r["status"] != "failed" else None for r in rows]
    if not any(g is not None for g in geoms):
        path.unlink(missing_ok=True)
        return None
    frame = gpd.GeoDataFrame(rows, geometry=geoms, crs="EPSG:4326")
    staging = path.with_name(f".{path.stem}.staging.gpkg")
    staging.unlink(missing_ok=True)
    frame.to_file(staging, driver="GPKG", layer="pairs")
    staging.replace(path)
    return path

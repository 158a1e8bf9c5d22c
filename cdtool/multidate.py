"""More than two dates: `cdtool detect d1 d2 d3 …` detects each consecutive pair, in time order, and says when
each place first changed.

The dates are put in time order by what their files say (`cdtool.io.dates`: dates.txt, acquisition tags,
names); when any date is unknown they stay in the order given, and the run says so. Each consecutive pair is
an ordinary detection in its own folder (`01_<d1>_<d2>/` …), so every option, --resume and the QGIS styles
apply to each. Then the masks are read back band by band into

- first_change.tif: 1 where a pixel first changed between dates 1 and 2, 2 between dates 2 and 3, …, 0 where
  it never changed, 255 where no pair saw it; with a QGIS style naming each interval;
- first_change.gpkg: the regions of each value as polygons, with the interval as `first_changed`.

All pairs must come out on one grid (the dates share a grid, or --align puts each on its BEFORE's: give the
dates on one grid for a series)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cdtool.errors import InputError
from cdtool.io.dates import acquisition_date

NEVER, UNSEEN = 0, 255
OUTPUTS = ("first_change.tif", "first_change.qml", "first_change.gpkg")
MAX_DATES = 254  # first_change.tif is uint8 with 0 and 255 reserved
PALETTE = ("#ffffb2", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026", "#7a0177")


@dataclass
class Series:
    inputs: list[str]  # in time order
    dates: list[str | None]
    ordered_by: str  # "dates" or "as given"
    folders: list[Path] = field(default_factory=list)  # one per consecutive pair
    outputs: dict[str, Path] = field(default_factory=dict)
    changed_share: list[float] = field(default_factory=list)  # per consecutive pair

    def interval(self, k: int) -> str:
        """'2015-07-04 → 2018-02-11' for the k-th pair (1-based); names where a date is unknown."""
        a, b = self.inputs[k - 1], self.inputs[k]
        da, db = self.dates[k - 1], self.dates[k]
        return f"{da or Path(a).name} → {db or Path(b).name}"


def _date_of(source: str) -> str | None:
    from cdtool.io.pair import open_raster

    try:
        with open_raster(source) as ds:
            return acquisition_date(ds, source)
    except InputError:
        raise
    except Exception:  # unreadable: detect names the file and the problem in its own words
        return None


def order_dates(inputs: list[str]) -> Series:
    """The inputs in time order when every one has a date (dates must differ), else as given."""
    if len(inputs) < 2:
        raise InputError("detect needs at least two dates")
    if len(inputs) > MAX_DATES:
        raise InputError(f"{inputs[MAX_DATES]}: more than {MAX_DATES} dates in one series")
    if len(set(inputs)) < len(inputs):
        dup = next(i for i in inputs if inputs.count(i) > 1)
        raise InputError(f"{dup}: given twice in the series")
    dates = [_date_of(s) for s in inputs]
    if all(dates) and len(set(dates)) == len(dates):
        order = sorted(range(len(inputs)), key=lambda i: dates[i])
        return Series([inputs[i] for i in order], [dates[i] for i in order], "dates")
    return Series(list(inputs), dates, "as given")


def _pair_folder(out: Path, k: int, series: Series) -> Path:
    def short(i: int) -> str:
        return (series.dates[i] or Path(series.inputs[i]).stem).replace("/", "_")

    return out / f"{k:02d}_{short(k - 1)}_{short(k)}"


def detect_series(inputs: list[str], out: str | Path, options, announce: Callable[[str], None] = print,
                  run: Callable | None = None) -> Series:
    """Detect every consecutive pair of `inputs` (ordered by `order_dates`) into out/NN_<date>_<date>/ with
    `options` (a DetectOptions), then write out/first_change.tif and out/first_change.gpkg."""
    if run is None:
        from cdtool.inference.detect import detect as run
    series = order_dates([str(s) for s in inputs])
    out = Path(out)
    kept = [out / n for n in OUTPUTS if (out / n).exists()]
    if kept and not (options.overwrite or options.resume):
        raise InputError(f"{kept[0]}: already exists (use --overwrite to replace the series' outputs, or --resume)")
    if series.ordered_by == "as given":
        announce("dates: not every input has a known date; the series runs in the order given")
    for k in range(1, len(series.inputs)):
        folder = _pair_folder(out, k, series)
        announce(f"[{k}/{len(series.inputs) - 1}] {series.interval(k)}")
        result = run(series.inputs[k - 1], series.inputs[k], folder, options)
        series.folders.append(folder)
        series.changed_share.append(result.changed_share)
    series.outputs = write_first_change(out, series, options)
    return series


def _mask_path(folder: Path) -> Path:
    for name in ("change_mask.tif", "change_mask.png"):
        if (folder / name).exists():
            return folder / name
    raise InputError(f"{folder}: holds no change mask")


def _read_masks(series: Series):
    """Open the pairs' masks; all on one grid, else refused naming the pair that is not."""
    import rasterio

    opened = [rasterio.open(_mask_path(f)) for f in series.folders]
    first = opened[0]
    for ds, folder in zip(opened[1:], series.folders[1:]):
        if (ds.width, ds.height) != (first.width, first.height) or not ds.transform.almost_equals(first.transform):
            for d in opened:
                d.close()
            raise InputError(f"{folder}: this pair's outputs are not on the grid of {series.folders[0]}'s; give the "
                             "dates of a series on one grid (e.g. gdalwarp them onto the first date's)")
    return opened


def _mask_rows(ds, row: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(changed, seen) of a mask's rows: GeoTIFF masks hold 0/1/255, PNG masks grey 0/255 with alpha."""
    from rasterio.windows import Window

    win = Window(0, row, ds.width, rows)
    a = ds.read(1, window=win)
    if ds.count == 2:
        return a > 0, ds.read(2, window=win) > 0
    return a == 1, a != UNSEEN


def write_first_change(out: Path, series: Series, options) -> dict[str, Path]:
    """first_change.tif (+ .qml) and, unless polygons are off, first_change.gpkg, streamed band by band."""
    from rasterio.enums import Resampling

    from cdtool.inference.detect import PIXEL_GRID
    from cdtool.io.writers import BLOCK, BandWriter, copy_cog

    masks = _read_masks(series)
    try:
        ref = masks[0]
        georef = ref.crs is not None
        transform = ref.transform if georef else PIXEL_GRID
        tif, gpkg = out / "first_change.tif", out / "first_change.gpkg"
        staging = out / ".first_change.staging.tif"
        polygons = _interval_polygonizers(out, series, ref.crs, transform, options)
        with BandWriter(staging, ref.height, ref.width, "uint8", UNSEEN, ref.crs, transform,
                        "first changed between dates k and k+1") as writer:
            for row in range(0, ref.height, BLOCK):
                rows = min(BLOCK, ref.height - row)
                first = np.full((rows, ref.width), UNSEEN, np.uint8)
                for k, ds in enumerate(masks, start=1):
                    changed, seen = _mask_rows(ds, row, rows)
                    first[(first == UNSEEN) & seen] = NEVER
                    first[(first == NEVER) & changed] = k
                writer.write(first)
                for k, poly in polygons.items():
                    hit = first == k
                    poly.add(row, hit, hit.astype(np.float32))
            writer.close()
    finally:
        for ds in masks:
            ds.close()
    try:
        copy_cog(staging, tif, Resampling.nearest)
    finally:
        staging.unlink(missing_ok=True)
    (out / "first_change.qml").write_text(_first_change_qml(series), encoding="utf-8")
    outputs = {"first_change.tif": tif, "first_change.qml": out / "first_change.qml"}
    if polygons:
        _merge_polygons(polygons, gpkg, series)
        outputs["first_change.gpkg"] = gpkg
    return outputs


def _interval_polygonizers(out: Path, series: Series, crs, transform, options) -> dict:
    if not options.polygons:
        return {}
    from cdtool.io.vectors import Polygonizer

    scratch = out / ".first_change"
    scratch.mkdir(exist_ok=True)
    return {k: Polygonizer(scratch / f"{k:03d}.gpkg", crs, transform, options.min_pixels or 4)
            for k in range(1, len(series.inputs))}


def _merge_polygons(polygons: dict, gpkg: Path, series: Series) -> None:
    """One layer of every interval's regions, with `first_changed` naming the interval."""
    import shutil

    import pandas as pd
    import pyogrio

    frames = []
    for k, poly in polygons.items():
        if poly.close():
            frame = pyogrio.read_dataframe(poly.path)
            frame.insert(1, "first_changed", series.interval(k))
            frame.insert(2, "interval", k)
            frames.append(frame.drop(columns=[c for c in ("mean_prob", "max_prob") if c in frame]))
    if frames:
        merged = pd.concat(frames, ignore_index=True)
        merged["id"] = np.arange(1, len(merged) + 1)
        staging = gpkg.with_name(".first_change.staging.gpkg")
        pyogrio.write_dataframe(merged, staging, layer="first_change", driver="GPKG")
        staging.replace(gpkg)
    shutil.rmtree(gpkg.parent / ".first_change", ignore_errors=True)


def _first_change_qml(series: Series) -> str:
    """A paletted style: one colour per interval (light = early), never-changed transparent."""
    from cdtool.io.qgis_style import paletted_qml

    return paletted_qml([(0, "#ffffff", 0, "never changed")]
                        + [(k, PALETTE[(k - 1) % len(PALETTE)], 255, series.interval(k))
                           for k in range(1, len(series.inputs))])

"""Leave-one-source-out table: how each model does on each labelled source (LEVIR, DSIFN, OSCD train and test
cities, Landsat Nanjing), run through `cdtool detect` on the original files in ../shared/data.

Per (model, source): F1, IoU and AUROC pooled over the source's pairs (one confusion matrix; pixels the label
leaves unknown, as most of Nanjing, are not scored), and two invariance shares averaged over the pairs:
  same        changed share when BEFORE is given as both dates (should be 0)
  radiometric changed share when AFTER = BEFORE * 0.8 + 10 (a gain and offset, no real change; should be ~0)
Run from the repository root:

    python benchmarks/domain_table.py --models cva pca_kmeans irmad default runs/x.safetensors \\
        --sources levir dsifn oscd_train oscd_test nanjing [--loso DIR] [--bands rgb|all] \\
        [--json out.json] [--md out.md]

`default` is DetectOptions(model=None), whatever detect picks for the input; `MODEL@T` runs MODEL with
threshold T (a number, or otsu, kmeans, gmm). `--loso DIR` adds a row
"loso:<DIR name>" that scores each source S with DIR/S.safetensors (a model trained without S); `--cv DIR`
a row "cv:<DIR name>" that scores each scene with the fold model of benchmarks/train_domain.py that left
it out, and a per-scene table with the default rule (mean F1 above the best label-free method's, losing to
it on at most a third of the scenes).
`--bands rgb` compares the three RGB bands of every source (OSCD B04, B03, B02; Nanjing TM 3, 2, 1);
`all` every band (OSCD 13, Nanjing 6; LEVIR and DSIFN stay 3). PNG sources get their nominal GSD through
DetectOptions(gsd=...); georeferenced ones (OSCD, Nanjing) let detect read it from the transform. OSCD
runs with align=True: saclay_e/saclay_w's second date is on a coarser grid (631x679 vs 639x688 over the
same bounds) and is warped onto the first date's, whose grid the labels use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domain_data import DEFAULT_DATA, SOURCES, UNKNOWN, Pair, pairs  # noqa: E402

GAIN, OFFSET = 0.8, 10.0
COLUMNS = ("F1", "IoU", "AUROC", "same %", "radiometric %", "seconds")


@dataclass
class Cell:
    """One (model, source) result."""

    model: str  # the row label
    source: str
    f1: float = math.nan
    iou: float = math.nan
    auroc: float = math.nan
    precision: float = math.nan
    recall: float = math.nan
    same: float = math.nan  # mean changed share, BEFORE vs BEFORE
    radiometric: float = math.nan  # mean changed share, BEFORE vs BEFORE * 0.8 + 10
    seconds: float = 0.0  # detect wall time of the scored runs, summed over pairs
    seconds_total: float = 0.0  # including the invariance runs
    detector: str = ""  # the model detect actually ran
    error: str = ""
    pairs: list[dict] = field(default_factory=list)


# -- reading detect's outputs ----------------------------------------------------------------------------
def read_outputs(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores in [0, 1], predicted change, valid) from what detect wrote into `folder`."""
    import rasterio

    from cdtool.io.writers import MASK_NODATA, PROB_NODATA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (folder / "change_prob.tif").is_file():
            with rasterio.open(folder / "change_prob.tif") as ds:
                prob = ds.read(1)
            with rasterio.open(folder / "change_mask.tif") as ds:
                mask = ds.read(1)
            valid = (prob != PROB_NODATA) & (mask != MASK_NODATA)
            return np.where(valid, prob, 0.0).astype(np.float32), mask == 1, valid
        with rasterio.open(folder / "change_prob.png") as ds:
            prob = ds.read()  # grey (scores x 255), alpha
        with rasterio.open(folder / "change_mask.png") as ds:
            mask = ds.read()
    valid = (prob[-1] > 0) & (mask[-1] > 0)
    return prob[0].astype(np.float32) / 255.0, mask[0] > 127, valid


# -- the radiometric twin of BEFORE ----------------------------------------------------------------------
def _scaled(a: np.ndarray, dtype: str, nodata) -> np.ndarray:
    y = a.astype(np.float64) * GAIN + OFFSET
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        y = np.clip(np.round(y), info.min, info.max)
    if nodata is not None:
        y = np.where(a == nodata, nodata, y)
    return y.astype(dtype)


def _write_scaled(src: Path, dst: Path) -> Path:
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(src) as ds:
            data = ds.read()
            profile = ds.profile
            georef = ds.crs is not None and not ds.transform.is_identity
            colorinterp = ds.colorinterp
    out = _scaled(data, profile["dtype"], profile.get("nodata"))
    if georef:  # a GeoTIFF on the same grid (ENVI and friends become GTiff)
        dst = dst.with_suffix(".tif")
        profile.update(driver="GTiff", compress="deflate")
        for key in ("interleave", "blockxsize", "blockysize", "tiled"):
            profile.pop(key, None)
    else:
        dst = dst.with_suffix(src.suffix if src.suffix.lower() in (".png", ".jpg", ".jpeg") else ".tif")
        profile = {k: v for k, v in profile.items() if k in ("width", "height", "count", "dtype", "nodata")}
        profile["driver"] = "PNG" if dst.suffix.lower() == ".png" else "GTiff"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(dst, "w", **profile) as ds:
            ds.write(out)
            ds.colorinterp = colorinterp
    for side in dst.parent.glob(dst.name + ".aux.xml"):
        side.unlink()
    return dst


def radiometric_twin(before: Path, folder: Path) -> Path:
    """BEFORE * 0.8 + 10 in BEFORE's dtype and grid, written under `folder`: one file, or for a folder of band
    files a folder of band files of the same names (so they stack in the same order)."""
    if before.is_dir():
        from cdtool.io.stack import band_files

        out = folder / "scaled"
        out.mkdir()
        for f in band_files(before):
            written = _write_scaled(f, out / f.name)
            if written.name != f.name:
                raise RuntimeError(f"{f}: band file became {written.name}")
        return out
    return _write_scaled(before, folder / f"scaled{before.suffix}")


# -- running ---------------------------------------------------------------------------------------------
def model_for(spec: str, source: str, scene: str = "") -> str | None:
    """DetectOptions.model for a row spec: None for 'default', DIR/<source>.safetensors for 'loso:DIR', and for
    'cv:DIR' the fold model of benchmarks/train_domain.py that left `scene` out (DIR/summary.json)."""
    if spec == "default":
        return None
    if spec.startswith("loso:"):
        return str(Path(spec[5:]) / f"{source}.safetensors")
    if spec.startswith("cv:"):
        folds = json.loads((Path(spec[3:]) / "summary.json").read_text())["scene_fold"]
        key = f"{source}/{scene}"
        return str(Path(spec[3:]) / folds[key]) if key in folds else f"{spec[3:]}/not-cross-validated-{scene}.safetensors"
    return spec


def row_label(spec: str) -> str:
    if spec.startswith(("loso:", "cv:")):
        kind, _, folder = spec.partition(":")
        return f"{kind}:{Path(folder).name}"
    return Path(spec).name if spec.endswith(".safetensors") else spec


def _detect(before: Path, after: Path, opts, work: Path):
    from cdtool.inference.detect import detect

    out = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    return detect(before, after, out, opts), out


def evaluate(spec: str, source: str, data: Path = DEFAULT_DATA, bands: str = "rgb", invariance: bool = True,
             only: list[str] | None = None, bar: tqdm | None = None, device: str | None = None) -> Cell:
    """Score model `spec` (a registry name, a checkpoint, 'default' or 'loso:DIR') on every labelled pair of
    `source` (or the pairs named in `only`); see the module docstring for what is measured."""
    from cdtool.errors import InputError
    from cdtool.inference.detect import DetectOptions
    from cdtool.metrics import BinaryMetrics

    cell = Cell(row_label(spec), source)
    todo: list[Pair] = [p for p in pairs(source, data) if only is None or p.name in only]
    spec, _, threshold = spec.partition("@")  # "cva@gmm": a model with another threshold method or value
    gsd = None if SOURCES[source].georeferenced else SOURCES[source].gsd
    acc = BinaryMetrics(bins=1024)
    same, radio = [], []
    with tempfile.TemporaryDirectory(prefix="domain-table-") as tmp:
        work = Path(tmp)
        for pair in todo:
            model = model_for(spec, source, pair.name)
            if model is not None and model.endswith(".safetensors") and not Path(model).is_file():
                cell.error = f"no checkpoint {model}"
                return cell
            # every band: none picked, so a Sentinel-2 model reads its own bands by name
            picked = None if bands == "all" else pair.bands(bands)
            opts = DetectOptions(model=model, bands=picked, gsd=gsd, polygons=False, progress=False,
                                 align=pair.source.startswith("oscd"), device=device, preview=False,
                                 threshold=(threshold if threshold in ("otsu", "kmeans", "gmm") else float(threshold))
                                 if threshold else None)
            try:
                t0 = time.perf_counter()
                result, out = _detect(pair.before, pair.after, opts, work)
                seconds = time.perf_counter() - t0
                cell.seconds += seconds
                cell.detector = result.model
                scores, pred, valid = read_outputs(out)
                truth = pair.mask()
                if truth.shape != scores.shape:
                    raise InputError(f"{pair.name}: detect wrote {scores.shape} but the label is {truth.shape}")
                scored = valid & (truth != UNKNOWN)
                acc.update(pred, truth == 1, scored, scores)
                one = BinaryMetrics(bins=1024).update(pred, truth == 1, scored, scores).compute()
                row = {"name": pair.name, "seconds": round(seconds, 3), "threshold": result.threshold,
                       "gsd": result.extra.get("gsd"), "scored_pixels": int(scored.sum()),
                       "changed_share": result.changed_share,
                       **{m: one[m] for m in ("f1", "iou", "auroc", "precision", "recall")}}
                if bar is not None:
                    bar.update(1)
                if invariance:
                    t0 = time.perf_counter()
                    r_same, _ = _detect(pair.before, pair.before, opts, work)
                    if bar is not None:
                        bar.update(1)
                    twin = radiometric_twin(pair.before, Path(tempfile.mkdtemp(prefix="twin-", dir=work)))
                    r_radio, _ = _detect(pair.before, twin, opts, work)
                    if bar is not None:
                        bar.update(1)
                    cell.seconds_total += time.perf_counter() - t0
                    same.append(r_same.changed_share)
                    radio.append(r_radio.changed_share)
                    row.update(same=r_same.changed_share, radiometric=r_radio.changed_share)
                cell.seconds_total += seconds
                cell.pairs.append(row)
            except InputError as exc:  # e.g. a checkpoint trained on other bands
                cell.error = f"{pair.name}: {str(exc).splitlines()[0]}"
                return cell
    scores = acc.compute()
    cell.f1, cell.iou, cell.auroc = scores["f1"], scores["iou"], scores["auroc"]
    cell.precision, cell.recall = scores["precision"], scores["recall"]
    if invariance and same:
        cell.same, cell.radiometric = float(np.mean(same)), float(np.mean(radio))
    return cell


# -- the table -------------------------------------------------------------------------------------------
def _num(x: float, pct: bool = False, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.2f}" if pct else f"{x:.{digits}f}"


def markdown(cells: list[Cell], bands: str) -> str:
    lines = [f"bands: {bands}", "",
             "| model | source | detector | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|" + "---:|" * len(COLUMNS)]
    for c in cells:
        if c.error:
            lines.append(f"| {c.model} | {c.source} | {c.detector or '–'} | error: {c.error} |"
                         + " |" * (len(COLUMNS) - 1))
            continue
        lines.append(f"| {c.model} | {c.source} | {c.detector} | {_num(c.f1)} | {_num(c.iou)} | {_num(c.auroc)} | "
                     f"{_num(c.same, True)} | {_num(c.radiometric, True)} | {c.seconds:.1f} |")
    models = list(dict.fromkeys(c.model for c in cells))
    sources = list(dict.fromkeys(c.source for c in cells))
    if len(sources) > 1:
        lines += ["", "F1 by held-out source:", "",
                  "| model | " + " | ".join(sources) + " | mean |", "|---|" + "---:|" * (len(sources) + 1)]
        for m in models:
            f1 = {c.source: c.f1 for c in cells if c.model == m and not c.error}
            vals = [f1.get(s, math.nan) for s in sources]
            mean = float(np.mean(vals)) if not any(math.isnan(v) for v in vals) else math.nan
            lines.append(f"| {m} | " + " | ".join(_num(v) for v in vals) + f" | {_num(mean)} |")
    return "\n".join(lines) + "\n"


LABEL_FREE = ("cva", "pca_kmeans", "irmad")


def scene_table(cells: list[Cell]) -> tuple[str, dict]:
    """Per-scene F1 of every row, and the default rule for each learned row: its mean per-scene F1 beats the best
    label-free method's and it loses to that method on at most a third of the scenes."""
    rows = list(dict.fromkeys(c.model for c in cells if not c.error))
    f1 = {m: {f"{c.source}/{p['name']}": p["f1"] for c in cells if c.model == m and not c.error for p in c.pairs}
          for m in rows}
    scenes = list(dict.fromkeys(s for m in rows for s in f1[m]))
    mean = {m: float(np.mean([f1[m][s] for s in scenes if s in f1[m]])) for m in rows}
    free = [m for m in rows if m.split("@")[0] in LABEL_FREE]
    best_free = max(free, key=mean.get) if free else None
    lines = ["| scene | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
    lines += [f"| {s} | " + " | ".join(_num(f1[m].get(s, math.nan)) for m in rows) + " |" for s in scenes]
    lines.append("| **mean** | " + " | ".join(f"**{_num(mean[m])}**" for m in rows) + " |")
    verdicts = {}
    if best_free:
        lines += ["", f"Best label-free method: {best_free} (mean F1 {_num(mean[best_free])}).", ""]
        for m in rows:
            if m in free:
                continue
            losses = sum(f1[m][s] < f1[best_free][s] for s in scenes if s in f1[m] and s in f1[best_free])
            wins = mean[m] > mean[best_free] and losses <= len(scenes) / 3
            verdicts[m] = {"mean_f1": mean[m], "best_label_free": best_free, "best_label_free_f1": mean[best_free],
                           "losses": losses, "scenes": len(scenes), "default": wins}
            lines.append(f"- {m}: mean F1 {_num(mean[m])}, loses to {best_free} on {losses} of {len(scenes)} "
                         f"scenes: {'qualifies as the default' if wins else 'does not qualify as the default'}")
    return "\n".join(lines) + "\n", verdicts


def run_table(specs: list[str], sources: list[str], data: Path, bands: str, invariance: bool = True,
              device: str | None = None) -> list[Cell]:
    total = sum(len(pairs(s, data)) for s in sources) * len(specs) * (3 if invariance else 1)
    cells = []
    with tqdm(total=total, unit="run", desc="detect runs") as bar:
        for spec in specs:
            for source in sources:
                bar.set_postfix_str(f"{row_label(spec)} on {source}")
                start = bar.n
                cell = evaluate(spec, source, data, bands, invariance, bar=bar, device=device)
                bar.n = start + len(pairs(source, data)) * (3 if invariance else 1)
                bar.refresh()
                cells.append(cell)
    return cells


def _finite(x):
    """NaN -> None, so the JSON is strict."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["cva"],
                    help="registry names, checkpoint paths, or 'default' (what detect picks)")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--loso", type=Path, help="folder of <source>.safetensors, each trained without that source")
    ap.add_argument("--cv", type=Path, help="a benchmarks/train_domain.py folder: each scene scored by the fold "
                                             "model that left it out, with the per-scene table and default rule")
    ap.add_argument("--bands", choices=("rgb", "all"), default="rgb")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--no-invariance", action="store_true", help="skip the same/radiometric runs")
    ap.add_argument("--device", help="torch device for detect (default: cuda when available)")
    ap.add_argument("--with", dest="earlier", type=Path, nargs="*", default=[],
                    help="--json files of earlier runs whose rows join this table (e.g. the label-free rows)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no such folder")
    specs = list(args.models) + ([f"loso:{args.loso}"] if args.loso else []) + ([f"cv:{args.cv}"] if args.cv else [])
    start = time.perf_counter()
    cells = [Cell(**c) for f in args.earlier for c in json.loads(f.read_text())["cells"]]
    cells += run_table(specs, args.sources, args.data, args.bands, not args.no_invariance, args.device)
    table = markdown(cells, args.bands)
    scenes, verdicts = scene_table(cells)
    table += "\nF1 by scene (each learned row scores a scene with a model that never saw it):\n\n" + scenes
    print(table)
    print(f"{time.perf_counter() - start:.1f} s in all")
    if args.md:
        args.md.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(_finite({"bands": args.bands, "data": str(args.data), "verdicts": verdicts,
                                                 "cells": [c.__dict__ for c in cells]}), indent=2, default=str))


if __name__ == "__main__":
    main()

"""What a few analyst polygons buy (detect --labels), on labelled pairs of ../shared/data, beside CVA and the
learned default. An analyst is simulated: k changed and k unchanged squares of SIZE pixels lying wholly in one
class of the truth (seeded), then a second round adding k/2 + k/2 squares where the first map was wrong (missed
change, false alarms). Every method is scored (F1 of the changed class) on the same pixels: the labelled ones
outside every polygon of that k. The fitted model is scored with each head and mask threshold compared, so the
defaults of cdtool.labels are chosen here. Run from the repository root (about 10 minutes on 2 cores):

    OMP_NUM_THREADS=2 python benchmarks/labels_table.py [--per-source 3] [--out labels_table.json]

Reserved evaluation sets (OSCD aguasclaras, bordeaux, nantes, hongkong; ...) are never read: the OSCD scenes
come from benchmarks/domain_data's non-reserved lists. The learned defaults (vhr_rgb, sentinel2) were trained on
every scene of levir, dsifn, egy_bcd and oscd, so their column is in-sample there and flatters them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.domain_data import DEFAULT_DATA, UNKNOWN, pairs  # noqa: E402

SIZE = 5
KS = (5, 10, 20)
SOURCES = ("levir", "dsifn", "egy_bcd", "oscd_train", "nanjing")
HEADS = {"logistic": 0, "mlp16": 16}
THRESHOLDS = ("0.5", "validated", "otsu")


def squares(truth: np.ndarray, cls: int, k: int, rng, taken: np.ndarray, where: np.ndarray | None = None) -> list:
    """Up to k (row, col) corners of SIZE-squares wholly of class `cls` (and `where`), not on squares taken."""
    ok = truth == cls
    if where is not None:
        ok &= where
    from scipy.ndimage import minimum_filter

    full = minimum_filter(ok.astype(np.uint8), size=SIZE, origin=-(SIZE // 2), mode="constant") > 0
    full &= minimum_filter((~taken).astype(np.uint8), size=SIZE, origin=-(SIZE // 2), mode="constant") > 0
    corners = np.argwhere(full)
    out = []
    for r, c in corners[rng.permutation(len(corners))]:
        if len(out) == k:
            break
        if not taken[r:r + SIZE, c:c + SIZE].any():
            taken[r:r + SIZE, c:c + SIZE] = True
            out.append((int(r), int(c), cls))
    return out


def write_layer(path: Path, boxes: list, transform, crs) -> Path:
    import geopandas as gpd
    import shapely

    polys = []
    for r, c, _ in boxes:
        (x0, y0), (x1, y1) = transform * (c, r), transform * (c + SIZE, r + SIZE)
        polys.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpd.GeoDataFrame({"change": [b[2] for b in boxes]}, geometry=polys, crs=crs).to_file(path)
    return path


def f1(mask: np.ndarray, truth: np.ndarray, scored: np.ndarray) -> float:
    m, t = mask[scored], truth[scored] == 1
    tp, fp, fn = (m & t).sum(), (m & ~t).sum(), (~m & t).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def detect_mask(before, after, model, out: Path) -> np.ndarray:
    import rasterio

    from cdtool.inference.detect import DetectOptions, detect

    result = detect(before, after, out, DetectOptions(model=model, polygons=False, preview=False, overwrite=True))
    path = result.outputs.get("change_mask.tif") or result.outputs["change_mask.png"]
    with rasterio.open(path) as ds:
        band = ds.read(1)
    return band == (1 if path.suffix == ".tif" else 255)


def fitted_scores(before, after, fit) -> np.ndarray:
    """The fitted model's score map of the whole (small) pair, as detect computes it (exact halo)."""
    import torch

    from cdtool.io.pair import open_pair
    from cdtool.models.pixel_classifier import PixelClassifier
    from cdtool.normalization import Normalizer
    from cdtool.windows import Tile

    args = fit.meta["model"]["args"]
    model = PixelClassifier(args["in_channels"], args["hidden"], args["scales"])
    model.load_state_dict(fit.state)
    with open_pair(before, after, offset="auto") as pair:
        data, valid = pair.read(Tile(0, 0, *pair.shape))
        z = torch.from_numpy(Normalizer({"mode": "per-image"}, pair)(data))
    with torch.no_grad():
        return np.where(valid, model.eval()(z[0][None], z[1][None])[0, 0].numpy(), 0.0)


def threshold_of(rule: str, fit, score: np.ndarray) -> float:
    from cdtool.inference.threshold import ScoreHistogram

    if rule == "0.5":
        return 0.5
    if rule == "validated":
        return float(fit.record["threshold"])
    hist = ScoreHistogram()
    hist.add(score.ravel())
    return hist.pick("otsu")


def scene_rows(pair, tmp: Path, seed: int) -> list[dict]:
    from cdtool.labels.fit import HeadSpec
    from cdtool.labels.model import LabelOptions, fit_pair
    from cdtool.inference.detect import PIXEL_GRID

    truth = pair.mask()
    known = truth != UNKNOWN
    if pair.georeferenced:
        from cdtool.io.pair import open_pair

        with open_pair(pair.before, pair.after) as p:
            transform, crs = p.info.transform, p.info.crs
    else:
        transform, crs = PIXEL_GRID, None
    base = {name: detect_mask(pair.before, pair.after, m, tmp / name) for name, m in (("cva", "cva"), ("default", None))}
    rows = []
    for k in KS:
        rng = np.random.default_rng(seed + k)
        taken = np.zeros(truth.shape, bool)
        first = squares(truth, 1, k, rng, taken) + squares(truth, 0, k, rng, taken)
        results, drawn = {}, taken.copy()
        for head, hidden in HEADS.items():
            opts = LabelOptions(spec=HeadSpec(hidden=hidden), threshold="validated")
            fit = fit_pair(pair.before, pair.after, write_layer(tmp / f"r1_{k}.gpkg", first, transform, crs), opts)
            score = fitted_scores(pair.before, pair.after, fit)
            mask1 = score >= threshold_of("validated", fit, score)
            wrong_missed, wrong_false = (truth == 1) & ~mask1, (truth == 0) & mask1
            extra = (squares(truth, 1, k // 2, rng, taken.copy(), wrong_missed)
                     + squares(truth, 0, k // 2, rng, taken.copy(), wrong_false))
            second = first + extra
            for r, c, _ in extra:
                drawn[r:r + SIZE, c:c + SIZE] = True
            fit2 = fit_pair(pair.before, pair.after, write_layer(tmp / f"r2_{k}.gpkg", second, transform, crs), opts)
            score2 = fitted_scores(pair.before, pair.after, fit2)
            results[head] = (fit, score, fit2, score2)
        scored = known & ~drawn
        row = {"scene": f"{pair.source}/{pair.name}", "k": k, "polygons": [len(first), len(second)],
               "cva": f1(base["cva"], truth, scored), "default": f1(base["default"], truth, scored)}
        for head, (fit, score, fit2, score2) in results.items():
            for rule in THRESHOLDS:
                row[f"{head}/{rule}/1"] = f1(score >= threshold_of(rule, fit, score), truth, scored)
                row[f"{head}/{rule}/2"] = f1(score2 >= threshold_of(rule, fit2, score2), truth, scored)
            row[f"{head}/loo_f1"] = fit.record["validation"]["f1"]
            row[f"{head}/seconds"] = fit.record["seconds"]
        rows.append(row)
        print(json.dumps({k2: (round(v, 3) if isinstance(v, float) else v) for k2, v in row.items()}), flush=True)
    return rows


def table(rows: list[dict], columns: list[str]) -> str:
    """Mean F1 per source and k, and over every scene."""
    lines = ["| source | k | scenes | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    groups = {}
    for r in rows:
        groups.setdefault((r["scene"].split("/")[0], r["k"]), []).append(r)
        groups.setdefault(("all", r["k"]), []).append(r)
    for (src, k), rs in sorted(groups.items(), key=lambda g: (g[0][0] == "all", g[0][0], g[0][1])):
        lines.append(f"| {src} | {k} | {len(rs)} | " + " | ".join(f"{np.mean([r[c] for r in rs]):.3f}" for c in columns)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--per-source", type=int, default=3, help="scenes per source (the first, in a fixed order)")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("labels_table.json"))
    args = ap.parse_args()
    start, rows = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources.split(","):
            for pair in pairs(source, args.data)[:args.per_source]:
                rows += scene_rows(pair, Path(tmp) / f"{source}_{pair.name.replace('/', '_')}", args.seed)
    args.out.write_text(json.dumps(rows, indent=1))
    cols = ["cva", "default"] + [f"{h}/{t}/{r}" for h in HEADS for t in THRESHOLDS for r in (1, 2)]
    print(table(rows, cols))
    print(f"{len(rows)} rows, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

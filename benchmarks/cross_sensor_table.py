"""Dates from two sensors, and SAR pairs: INLPG's pairs through `cdtool detect`, one method per column.

Each pair is detected on its original files (BMP/JPEG, no georeference) with each method (`default`: what detect
picks without --model), then scored against its truth: F1 of the mask, AUROC of the score map, the share
flagged, and the share flagged when BEFORE is given as both dates. Pairs: Italy (Landsat-5 NIR beside optical
RGB, a flood), shuguang (SAR beside optical), yellow_A-D (SAR, both dates), beijing_A/B (optical, both dates;
in `vhr_rgb`'s training data).

    python benchmarks/cross_sensor_table.py --methods default cva patch_structure
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "inlpg"
PAIRS = ["Italy", "shuguang", "yellow_A", "yellow_B", "yellow_C", "yellow_D", "beijing_A", "beijing_B"]


def detect(before: Path, after: Path, out: Path, method: str) -> dict:
    args = [sys.executable, "-m", "cdtool.cli", "detect", str(before), str(after), "--out", str(out), "--overwrite",
            "-q", "--no-report", "--no-polygons", "--no-preview"] + ([] if method == "default" else ["--model", method])
    run = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if run.returncode:
        raise SystemExit(f"{before.name}: {run.stderr.strip()}")
    return json.loads((out / "detect.json").read_text())


def score(pair: str, method: str, work: Path) -> dict:
    from cdtool.metrics import exact_auroc

    ext = "jpg" if pair.startswith("beijing") else "bmp"
    before, after = DATA / f"{pair}_1.{ext}", DATA / f"{pair}_2.{ext}"
    truth = np.asarray(Image.open(DATA / f"{pair}_gt.{ext}").convert("L")) > 127
    record = detect(before, after, work / "run", method)
    with rasterio.open(work / "run" / "change_prob.png") as ds:
        scores = ds.read(1)
    with rasterio.open(work / "run" / "change_mask.png") as ds:
        mask = ds.read(1) > 0
    same = detect(before, before, work / "same", method)
    return {"pair": pair, "method": method, "model": record["model"],
            "f1": float(2 * (mask & truth).sum() / max(1, mask.sum() + truth.sum())),
            "auroc": exact_auroc(scores.ravel().astype(np.float64), truth.ravel()),
            "flagged": float(mask.mean()), "truth": float(truth.mean()), "seconds": record["seconds"],
            "identical_flagged": same["changed_share"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["default", "cva", "patch_structure"])
    ap.add_argument("--pairs", nargs="+", default=PAIRS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            for method in args.methods:
                rows.append(score(pair, method, Path(tmp)))
                r = rows[-1]
                print(f"{pair:10s} {method:16s} ({r['model']}): F1 {r['f1']:.3f}  AUROC {r['auroc']:.3f}  flagged "
                      f"{r['flagged']:.3f} (truth {r['truth']:.3f})  identical dates {r['identical_flagged']:.4f}  "
                      f"{r['seconds']:.1f} s", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

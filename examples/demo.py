"""The README's first command (`./run demo`): detect changes on a real pair and write outputs to open.

With ../shared/data beside the project: an OSCD Sentinel-2 city (13 single-band GeoTIFFs per date,
stacked on the fly) and a LEVIR aerial PNG pair. Without it: a generated GeoTIFF pair with known changes.
Each run writes a folder per pair (GeoTIFFs + QGIS styles + GeoPackage, or PNGs) and a preview.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def preview(out: Path, before: Path, after: Path, threshold: float, truth: np.ndarray) -> Path:
    """detect's preview.png again, with the ground truth as a fifth panel."""
    from cdtool.io.pair import open_pair
    from cdtool.io.preview import write_preview

    prob = next(p for p in (out / "change_prob.tif", out / "change_prob.png") if p.exists())
    mask = next(p for p in (out / "change_mask.tif", out / "change_mask.png") if p.exists())
    with open_pair(before, after) as pair:
        return write_preview(out / "preview.png", pair, prob, mask, threshold, truth)


def f1(out: Path, truth: np.ndarray) -> float:
    """F1 of the written mask against the truth, scored by cdtool.metrics like every other score; nodata
    counts as unchanged, and a pair with nothing to find and nothing found scores 0 rather than NaN."""
    import rasterio

    from cdtool.metrics import BinaryMetrics

    mask_file = next(p for p in (out / "change_mask.tif", out / "change_mask.png") if p.exists())
    with rasterio.open(mask_file) as ds:
        pred = ds.read(1) if ds.count == 1 else ds.read(1) // 255
    score = BinaryMetrics().update(pred == 1, truth).compute()["f1"]
    return 0.0 if np.isnan(score) else score


def held_out_f1(card: dict, scene: str | None) -> float | None:
    """The F1 a model's card records for `scene` from its cross-validation (a fold model that left the scene
    out), or None when the model did not train on it."""
    per_scene = ((card or {}).get("scores") or {}).get("per_scene_f1") or {}
    return per_scene.get(scene) if scene else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: cdtool's default)")
    args = parser.parse_args()

    from cdtool.inference.detect import DetectOptions, detect
    from cdtool.io.change_mask import read_change_mask
    from cdtool.generated_pairs import write_pair

    jobs = []
    if (SHARED / "oscd" / "rennes").is_dir():
        city = SHARED / "oscd" / "rennes"
        truth = read_change_mask(city / "cm" / "rennes-cm.tif")[0]  # OSCD 1/2, read by cdtool's one mask rule
        jobs.append(("oscd_rennes", city / "imgs_1", city / "imgs_2", truth, None, "oscd/rennes"))
        name = "test_2_0000_0000.png"  # a 0.5 m PNG pair: no georeference, so its GSD is given
        truth = read_change_mask(SHARED / "levir" / "label" / name)[0]
        jobs.append(("levir_" + Path(name).stem, SHARED / "levir" / "A" / name, SHARED / "levir" / "B" / name,
                     truth, 0.5, "levir/" + Path(name).stem))
    else:
        print(f"{SHARED} not found: using a generated pair instead")
        before, after, truth_tif = write_pair(args.out / "generated_input", size=1024, seed=7)
        truth = read_change_mask(truth_tif)[0]
        jobs.append(("generated", before, after, truth, None, None))

    for name, before, after, truth, gsd, scene in jobs:
        out = args.out / name
        opts = DetectOptions(model=args.model, overwrite=True, progress=sys.stderr.isatty(), gsd=gsd)
        res = detect(before, after, out, opts)
        pv = preview(out, before, after, res.threshold, truth)
        print(f"{name}: model {res.model}, {res.width}x{res.height} px, threshold {res.threshold:.3f}, "
              f"{res.changed_share:.1%} flagged, {res.regions} regions, F1 vs truth {f1(out, truth):.3f}, "
              f"{res.seconds:.1f} s")
        held_out = held_out_f1(res.extra["model_choice"]["card"], scene)
        if held_out is not None:
            print(f"  this pair is in the model's training data, so that F1 flatters it; scored by the "
                  f"cross-validation model that never saw it: F1 {held_out:.3f}")
        print(f"  why this model: {res.extra['model_choice']['reason']}")
        print(f"  outputs in {out}/ (drag the change_prob, change_mask and changes.gpkg files into QGIS; preview: {pv}; "
              f"a page to send on: {out / 'report.html'})")
        same = detect(before, before, args.out / f"{name}_same", opts)
        print(f"  the same image as both dates: {same.changed_share:.2%} flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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


def preview(out: Path, truth: np.ndarray | None = None) -> Path:
    """A PNG a person can look at without QGIS: score map, mask, and the truth when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio

    prob_file = next(p for p in (out / "change_prob.tif", out / "change_prob.png") if p.exists())
    mask_file = next(p for p in (out / "change_mask.tif", out / "change_mask.png") if p.exists())
    with rasterio.open(prob_file) as ds:
        prob = ds.read(1).astype(float)
        prob = np.where(prob < 0, np.nan, prob) if ds.count == 1 else np.where(ds.read(2) == 0, np.nan, prob / 255)
    with rasterio.open(mask_file) as ds:
        mask = ds.read(1)
        mask = np.where(mask == 255, np.nan, mask) if ds.count == 1 else np.where(ds.read(2) == 0, np.nan, mask / 255)
    panels = [("change score", prob, "magma"), ("change mask", mask, "Reds")]
    if truth is not None:
        panels.append(("ground truth", truth.astype(float), "Reds"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5))
    for ax, (title, img, cmap) in zip(axes, panels):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    path = out / "preview.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: cdtool's default)")
    args = parser.parse_args()

    from PIL import Image

    from cdtool.inference.detect import DetectOptions, detect
    from cdtool.sample_pair import write_pair

    jobs = []
    if (SHARED / "oscd" / "rennes").is_dir():
        city = SHARED / "oscd" / "rennes"
        truth = np.array(Image.open(city / "cm" / "cm.png").convert("L")) > 0
        jobs.append(("oscd_rennes", city / "imgs_1", city / "imgs_2", truth, None))
        name = "test_2_0000_0000.png"  # a 0.5 m PNG pair: no georeference, so its GSD is given
        truth = np.array(Image.open(SHARED / "levir" / "label" / name).convert("L")) > 0
        jobs.append(("levir_" + Path(name).stem, SHARED / "levir" / "A" / name, SHARED / "levir" / "B" / name,
                     truth, 0.5))
    else:
        print(f"{SHARED} not found: using a generated pair instead")
        before, after, truth_tif = write_pair(args.out / "generated_input", size=1024, seed=7)
        import rasterio

        with rasterio.open(truth_tif) as ds:
            truth = ds.read(1) == 1
        jobs.append(("generated", before, after, truth, None))

    for name, before, after, truth, gsd in jobs:
        out = args.out / name
        opts = DetectOptions(model=args.model, overwrite=True, progress=sys.stderr.isatty(), gsd=gsd)
        res = detect(before, after, out, opts)
        pv = preview(out, truth)
        print(f"{name}: model {res.model}, {res.width}x{res.height} px, threshold {res.threshold:.3f}, "
              f"{res.changed_share:.1%} flagged, {res.regions} regions, F1 vs truth {f1(out, truth):.3f}, "
              f"{res.seconds:.1f} s")
        print(f"  why this model: {res.extra['model_choice']['reason']}")
        print(f"  outputs in {out}/ (open change_prob.tif / changes.gpkg in QGIS; preview: {pv})")
        same = detect(before, before, args.out / f"{name}_same", opts)
        print(f"  the same image as both dates: {same.changed_share:.2%} flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())

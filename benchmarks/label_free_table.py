"""Pooled F1 of the label-free detectors (cva, pca_kmeans, irmad) under each threshold method, on folders of
labelled pairs laid out as A/, B/, label/ (LEVIR-CD and DSIFN-CD samples in ../shared/data). Each pair is
standardised per date and band and fitted on itself (a whole-image fit); thresholds picked per image; one
confusion matrix pooled over the pairs of a data set; "everything flagged" is the F1 of calling every
pixel changed, the floor any detector must beat. Run from the repository root:

    python benchmarks/label_free_table.py ../shared/data/levir ../shared/data/dsifn [--min-change 0.3 0]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch

from cdtool.inference.threshold import METHODS, ScoreHistogram
from cdtool.models import create_model

MODELS = ("cva", "pca_kmeans", "irmad")


def read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as ds:
            return ds.read()


def standardise(x: np.ndarray) -> torch.Tensor:
    x = x.astype(np.float64)
    return torch.from_numpy((x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True).clip(1e-6)).float()


def pairs(root: Path):
    for a in sorted((root / "A").glob("*.png")):
        lab = root / "label" / a.name
        if lab.is_file():
            before, after = read(a)[:3], read(root / "B" / a.name)[:3]
            yield standardise(before), standardise(after), read(lab)[0] > 127


def f1_table(root: Path, min_changes: list[float]) -> list[tuple[str, dict[str, float]]]:
    data = list(pairs(root))
    changed = sum(int(t.sum()) for _, _, t in data) / sum(t.size for _, _, t in data)
    rows = [("everything flagged (reference)", dict.fromkeys(("default", *METHODS), 2 * changed / (1 + changed)))]
    for name in MODELS:
        for mc in [None] if name == "cva" else min_changes:
            model = create_model(name, **({} if mc is None else {"min_change": mc}))
            default = model.default_threshold
            counts = {k: np.zeros(3) for k in ("default", *METHODS)}  # tp, fp, fn
            for before, after, truth in data:
                if model.needs_fit:
                    model.fit([(before, after, torch.ones(truth.shape, dtype=torch.bool))])
                with torch.no_grad():
                    s = model(before[None], after[None])[0, 0].numpy()
                hist = ScoreHistogram()
                hist.add(s)
                for k in counts:
                    t = hist.pick(k) if k in METHODS else (hist.pick(default) if isinstance(default, str) else default)
                    pred = s >= t
                    counts[k] += [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]
            label = name if mc is None else f"{name} (min_change={mc:g})"
            rows.append((f"{label}, default {default}", {k: 2 * c[0] / max(2 * c[0] + c[1] + c[2], 1)
                                                         for k, c in counts.items()}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path)
    ap.add_argument("--min-change", type=float, nargs="+", default=[0.3])
    args = ap.parse_args()
    print("| data | model | default | " + " | ".join(METHODS) + " |")
    print("|---|---|---|" + "---|" * len(METHODS))
    for root in args.roots:
        n = sum(1 for a in (root / "A").glob("*.png") if (root / "label" / a.name).is_file())
        for label, f1 in f1_table(root, args.min_change):
            cells = " | ".join(f"{f1[k]:.3f}" for k in ("default", *METHODS))
            print(f"| {root.name} ({n} pairs) | {label} | {cells} |", flush=True)


if __name__ == "__main__":
    main()

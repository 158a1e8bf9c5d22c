"""Street-level pairs: does aligning AFTER onto BEFORE help, and which comparison copes best with what is left
(parallax, residual misregistration, local lighting)? Every run goes through `cdtool detect`.

Pairs: the real TSUNAMI panorama pair (../shared/data/streetview/tsunami_pcd, mask black = changed; ONE pair,
so its row is an anecdote, not a distribution) and synthetic pairs made from its BEFORE image by
`cdtool.data.street_synthetic` (seeded: a small homography, for panoramas also a circular shift, pasted
objects as the known changes, a lighting change): `pano` with --wrap, `photo` 512 px crops without.

Per (method, pair kind, alignment): F1 and AUROC against the mask on the pixels valid in the output, and the
share flagged with BEFORE given as both dates (should be 0). Run from the repository root:

    python benchmarks/street_table.py --seeds 0 1 2 [--methods cva cva:n5 local:r16 ...] [--md out.md]

Methods: a registered label-free model (`cva`: 3x3 RCVA, `pca_kmeans`, `irmad`), `cva:nK` (a K x K
neighbourhood), `NAME:rR` (AFTER first matched to BEFORE's local brightness and contrast in a (2R+1)² box:
cdtool.models.street; `local:rR[:nK]` is cva's), `default` (whatever detect picks with --scene street),
`LABEL=CHECKPOINT` (a trained model, e.g. `simsac=runs/simsac_street/best.safetensors` from
recipes/simsac_street.yaml, run with the threshold its recipe gave it). Any method may end in `:tX`, a fixed
threshold X for detect instead of the detector's own (e.g. `simsac=runs/simsac_street/best.safetensors:t0.5`,
to compare a tuned threshold with the paper's 0.5 on whole images).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdtool.data.street_synthetic import street_pair  # noqa: E402
from cdtool.inference.detect import DetectOptions, detect  # noqa: E402
from cdtool.metrics import exact_auroc  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "streetview" / "tsunami_pcd"
DEFAULT_METHODS = ["cva", "cva:n5", "cva:n7", "local:r32", "local:r64", "local:r128", "pca_kmeans", "irmad"]


def split_threshold(method: str) -> tuple[str, float | None]:
    """The method without a trailing `:tX`, and X (None without one): a fixed threshold for detect."""
    found = re.fullmatch(r"(.+):t(\d*\.?\d+)", method)
    return (found.group(1), float(found.group(2))) if found else (method, None)


def label(method: str) -> str:
    """A table row's name: a checkpoint's LABEL (with its `:tX`), or the method as written."""
    base, threshold = split_threshold(method)
    if "=" not in base:
        return method
    return base.split("=", 1)[0] + (method[len(base):] if threshold is not None else "")


def detector(method: str):
    """The detector a method name stands for: a registry name, or cva / locally matched cva with arguments."""
    from cdtool.domain import ModelCard
    from cdtool.inference.detector import Detector
    from cdtool.models.classical import ChangeVectorAnalysis
    from cdtool.models.registry import create_model
    from cdtool.models.street import LocallyMatched

    if method == "default":
        return None
    if "=" in method:
        return method.split("=", 1)[1]
    if ":" not in method:
        return method
    name, *args = method.split(":")
    parts = dict((p[0], int(p[1:])) for p in args)
    inner = ChangeVectorAnalysis(neighbourhood=parts.get("n", 3)) if name in ("cva", "local") else create_model(name)
    model = LocallyMatched(inner, parts["r"]) if "r" in parts else inner
    return Detector(method, model.eval(), {"mode": "per-image"}, model.default_threshold,
                    card=ModelCard(data="none: label-free"))


def pairs(folder: Path, seeds: list[int]) -> list[tuple[str, str, Path, Path, np.ndarray, bool]]:
    """(kind, name, before, after, changed mask, wrap) of the real pair and the synthetic ones, written to folder."""
    out = []
    if REAL.is_dir():
        changed = np.asarray(Image.open(REAL / "mask.jpg").convert("L")) < 128
        out.append(("real", "tsunami", REAL / "t0.jpg", REAL / "t1.jpg", changed, True))
    image = np.asarray(Image.open(REAL / "t0.jpg").convert("RGB"))
    for kind in ("pano", "photo"):
        for seed in seeds:
            p = street_pair(image, seed, panorama=kind == "pano")
            b, a = folder / f"{kind}{seed}_before.png", folder / f"{kind}{seed}_after.png"
            Image.fromarray(p.before).save(b)
            Image.fromarray(p.after).save(a)
            out.append((kind, f"{kind}{seed}", b, a, p.changed, kind == "pano"))
    return out


def run(before: Path, after: Path, out: Path, method: str, align: bool, wrap: bool) -> tuple[np.ndarray, ...]:
    """Score map, mask and validity of one detect run (PNG outputs: grey + alpha)."""
    method, threshold = split_threshold(method)
    opts = DetectOptions(model=detector(method), align=align, wrap=wrap, polygons=False, preview=False,
                         overwrite=True, scene="street", threshold=threshold)
    detect(before, after, out, opts)
    prob = np.asarray(Image.open(out / "change_prob.png"))
    mask = np.asarray(Image.open(out / "change_mask.png"))
    return prob[..., 0] / 255.0, mask[..., 0] > 0, mask[..., 1] > 0


def scores(prob, mask, valid, truth) -> dict:
    t, p = truth[valid], mask[valid]
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    return {"f1": 2 * tp / max(1, 2 * tp + fp + fn), "auroc": exact_auroc(prob[valid], t),
            "valid": float(valid.mean())}


def evaluate(method: str, cases, folder: Path) -> list[dict]:
    rows = []
    for kind, name, before, after, truth, wrap in cases:
        for align in (False, True):
            row = {"method": label(method), "kind": kind, "pair": name, "align": align}
            try:
                row |= scores(*run(before, after, folder / "o", method, align, wrap), truth)
                _, same, valid = run(before, before, folder / "o", method, align, wrap)
                row["same_flagged"] = float(same[valid].mean())
            except Exception as exc:  # a refused alignment is a result too
                row["error"] = " ".join(str(exc).split())[:160]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per method and alignment, F1 / AUROC per pair kind (mean over the synthetic seeds) and the
    largest share flagged on identical dates."""
    kinds = [k for k in ("real", "pano", "photo") if any(r["kind"] == k for r in rows)]
    head = "| method | align | " + " | ".join(f"{k} F1 / AUROC" for k in kinds) + " | identical dates |"
    lines = [head, "|" + "---|" * (3 + len(kinds))]
    for method in dict.fromkeys(r["method"] for r in rows):
        for align in (False, True):
            sel = [r for r in rows if r["method"] == method and r["align"] == align]
            cells = []
            for k in kinds:
                ok = [r for r in sel if r["kind"] == k and "f1" in r]
                cells.append(f"{np.mean([r['f1'] for r in ok]):.3f} / {np.mean([r['auroc'] for r in ok]):.3f}"
                             if ok and len(ok) == len([r for r in sel if r["kind"] == k]) else "refused")
            same = [r["same_flagged"] for r in sel if "same_flagged" in r]
            lines.append(f"| {method} | {'yes' if align else 'no'} | " + " | ".join(cells)
                         + (f" | {max(same):.2%} |" if same else " | – |"))
    return "\n".join(lines)


def reference(cases) -> str:
    """F1 of flagging every pixel, per pair kind: what an F1 must beat to mean anything (the real pair is 47 %
    changed, so flagging everything scores 0.64 there)."""
    parts = []
    for kind in dict.fromkeys(c[0] for c in cases):
        shares = [float(c[4].mean()) for c in cases if c[0] == kind]
        parts.append(f"{kind} {np.mean([2 * p / (1 + p) for p in shares]):.3f}")
    return "F1 of flagging every pixel: " + ", ".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--no-real", action="store_true", help="synthetic pairs only (e.g. held-out seeds)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="street-table-") as tmp:
        cases = [c for c in pairs(Path(tmp), args.seeds) if not (args.no_real and c[0] == "real")]
        rows = [r for m in args.methods for r in evaluate(m, cases, Path(tmp))]
    md = table(rows) + "\n\n" + reference(cases)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.md:
        args.md.write_text(md + "\n")


if __name__ == "__main__":
    main()

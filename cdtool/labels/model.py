"""From a pair and an analyst's labels to `fitted.safetensors`: an ordinary checkpoint of a pixel classifier
with a card (the pair, the labels file and its checksum, the polygon counts, the validation scores), which
`cdtool detect --model` then applies to this pair or to a neighbouring pair of the same sensor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdtool.errors import InputError
from cdtool.io.checksum import sha256
from cdtool.labels.fit import HeadSpec, fit_head, sample_features, sample_weights, scores, validate
from cdtool.labels.read import DEFAULT_FIELD, Grid, open_labels, sample_labels
from cdtool.models.pixel_classifier import PixelClassifier

FITTED = "fitted.safetensors"
BUDGET = 40_000  # labelled pixels kept for fitting: bounds memory and keeps a 50-polygon fit near a minute
MIN_GROUPS = 3  # fewer polygons of a class than this: the fit is shown with a warning
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
NORMALIZATION = {"mode": "per-image"}


@dataclass
class LabelOptions:
    field_name: str = DEFAULT_FIELD
    bands: list[int] | None = None
    align: bool = False
    gsd: float | None = None
    spec: HeadSpec = field(default_factory=HeadSpec)
    # a number, "validated" (best held-out F1) or a per-image method; 0.5 (the classes weigh the same) did as
    # well as Otsu and better than the validated one, which fits the few held-out polygons (labels_table.py)
    threshold: str | float = 0.5
    budget: int = BUDGET
    seed: int = 0
    progress: bool = False


@dataclass
class Fit:
    """What fitting gives: the checkpoint's tensors and metadata, and the record shown and kept in detect.json."""
    state: dict
    meta: dict
    record: dict


def pair_grid(pair) -> Grid:
    from cdtool.inference.detect import PIXEL_GRID

    info = pair.info
    return Grid(info.height, info.width, info.transform if info.georeferenced else PIXEL_GRID,
                info.crs if info.georeferenced else None)


def fit_pair(before, after, labels: str | Path, opts: LabelOptions | None = None) -> Fit:
    """Read the labels onto BEFORE's grid, fit the classifier on their pixels and validate it polygon by
    polygon; nothing is written."""
    from cdtool.inference.detect import input_domain
    from cdtool.io.pair import open_pair
    from cdtool.normalization import Normalizer

    opts = opts or LabelOptions()
    start = time.perf_counter()
    labels = Path(labels)
    with open_pair(before, after, bands=opts.bands, align=opts.align, offset="auto") as pair:
        source = open_labels(labels, pair_grid(pair), opts.field_name)
        sample = sample_labels(source, pair_grid(pair), opts.budget, opts.seed, opts.progress)
        bands = pair.info.count
        model = PixelClassifier(bands, opts.spec.hidden, opts.spec.scales)
        x, valid = sample_features(pair, Normalizer(NORMALIZATION, pair), model, sample, opts.progress)
        domain = input_domain(pair, opts.gsd)
        shape = pair.shape
    y, group = sample.label[valid], sample.group[valid]
    x = x[valid]
    present = {cls: len(np.unique(group[y == cls])) for cls in (0, 1)}
    if not present[0] or not present[1]:
        only = "changed (1)" if present[1] else "unchanged (0)"
        raise InputError(f"{labels}: every labelled pixel over the pair is {only}; draw polygons of both classes")
    state = fit_head(x, y, sample_weights(y, group), opts.spec, opts.seed)
    held, scheme = validate(x, y, group, opts.spec, bands, model.tau, opts.progress)
    threshold = _threshold(opts.threshold, held, y, group)
    chosen = threshold if isinstance(threshold, float) else 0.5
    record = {"labels": str(labels), "sha256": sha256(labels), "kind": sample.kind, "field": opts.field_name,
              "polygons": {"changed": present[1], "unchanged": present[0]},
              "labelled_pixels": {"changed": sample.pixels[1], "unchanged": sample.pixels[0]},
              "sampled_pixels": {"changed": int((y == 1).sum()), "unchanged": int((y == 0).sum())},
              "model": {"name": "pixel_classifier", "hidden": opts.spec.hidden, "scales": list(opts.spec.scales)},
              "threshold": threshold,
              "validation": {"scheme": scheme, **scores(held, y, group, chosen)},
              "warnings": warnings_for(present, sample, shape, labels), "notes": sample.notes,
              "seconds": round(time.perf_counter() - start, 2)}
    meta = _meta(before, after, labels, record, domain, opts)
    return Fit(state, meta, record)


def _threshold(rule: str | float, held: np.ndarray, y: np.ndarray, group: np.ndarray) -> float | str:
    """The mask threshold: a number given, a per-image method, or the one of best held-out F1."""
    if rule != "validated":
        return rule
    best = max(THRESHOLDS, key=lambda t: (scores(held, y, group, float(t))["f1"] or 0.0, -abs(t - 0.5)))
    return float(best)


def warnings_for(present: dict, sample, shape: tuple[int, int], labels: Path) -> list[str]:
    """Why the fit may not hold: a class with under MIN_GROUPS polygons, or labels in one corner of the pair."""
    out = []
    for cls, name in ((1, "changed"), (0, "unchanged")):
        if present[cls] < MIN_GROUPS:
            out.append(f"{labels}: only {present[cls]} {name} polygon(s); draw at least {MIN_GROUPS} for a fit "
                       "that holds beyond them")
    height, width = shape
    rows, cols = np.ptp(sample.rows) + 1, np.ptp(sample.cols) + 1
    if rows < height / 2 and cols < width / 2:
        out.append(f"{labels}: the polygons cover one corner only (rows {sample.rows.min()}-{sample.rows.max()}, "
                   f"columns {sample.cols.min()}-{sample.cols.max()} of {width}x{height}); the map elsewhere is "
                   "a guess: draw some there too")
    return out


def _meta(before, after, labels: Path, record: dict, domain, opts: LabelOptions) -> dict:
    spec = opts.spec
    card = {"layout": domain.layout, "band_count": domain.band_count, "band_names": list(domain.band_names),
            "value_range": "any (each date standardised per band over the image)",
            "gsd_m": [domain.gsd, domain.gsd] if domain.gsd else None,
            "change": f"as labelled in {labels.name}: {record['polygons']['changed']} changed and "
                      f"{record['polygons']['unchanged']} unchanged polygons",
            "data": f"one pair: {before} -> {after}; labels {labels} (sha256 {record['sha256']})",
            "recipe": "cdtool detect --labels (cdtool.labels)",
            "scores": {"validation": record["validation"]}}
    fit = {k: v for k, v in record.items() if k != "seconds"}  # the file is the same for the same inputs
    return {"model": {"name": "pixel_classifier",
                      "args": {"in_channels": domain.band_count, "hidden": spec.hidden, "scales": list(spec.scales)}},
            "normalization": NORMALIZATION, "threshold": record["threshold"], "bands": list(domain.band_names),
            "card": card, "fit": fit}


def save_fit(fit: Fit, out: str | Path, overwrite: bool = False, inputs: list[Path] = ()) -> Path:
    """Write `out/fitted.safetensors` atomically, refusing to replace one without `overwrite`."""
    from cdtool.io.checkpoint import save_checkpoint
    from cdtool.io.outputs import OutputSet

    with OutputSet(out, [FITTED], overwrite, list(inputs)) as outs:
        save_checkpoint(outs.path(FITTED), {"model": fit.state}, fit.meta)
        return outs.commit()[FITTED]


def fit_labels(before, after, labels: str | Path, out: str | Path, opts: LabelOptions | None = None,
               overwrite: bool = False) -> tuple[Path, dict]:
    """Fit on the labels and save `out/fitted.safetensors`; (its path, the fit's record)."""
    fit = fit_pair(before, after, labels, opts)
    path = save_fit(fit, out, overwrite, [Path(before), Path(after), Path(labels)])
    return path, fit.record


def fit_before_detect(before, after, labels: str | Path, out: str | Path, model: str | None, opts: LabelOptions,
                      overwrite: bool = False, resume: bool = False) -> tuple[str, dict]:
    """`detect --labels`: fit and save `out/fitted.safetensors`, and return it as the model detect runs, with the
    fit's record. Refused before any work where detect would refuse its outputs; `--resume` reuses a fitted model
    of the same labels file."""
    from cdtool.io.checkpoint import read_meta

    if model is not None:
        raise InputError(f"--labels fits its own model on {labels}; leave out --model {model} (apply a fitted "
                         "model to another pair with --model out/fitted.safetensors)")
    out, labels = Path(out), Path(labels)
    fitted = out / FITTED
    if resume and fitted.is_file():
        fit = (read_meta(fitted).model_extra or {}).get("fit") or {}
        if labels.is_file() and fit.get("sha256") == sha256(labels):
            return str(fitted), {**fit, "reused": True}
    existing = [n for n in (FITTED, "detect.json") if (out / n).exists()]
    if existing and not overwrite and not resume:
        raise InputError(f"{out}: already holds {', '.join(existing)} (use --overwrite to replace)")
    path, record = fit_labels(before, after, labels, out, opts, overwrite or resume)
    return str(path), record


def fit_lines(record: dict) -> list[str]:
    """What the user sees of a fit before trusting it: counts, held-out scores, the threshold."""
    v, p, px = record["validation"], record["polygons"], record["labelled_pixels"]
    held = ("no held-out score (a class has one polygon only)" if v.get("f1") is None else
            f"held-out accuracy {v['accuracy']:.3f}, F1 {v['f1']:.3f}; {v['polygons_right']} of "
            f"{v['polygons_scored']} polygons right")
    t = record["threshold"]
    return [f"labels {record['labels']}: {p['changed']} changed polygon(s) ({px['changed']:,} px), {p['unchanged']} "
            f"unchanged ({px['unchanged']:,} px)" + (" [fitted model reused]" if record.get("reused") else ""),
            f"fit ({v['scheme']}): {held}; threshold {t if isinstance(t, str) else format(t, '.2f')}"]

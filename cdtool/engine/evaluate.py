"""Scoring models and prediction files against ground truth (cdtool evaluate, and validation in training).

Models are run on whole labelled pairs exactly as detection runs them, through its plan and tiled runner
(the normalisation recorded with the model, its tile grid, GSD rescaling and blending), with the threshold
of the checkpoint (a number, or a per-image method such as "otsu" for the label-free detectors); chips and
training's validation crops, already window-sized, are scored in memory.

Prediction files are compared with their truth window by window, so memory stays bounded whatever their size
and the counts equal whole files'; a file that cannot be read so (blocks too large to decode, more pixels than
the limit, two sizes) is refused from its header before any pixel is read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
import torch
import torch.nn as nn

from cdtool.errors import InputError
from cdtool.inference.centre_patch import CentrePatch, as_dense
from cdtool.inference.predictor import predict_padded
from cdtool.inference.runner import Sink
from cdtool.inference.threshold import METHODS, ScoreHistogram
from cdtool.io.change_mask import (MAX_PIXELS, ChangeMask, NotAMask, check_readable, open_raster,
                                   windows)
from cdtool.io.writers import GDAL_ENV
from cdtool.metrics import BinaryMetrics
from cdtool.normalization import normalize_batch

HIST_BINS = 1024


def threshold_scores(scores: np.ndarray, threshold: float | str, valid: np.ndarray | None = None) -> np.ndarray:
    """`scores >= threshold`, where a method name (threshold.METHODS: "otsu", "kmeans", "gmm") picks the
    threshold from the histogram of this map's valid scores, as detection does per image."""
    if isinstance(threshold, str):
        hist = ScoreHistogram(HIST_BINS)
        hist.add(scores if valid is None else scores[valid])
        threshold = hist.pick(threshold)
    return scores >= float(threshold)


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, normalization: dict, device: torch.device,
                    threshold: float | str, amp: bool = False) -> BinaryMetrics:
    """Run `model` on every sample of `loader` (window-sized crops or chips held in memory: training's
    validation, `cdtool tile`'s output) and accumulate one confusion matrix and the score histograms; a
    method threshold is picked per sample. Whole pairs go through detection's runner (`evaluate_model`)."""
    model.eval()
    acc = BinaryMetrics(bins=HIST_BINS)
    for batch in loader:
        before, after = normalize_batch(batch["image"].to(device), normalization,
                                        batch.get("mean"), batch.get("std"))
        truth = batch["mask"].numpy()[:, 0] > 0.5
        valid = batch["valid"].numpy()[:, 0] if "valid" in batch else np.ones_like(truth)
        if model.needs_fit:  # label-free models fitted per pair, as detect does
            scores = np.concatenate([_fit_predict(model, before[i:i + 1], after[i:i + 1], valid[i], amp)
                                     for i in range(len(before))])
        else:
            scores = predict_padded(model, before, after, amp).cpu().numpy()[:, 0]
        for s, t, v in zip(scores, truth, valid):
            acc.update(threshold_scores(s, threshold, v), t, v, s)
    return acc


def _fit_predict(model: nn.Module, before: torch.Tensor, after: torch.Tensor, valid: np.ndarray,
                 amp: bool) -> np.ndarray:
    model.fit([(before[0], after[0], torch.from_numpy(np.asarray(valid, bool)).to(before.device))])
    return predict_padded(model, before, after, amp).cpu().numpy()[:, 0]


@torch.no_grad()
def evaluate_labels(model: nn.Module, loader, normalization: dict, device: torch.device,
                    threshold: float, amp: bool = False) -> BinaryMetrics:
    """Patch pairs labelled by their centre (PCD-style, MNIST): each pair's score is the model's score at
    the centre pixel, compared with the label; unlabelled samples (label < 0) are skipped."""
    model = as_dense(model, "centre").eval()  # training validates the bare net: a patch-only one is wrapped here
    acc = BinaryMetrics(bins=HIST_BINS, exact=True)  # one score per pair: the exact AUROC
    for batch in loader:
        before, after = normalize_batch(batch["image"].to(device), normalization, batch.get("mean"), batch.get("std"))
        if isinstance(model, CentrePatch) and before.shape[-2:] == (model.patch, model.patch):  # the pair's own score
            score = model.score_windows(torch.cat([before, after], 1), before.shape[1]).float().cpu().numpy()
        else:  # a dense map of the pair: its centre pixel
            y = predict_padded(model, before, after, amp)
            h, w = y.shape[-2:]
            score = y[:, 0, h // 2, w // 2].cpu().numpy()
        label = batch["label"].numpy()
        keep = label >= 0
        acc.update(score[keep] >= float(threshold), label[keep] > 0, None, score[keep])
    return acc


def evaluate_chips(spec: str, roots: list[str], split: str | None = "test", threshold: float | str | None = None,
                   device: str | None = None) -> dict:
    """Score a model on what `cdtool tile` / `cdtool patches` wrote: labelled samples (PCD-style, MNIST) by
    their labels and the model's score at each pair's centre, whatever the model; others by change masks.
    Otsu's threshold, for labels, is taken over all centre scores together."""
    from torch.utils.data import DataLoader

    from cdtool.data.registry import build_dataset
    from cdtool.inference.detector import load_detector, pick_device

    data = build_dataset("chips", root=list(roots), split=split)
    if len(data) == 0:
        raise InputError(f"{', '.join(roots)}: no samples in split {split!r}")
    first = data[0]
    det = load_detector(spec, int(first["image"].shape[1]))
    thr = det.threshold if threshold is None else threshold
    dev = pick_device(device)
    model = det.model.to(dev)
    if "label" in first:
        acc = evaluate_labels(model, DataLoader(data, batch_size=64), det.normalization, dev,
                              0.5 if thr in METHODS else float(thr))
        if thr in METHODS:
            acc = acc.at_threshold(ScoreHistogram.from_counts(acc.pos_hist + acc.neg_hist).pick(thr))
    elif "mask" in first:
        acc = evaluate_loader(model, DataLoader(data, batch_size=1), det.normalization, dev, thr)
    else:
        raise InputError(f"{', '.join(roots)}: samples have neither labels nor change masks to score against")
    return acc.compute()


EVAL_PIXELS = 1 << 18  # pixels per window of evaluate: its float64 scores and their temporaries take about 30 MB


class ScoreMap:
    """A prediction file that is no mask, read window by window as scores in [0, 1] or as 8-bit grey levels
    (scores × 255, as `cdtool detect` writes change_prob.png). Which of the two is decided from all its values,
    and a threshold method (otsu, ...) from the histogram of all its scores: each in a first pass over windows."""

    def __init__(self, path: Path, threshold: float | str | None):
        self.path, self.ds = path, open_raster(path)
        try:
            self.scale = self._scale()
            if threshold is None:  # the threshold detect wrote into its score map, else 0.5
                threshold = _tagged_threshold(self.ds)
            self.threshold = self._pick(threshold) if isinstance(threshold, str) else float(threshold)
        except BaseException:
            self.ds.close()
            raise

    def _values(self, window: Window) -> np.ndarray:
        return np.ma.filled(self.ds.read(1, window=window, masked=True).astype(np.float64), np.nan)

    def _scale(self) -> float:
        lo, hi, whole = np.inf, -np.inf, True
        for w in windows(self.ds, EVAL_PIXELS):
            v = self._values(w)
            v = v[np.isfinite(v)]
            if v.size:
                lo, hi, whole = min(lo, v.min()), max(hi, v.max()), whole and np.array_equal(v, np.round(v))
        if hi > 1.0 or lo < 0.0:
            if lo < 0.0 or hi > 255 or not whole:
                raise InputError(f"{self.path}: values from {lo:g} to {hi:g} are neither scores in [0, 1], 8-bit "
                                 "grey levels nor a change mask (0/1, 0/255, 0/1/2[/255], OSCD 1/2)")
            return 255.0
        return 1.0

    def _pick(self, method: str) -> float:
        hist = ScoreHistogram(HIST_BINS)
        for w in windows(self.ds, EVAL_PIXELS):
            scores, valid = self.scores(w)
            hist.add(scores[valid])
        return hist.pick(method)

    def scores(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(scores, NaN and nodata as 0; valid) of a window."""
        a = self._values(window)
        if self.scale != 1.0:
            a = a / self.scale
        return np.nan_to_num(a), np.isfinite(a)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(changed, scores) of a window."""
        s = self.scores(window)[0]
        return s >= self.threshold, s

    def close(self) -> None:
        self.ds.close()


def _tagged_threshold(ds) -> float:
    try:
        value = float(ds.tags().get("threshold", "nan"))
    except ValueError:
        value = float("nan")
    return value if 0.0 <= value <= 1.0 else 0.5


def open_prediction(path: Path, threshold: float | str | None) -> ChangeMask | ScoreMap:
    """The prediction, read by the mask rule where its values fit one, else as scores."""
    try:
        return ChangeMask(path)
    except NotAMask:
        return ScoreMap(path, threshold)


def pair_files(pred: Path, truth: Path) -> list[tuple[Path, Path]]:
    """Match prediction and truth files: two files, or two folders matched by file stem."""
    if pred.is_file() and truth.is_file():
        return [(pred, truth)]
    if pred.is_dir() and truth.is_dir():
        truths = {p.stem: p for p in sorted(truth.iterdir()) if p.is_file() and not p.name.startswith(".")}
        out = [(p, truths[p.stem]) for p in sorted(pred.iterdir()) if p.stem in truths]
        if not out:
            raise InputError(f"{pred} and {truth}: no file names in common")
        return out
    for p in (pred, truth):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
    raise InputError("PRED and TRUTH must both be files or both be folders")


def evaluate_files(pred: Path, truth: Path, threshold: float | str | None = None,
                   max_pixels: int | None = MAX_PIXELS) -> tuple[dict, list[dict]]:
    """Score prediction files against truth masks, both read by the one mask rule; where the truth holds
    nodata nothing is scored (a prediction's own nodata counts as unchanged). Read in windows, so memory stays
    bounded whatever the files' size; the counts are those of whole files. A score file is cut at `threshold`,
    else at the threshold detect tagged it with, else 0.5. A truth on another grid is placed on the
    prediction's (see `TruthPlacement`)."""
    acc = BinaryMetrics(bins=HIST_BINS)
    rows = []
    for p, t in pair_files(Path(pred), Path(truth)):
        one = BinaryMetrics(bins=HIST_BINS)
        with rasterio.Env(**GDAL_ENV):  # detect's block cache: GDAL's default (5 % of RAM) filled with the files
            for pm, tm, tv, scores in scored_windows(p, t, threshold, max_pixels):
                acc.update(pm, tm, tv, scores)
                one.update(pm, tm, tv, scores)
        rows.append({"name": p.name, **one.compute()})
    return acc.compute(), rows


def check_pair(pred: Path, truth: Path, max_pixels: int | None) -> None:
    """From the headers, before any pixel is read: each file readable in bounded memory and within
    `max_pixels`."""
    for path in (truth, pred):
        with open_raster(path) as ds:
            check_readable(ds, path, max_pixels)


class TruthPlacement:
    """Where the prediction's windows lie on the truth's grid. Same size and grid: the same windows. Otherwise
    both are placed by their georeference: the truth's own, or, for a truth without one (OSCD's masks lie on
    BEFORE's grid), that of the BEFORE named in the detect.json beside the prediction (an `--align` run covers
    only the common extent of the dates, a window of BEFORE's grid). A whole-pixel offset on one grid reads the
    truth shifted; another grid or CRS warps the truth onto the prediction's (nearest)."""

    def __init__(self, pred: Path, truth: Path):
        self.offset, self.warped = (0, 0), None
        with open_raster(pred) as p, open_raster(truth) as t:
            same = (p.height, p.width) == (t.height, t.width)
            p_geo, t_geo = _georef(p), _georef(t) or _before_grid(pred, t)
            if same and (p_geo is None or t_geo is None or _same_grid(p_geo, t_geo)):
                return
            if p_geo is None or t_geo is None:
                raise InputError(f"{pred}: is {p.width}x{p.height} but {truth} is {t.width}x{t.height}, and without "
                                 "a georeference (or a detect.json naming BEFORE beside the prediction) the two "
                                 "cannot be placed on one grid")
            self.offset = _whole_pixel_offset(p_geo, t_geo)
            if self.offset is None:
                self.offset, self.warped = (0, 0), (truth, p_geo, t_geo)

    def open_truth(self, truth: Path):
        """The truth mask to read with the prediction's windows (shifted by `offset`)."""
        if self.warped is None:
            return ChangeMask(truth)
        from rasterio.vrt import WarpedVRT

        _, (crs, transform, height, width), (t_crs, t_transform, _, _) = self.warped
        return ChangeMask(truth, opener=lambda ds: WarpedVRT(ds, src_crs=t_crs, src_transform=t_transform,
                                                             crs=crs, transform=transform, width=width,
                                                             height=height, resampling=Resampling.nearest,
                                                             add_alpha=True))  # outside the truth: nodata

    def window(self, w: Window) -> Window:
        return Window(w.col_off + self.offset[1], w.row_off + self.offset[0], w.width, w.height)


def _georef(ds) -> tuple | None:
    return (ds.crs, ds.transform, ds.height, ds.width) if ds.crs is not None and not ds.transform.is_identity \
        else None


def _before_grid(pred: Path, truth_ds) -> tuple | None:
    """BEFORE's grid from the detect.json beside `pred`, when the truth has BEFORE's size."""
    summary = pred.parent / "detect.json"
    try:
        before = json.loads(summary.read_text())["before"]
        with open_raster(before) as b:
            grid = _georef(b)
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None
    return grid if grid is not None and grid[2:] == (truth_ds.height, truth_ds.width) else None


def _same_grid(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1].almost_equals(b[1]) and a[2:] == b[2:]


def _whole_pixel_offset(pred: tuple, truth: tuple) -> tuple[int, int] | None:
    """(row, col) of the prediction's origin on the truth's grid when both share CRS, pixel size and pixel
    edges; None otherwise."""
    (p_crs, pt, ph, pw), (t_crs, tt, th, tw) = pred, truth
    if p_crs != t_crs or not (math.isclose(pt.a, tt.a, rel_tol=1e-9) and math.isclose(pt.e, tt.e, rel_tol=1e-9)) \
            or pt.b or pt.d or tt.b or tt.d:
        return None
    col, row = ~tt * (pt.c, pt.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    row, col = int(round(row)), int(round(col))
    if row < 0 or col < 0 or row + ph > th or col + pw > tw:
        return None
    return row, col


def scored_windows(pred: Path, truth: Path, threshold: float | str | None, max_pixels: int | None):
    """(prediction, truth changed, truth valid, scores or None) window by window over a pair of files."""
    check_pair(pred, truth, max_pixels)
    placement = TruthPlacement(pred, truth)
    with placement.open_truth(truth) as t:
        p = open_prediction(pred, threshold)
        try:
            for w in windows(p.ds, EVAL_PIXELS):
                pm, scores = (p.read(w)[0], None) if isinstance(p, ChangeMask) else p.read(w)
                yield (pm, *t.read(placement.window(w)), scores)
        finally:
            p.close()


def seen_pairs(spec: str, roots: list[str], present: list[str] | None = None) -> list[str]:
    """The pairs of `roots` (their names: `present`, when already listed) a checkpoint was trained or validated
    on, as its metadata records them; read from the file's header, no model is built."""
    from cdtool.data.pair_folder import pair_names
    from cdtool.io.checkpoint import read_meta
    from cdtool.inference.detector import checkpoint_path

    path = checkpoint_path(spec)
    meta = read_meta(path) if path is not None else None
    recorded = set(meta.train_pairs) | set(meta.val_pairs) if meta is not None else set()
    if not recorded:
        return []
    if present is None:
        present = pair_names(roots)
    return sorted(recorded & set(present))


def evaluate_model(spec: str | None, roots: list[str], pairs: list[str] | None = None,
                   exclude: list[str] | None = None, threshold: float | str | None = None,
                   device: str | None = None) -> tuple[dict, list[dict]]:
    """Run a checkpoint or registered model on labelled pairs as `cdtool detect` runs it (its pair opening and
    band choice, tile grid, GSD rescaling and blending, through the one runner), so memory is bounded by the
    window; pooled scores and one row per pair."""
    from cdtool.data.pair_folder import discover, pair_names, select
    from cdtool.inference.detector import load_detector, pick_device

    if pairs is None and exclude is None and spec is not None:  # score held-out pairs unless told otherwise
        present = pair_names(roots)
        exclude = seen_pairs(spec, roots, present) or None
        if exclude and len(exclude) == len(present):
            raise InputError(f"{', '.join(roots)}: the model was trained or validated on every pair here; "
                             "name pairs with --pairs to score them anyway")
    records = select([r for root in roots for r in discover(root)], pairs, exclude)
    detector = load_detector(spec) if spec is not None else None  # None: detection's default, chosen per pair
    dev = pick_device(device)
    acc = BinaryMetrics(bins=HIST_BINS)
    rows = []
    for rec in records:
        rows.append({"name": rec.name, **_evaluate_pair(rec, detector, threshold, dev, acc).compute()})
    return acc.compute(), rows


def _evaluate_pair(rec, detector, threshold: float | str | None, device: torch.device,
                   pooled: BinaryMetrics) -> BinaryMetrics:
    """One labelled pair through detection's plan and runner: its scores staged in a scratch journal while
    the histogram of those where the truth is valid gathers (a method threshold is picked from it), then
    read back band by band and counted against the truth, into the pair's metrics and `pooled`."""
    import tempfile

    from cdtool.inference.detect import DetectOptions, check_bands, open_and_choose
    from cdtool.inference.journal import Journal
    from cdtool.inference.runner import RunOptions, plan_scoring, run

    opts = DetectOptions(model=detector, align=rec.align)
    with rasterio.Env(**GDAL_ENV), tempfile.TemporaryDirectory(prefix="cdtool-evaluate-") as scratch:
        pair, _, choice, opts = open_and_choose(rec.before, rec.after, opts)
        with pair, ChangeMask(rec.label) as truth:
            check_bands(pair, choice.detector)
            origin = _check_truth(truth, rec.label, pair)
            plan = plan_scoring(pair, choice, device, opts)
            journal = Journal(Path(scratch), {}, resume=False)
            scores = _TruthHistogram(truth, origin)
            run(pair, plan, [_Staged(journal), scores], RunOptions(desc="evaluate"))
            method = choice.detector.threshold if threshold is None else threshold
            cut = scores.histogram.pick(method) if isinstance(method, str) else float(method)
            one = BinaryMetrics(bins=HIST_BINS)
            for band in journal.replay():
                changed, valid = _truth_rows(truth, origin, band)
                for metrics in (one, pooled):
                    metrics.update(band.score >= cut, changed, band.valid & valid, band.score)
    return one


def _check_truth(truth: ChangeMask, path: Path, pair) -> tuple[int, int]:
    """The pair's origin on the truth's grid (the mask lies on BEFORE's grid; an aligned pair may be a window
    of it), once the mask is known to cover the pair."""
    (h, w), (r0, c0) = pair.shape, pair.origin
    th, tw = truth.shape
    if (min(th, r0 + h) - r0, min(tw, c0 + w) - c0) != (h, w):
        raise InputError(f"{path}: mask is {tw}x{th} but the pair is {w}x{h}")
    return r0, c0


def _truth_rows(truth: ChangeMask, origin: tuple[int, int], band) -> tuple[np.ndarray, np.ndarray]:
    """(changed, valid) of the truth under a row band."""
    h, w = band.valid.shape
    return truth.read(Window(origin[1], origin[0] + band.row, w, h))


class _Staged(Sink):
    """Scores into a scratch journal, to be read back once the threshold is known."""

    def __init__(self, journal):
        self.journal = journal

    def add(self, band) -> None:
        self.journal.save(band)

    def close(self) -> None:
        self.journal.close()

    def abort(self) -> None:
        self.journal.close()


class _TruthHistogram(Sink):
    """The histogram of the scores where both the pair and the truth are valid."""

    def __init__(self, truth: ChangeMask, origin: tuple[int, int]):
        self.truth, self.origin, self.histogram = truth, origin, ScoreHistogram(HIST_BINS)

    def add(self, band) -> None:
        valid = band.valid & _truth_rows(self.truth, self.origin, band)[1]
        self.histogram.add(band.score[valid])

"""Binary change-detection scores, accumulated over many images so that a test set is scored as one
confusion matrix (pixel-weighted, as the change-detection literature reports them), not as a mean of
per-image scores that small, nearly empty tiles would dominate.

Counts are kept in float64 (exact up to 2**53 pixels). For dense maps (millions of scores) AUROC comes from
a fixed 1024-bin histogram of the scores of each class: streaming, bounded memory, and within 1e-3 of the
exact value for scores in [0, 1]. Per-sample scoring (one score per patch or image, thousands of them)
keeps the scores (`exact=True`) and gives the exact rank-based AUROC, as papers report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NAMES = ("precision", "recall", "f1", "iou", "miou", "oa", "kappa", "auroc")


@dataclass
class BinaryMetrics:
    """Accumulates a confusion matrix (and score histograms for AUROC) over calls to `update`."""

    bins: int = 1024
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    tn: float = 0.0
    pos_hist: np.ndarray = field(default=None)  # type: ignore[assignment]
    neg_hist: np.ndarray = field(default=None)  # type: ignore[assignment]
    exact: bool = False  # keep every score for the exact AUROC (per-sample scoring; not for dense maps)

    def __post_init__(self) -> None:
        self.pos_hist = np.zeros(self.bins, np.float64)
        self.neg_hist = np.zeros(self.bins, np.float64)
        self.has_scores = False
        self.kept: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None,
               scores: np.ndarray | None = None) -> "BinaryMetrics":
        """pred, truth: boolean (or 0/1) arrays of one shape; valid: where to count; scores: in [0, 1]."""
        pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
        v = np.ones(pred.shape, bool) if valid is None else np.asarray(valid, bool)
        p, t = pred[v], truth[v]
        self.tp += float(np.count_nonzero(p & t))
        self.fp += float(np.count_nonzero(p & ~t))
        self.fn += float(np.count_nonzero(~p & t))
        self.tn += float(np.count_nonzero(~p & ~t))
        if scores is not None:
            raw = np.asarray(scores, np.float64)[v]
            if self.exact:
                self.kept.append((raw.copy(), t.copy()))
            s = np.clip(np.nan_to_num(raw), 0.0, 1.0)
            idx = np.minimum((s * self.bins).astype(np.int64), self.bins - 1)
            self.pos_hist += np.bincount(idx[t], minlength=self.bins)
            self.neg_hist += np.bincount(idx[~t], minlength=self.bins)
            self.has_scores = True
        return self

    def compute(self) -> dict[str, float]:
        """All scores of the change class (and mIoU over both classes); NaN where undefined."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        n = tp + fp + fn + tn
        precision = _div(tp, tp + fp)
        recall = _div(tp, tp + fn)
        f1 = _div(2 * tp, 2 * tp + fp + fn)
        iou = _div(tp, tp + fp + fn)
        iou_bg = _div(tn, tn + fp + fn)
        oa = _div(tp + tn, n)
        pe = _div((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn), n * n)
        kappa = _div(oa - pe, 1.0 - pe) if n else float("nan")
        out = {"precision": precision, "recall": recall, "f1": f1, "iou": iou,
               "miou": float(np.nanmean([iou, iou_bg])) if not (np.isnan(iou) and np.isnan(iou_bg)) else float("nan"),
               "oa": oa, "kappa": kappa, "auroc": self.auroc() if self.has_scores else float("nan")}
        return out

    def at_threshold(self, threshold: float) -> "BinaryMetrics":
        """The confusion matrix of `score >= threshold` read off the histograms (exact at bin edges), so a
        validation pass scores any threshold without running the model again."""
        k = min(max(int(round(threshold * self.bins)), 0), self.bins)
        out = BinaryMetrics(bins=self.bins, exact=self.exact)
        out.kept = self.kept
        out.tp, out.fn = float(self.pos_hist[k:].sum()), float(self.pos_hist[:k].sum())
        out.fp, out.tn = float(self.neg_hist[k:].sum()), float(self.neg_hist[:k].sum())
        out.pos_hist, out.neg_hist, out.has_scores = self.pos_hist.copy(), self.neg_hist.copy(), self.has_scores
        return out

    def auroc(self) -> float:
        """Area under the ROC curve: exact when the scores were kept, else from the histograms (ties within
        a bin count one half)."""
        if self.exact:
            return exact_auroc(np.concatenate([s for s, _ in self.kept]), np.concatenate([t for _, t in self.kept]))
        pos, neg = self.pos_hist.sum(), self.neg_hist.sum()
        if pos == 0 or neg == 0:
            return float("nan")
        # P(score_pos > score_neg) + 0.5 P(equal bin), sweeping bins from high to low.
        neg_below = np.cumsum(self.neg_hist) - self.neg_hist
        return float((self.pos_hist * (neg_below + 0.5 * self.neg_hist)).sum() / (pos * neg))


def exact_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-based AUROC (Mann-Whitney U with average ranks for ties): P(positive > negative) + ½ P(tie), for
    scores of any range; NaN when a class is missing."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    average = (starts + ends + 1) / 2.0  # 1-based ranks, averaged over each run of ties
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def best_threshold(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float, float]:
    """The score threshold (a bin edge) with the highest F1 of the change class, and that F1: how metric
    models turn a distance score into a mask without hand-tuning, chosen on validation data only."""
    bins = len(pos_hist)
    # predicted positive = score >= edge k / bins; count from the top bin down.
    tp = np.cumsum(pos_hist[::-1])[::-1]
    fp = np.cumsum(neg_hist[::-1])[::-1]
    fn = pos_hist.sum() - tp
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    k = int(np.argmax(f1))
    return k / bins, float(f1[k])


def tuned_threshold(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """`best_threshold`'s edge for a model to ship with, never 0: a threshold of 0 flags every pixel of every
    pair, identical dates included, which is what the best F1 picks when nothing beats flagging everything on
    the validation pairs. The first bin edge at least."""
    return max(best_threshold(pos_hist, neg_hist)[0], 1 / len(pos_hist))


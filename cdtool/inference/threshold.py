"""Per-image thresholds for turning a change-score map into a mask, all read off one streamed histogram.

Three classical two-class splits of the score distribution, for label-free use where no threshold was
learned: Otsu's between-class variance maximum (Otsu 1979, IEEE SMC 9(1)); the iterative two-means /
isodata cut (Ridler & Calvard 1978, IEEE SMC 8(8)), halfway between the two class means; and the Bayes cut of
a two-component Gaussian mixture fitted by EM (as in Bazi, Bruzzone & Melgani 2005, IEEE TGRS 43(4)), where
the two posteriors are equal. Each returns 0.5 on a degenerate histogram (fewer than two non-empty bins),
where there is nothing to split.
"""

from __future__ import annotations

import numpy as np

METHODS = ("otsu", "kmeans", "gmm")


class ScoreHistogram:
    """Histogram of scores in [0, 1], filled band by band so a per-image threshold needs no full copy."""

    CHUNK = 1 << 20

    def __init__(self, bins: int = 1024):
        self.edges = np.linspace(0.0, 1.0, bins + 1)
        self.counts = np.zeros(bins, np.int64)
        self._moments = np.zeros(2)  # sum and sum of squares of the exact scores added
        self._range = (np.inf, -np.inf)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> "ScoreHistogram":
        """A histogram already counted on equal bins over [0, 1] (e.g. BinaryMetrics' score histograms)."""
        h = cls(len(counts))
        h.counts = np.asarray(counts).copy()
        return h

    def add(self, scores: np.ndarray) -> None:
        """Count `scores` (any shape); in chunks, so the float64 moments never copy a whole band of a wide raster."""
        flat = scores.reshape(-1)
        bins = len(self.counts)
        for i in range(0, flat.size, self.CHUNK):
            s = flat[i:i + self.CHUNK]
            # the bin of a score is floor(score * bins), counted with bincount: cheaper than np.histogram's
            # arithmetic path (and exactly its counts when bins is a power of two, as by default, since the
            # product is then exact); an array of edges would sort every chunk
            index = np.clip(s, 0.0, 1.0).astype(np.float32, copy=False)
            index *= bins
            index = index.astype(np.int32)
            np.minimum(index, bins - 1, out=index)
            self.counts += np.bincount(index, minlength=bins)
            wide = s.astype(np.float64)
            self._moments += (wide.sum(), np.dot(wide, wide))
            self._range = (min(self._range[0], float(s.min())), max(self._range[1], float(s.max())))

    def statistics(self) -> dict:
        """GDAL's band statistics of the scores added (exact, not binned), for embedding in the GeoTIFF."""
        n = self.total
        if not n or not np.isfinite(self._range[0]):
            return {}
        mean = self._moments[0] / n
        return {"STATISTICS_MINIMUM": self._range[0], "STATISTICS_MAXIMUM": self._range[1],
                "STATISTICS_MEAN": mean, "STATISTICS_STDDEV": float(np.sqrt(max(self._moments[1] / n - mean ** 2, 0)))}

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def pick(self, method: str) -> float:
        """The threshold of `method`, one of METHODS."""
        if method not in METHODS:
            raise ValueError(f"threshold method must be one of {', '.join(METHODS)}, got {method!r}")
        return float(getattr(self, method)())

    def _split(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(bin centres, probabilities), or None when the histogram is degenerate."""
        p = self.counts.astype(np.float64)
        if np.count_nonzero(p) < 2:
            return None
        return 0.5 * (self.edges[:-1] + self.edges[1:]), p / p.sum()

    def otsu(self) -> float:
        """The cut maximising between-class variance (Otsu 1979); 0.5 when the histogram is degenerate."""
        split = self._split()
        if split is None:
            return 0.5
        centres, p = split
        w0 = np.cumsum(p)
        mu = np.cumsum(p * centres)
        mu_t = mu[-1]
        w1 = 1.0 - w0
        with np.errstate(divide="ignore", invalid="ignore"):
            between = (mu_t * w0 - mu) ** 2 / (w0 * w1)
        between[~np.isfinite(between)] = -1.0
        k = int(np.argmax(between[:-1]))
        return float(self.edges[k + 1])

    def kmeans(self, max_iter: int = 100) -> float:
        """Two-means (isodata) cut: halfway between the means of the scores below and above it, iterated
        from the overall mean to a fixed point; 0.5 when the histogram is degenerate."""
        split = self._split()
        if split is None:
            return 0.5
        centres, p = split
        t = float((p * centres).sum())
        for _ in range(max_iter):
            low = centres < t
            w_low, w_high = p[low].sum(), p[~low].sum()
            if w_low == 0 or w_high == 0:
                break
            new = 0.5 * ((p[low] * centres[low]).sum() / w_low + (p[~low] * centres[~low]).sum() / w_high)
            if abs(new - t) < 1e-9:
                break
            t = float(new)
        return t

    def gmm(self, max_iter: int = 200) -> float:
        """Bayes cut of a two-Gaussian mixture fitted by EM on the histogram, started from Otsu's split: the
        first score from the lower mean up where the upper component is at least as probable (clipped to the
        upper mean); 0.5 when the histogram is degenerate."""
        split = self._split()
        if split is None:
            return 0.5
        x, p = split
        floor = (self.edges[1] - self.edges[0]) ** 2  # variance floor: one bin, so no component collapses
        hi = x >= self.otsu()
        resp = np.stack([~hi, hi]).astype(np.float64)  # (2, bins) responsibilities
        prev = -np.inf
        for _ in range(max_iter):
            w = resp * p  # M step
            pi = w.sum(1)
            if (pi <= 0).any():
                break
            mu = (w * x).sum(1) / pi
            var = np.maximum((w * (x - mu[:, None]) ** 2).sum(1) / pi, floor)
            log_joint = _log_joint(x, pi, mu, var)  # E step
            top = log_joint.max(0)
            ll = float((p * (top + np.log(np.exp(log_joint - top).sum(0)))).sum())
            resp = np.exp(log_joint - top)
            resp /= resp.sum(0)
            if ll - prev < 1e-10:
                break
            prev = ll
        lo, up = np.argsort(mu)
        grid = np.linspace(mu[lo], mu[up], 1025)
        lj = _log_joint(grid, pi, mu, var)
        above = np.flatnonzero(lj[up] >= lj[lo])
        return float(grid[above[0]] if above.size else mu[up])


def _log_joint(x: np.ndarray, pi: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """log(pi_k N(x; mu_k, var_k)) for each component k: (2, len(x))."""
    return (np.log(pi)[:, None] - 0.5 * np.log(2 * np.pi * var)[:, None]
            - 0.5 * (x[None] - mu[:, None]) ** 2 / var[:, None])

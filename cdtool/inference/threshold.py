"""Thresholds for turning a change-score map into a mask; Otsu's from a streamed histogram."""

from __future__ import annotations

import numpy as np


class ScoreHistogram:
    """Histogram of scores in [0, 1], filled band by band so a per-image threshold needs no full copy."""

    def __init__(self, bins: int = 1024):
        self.edges = np.linspace(0.0, 1.0, bins + 1)
        self.counts = np.zeros(bins, np.int64)

    def add(self, scores: np.ndarray) -> None:
        self.counts += np.histogram(np.clip(scores, 0.0, 1.0), bins=self.edges)[0]

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def otsu(self) -> float:
        """The cut maximising between-class variance (Otsu 1979); 0.5 when the histogram is degenerate."""
        p = self.counts.astype(np.float64)
        if p.sum() == 0 or np.count_nonzero(p) < 2:
            return 0.5
        p /= p.sum()
        centres = 0.5 * (self.edges[:-1] + self.edges[1:])
        w0 = np.cumsum(p)
        mu = np.cumsum(p * centres)
        mu_t = mu[-1]
        w1 = 1.0 - w0
        with np.errstate(divide="ignore", invalid="ignore"):
            between = (mu_t * w0 - mu) ** 2 / (w0 * w1)
        between[~np.isfinite(between)] = -1.0
        k = int(np.argmax(between[:-1]))
        return float(self.edges[k + 1])

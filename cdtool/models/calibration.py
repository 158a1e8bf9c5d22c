"""Calibration of unbounded scores (reconstruction errors, latent distances) to [0, 1], so that one threshold
means the same across models: a calibrated score is the share of the training negatives (normal samples,
unchanged pairs) that scored lower. 0.5 is the median normal sample, 0.99 more unusual than 99 % of them.

The map is the negatives' empirical distribution function through K quantile knots, linear between them,
squeezed into [0, 1 - TAIL]; above the highest negative it rises on towards 1 as 1 - TAIL·exp(-excess /
spread), so ranks (and with them AUROC) are kept everywhere above the lowest negative. The knots are a
buffer: checkpoints carry the calibration with the weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from cdtool.errors import InputError

TAIL = 1e-3  # the share of [0, 1] left for scores beyond every training negative


class ScoreCalibration(nn.Module):
    def __init__(self, knots: int = 257):
        super().__init__()
        self.register_buffer("knots", torch.linspace(0.0, 1.0, knots))  # identity until fitted
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, scores: torch.Tensor) -> "ScoreCalibration":
        """Place the knots at the quantiles of the raw scores of training negatives."""
        s = scores.detach().flatten().double().cpu().numpy()
        s = s[np.isfinite(s)]
        if s.size < 2:
            raise InputError(f"calibration: needs the scores of at least two training negatives, got {s.size}")
        # numpy, not torch.quantile: that refuses more than 2**24 scores (the pixels of a few images)
        q = np.quantile(s, np.linspace(0.0, 1.0, len(self.knots)))
        self.knots.copy_(torch.from_numpy(q).to(self.knots))
        self.fitted.fill_(True)
        return self

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw scores of any shape -> calibrated scores in [0, 1], monotone in the raw score."""
        k = self.knots.to(raw.dtype)
        n = len(k)
        levels = torch.linspace(0.0, 1.0 - TAIL, n, device=raw.device, dtype=raw.dtype)
        i = torch.searchsorted(k, raw.contiguous(), right=True).clamp(1, n - 1)
        lo, hi = k[i - 1], k[i]
        # hi == lo only at the top knot, tied among the highest negatives: a score there takes the top level
        step = (hi - lo).clamp_min(torch.finfo(raw.dtype).tiny)
        frac = torch.where(hi > lo, (raw - lo) / step, 1.0).clamp(0.0, 1.0)
        inside = levels[i - 1] + frac * (levels[i] - levels[i - 1])
        spread = (k[-1] - k[n // 2]).clamp_min(1e-12)
        beyond = 1.0 - TAIL * torch.exp(-(raw - k[-1]) / spread)
        out = torch.where(raw > k[-1], beyond, inside)
        return torch.where(raw < k[0], torch.zeros_like(out), out)

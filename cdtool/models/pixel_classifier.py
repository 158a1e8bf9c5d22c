"""A per-scene pixel classifier fitted on an analyst's labelled polygons (cdtool.labels).

What counts as change depends on the analyst, so this model learns nothing in advance: fixed per-pixel
features (the bands of both dates, their difference, the RMS change magnitude, and box-filtered means of the
difference and local standard deviations of each date at a few scales, as in supervised classification of
multi-temporal stacks) feed a 1x1-convolution head (logistic regression, or one hidden layer) whose weights are
fitted on the labelled pixels of one pair. It is an ordinary `ChangeModel`, so a fitted model is saved as a
checkpoint with a card and detect runs it like any other.

Identical dates must flag nothing, yet the head also sees the bands themselves (a new roof is a colour as much
as a difference). The score is therefore multiplied by a gate on the local change magnitude, 1 - exp(-(m/tau)²)
with m the RMS band difference over the smallest scale's window: exactly 0 where the dates agree, above 0.99
once they differ by 2 tau scene standard deviations.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model


def box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a size x size window, edges replicated (so a tile's halo is its only reach)."""
    r = size // 2
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), size, stride=1)


def feature_count(bands: int, scales: tuple[int, ...]) -> int:
    return 3 * bands + 1 + len(scales) * (3 * bands + 1)


def pixel_features(before: torch.Tensor, after: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """(B, F, H, W) features of normalised dates (B, C, H, W); F = feature_count(C, scales)."""
    d = after - before
    sq = d.square().mean(dim=1, keepdim=True)
    out = [before, after, d, sq.sqrt()]
    for size in scales:
        out.append(box_mean(d, size))
        out.append(box_mean(sq, size).sqrt())
        for x in (before, after):
            mean = box_mean(x, size)
            out.append((box_mean(x * x, size) - mean * mean).clamp_min(0).sqrt())
    return torch.cat(out, dim=1)


class PixelClassifier(ChangeModel):
    exact_halo = True  # the largest box filter is all a pixel sees
    default_threshold = 0.5
    default_normalization = {"mode": "per-image"}

    def __init__(self, in_channels: int = 3, hidden: int = 0, scales: tuple[int, ...] | list[int] = (5, 11),
                 tau: float = 0.1):
        super().__init__()
        scales = tuple(sorted(int(s) for s in scales))  # the gate reads the smallest, first
        if not scales or any(s < 1 or s % 2 == 0 for s in scales):
            raise ValueError(f"pixel_classifier: scales must be odd window sizes, got {list(scales)}")
        if in_channels < 1 or hidden < 0 or not tau > 0:
            raise ValueError("pixel_classifier: in_channels >= 1, hidden >= 0 and tau > 0 needed")
        self.in_channels, self.scales, self.tau = in_channels, scales, float(tau)
        self.halo = max(scales) // 2
        n = feature_count(in_channels, scales)
        # the standardisation of the features, fitted with the head
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_std", torch.ones(n))
        self.head = (nn.Conv2d(n, 1, 1) if hidden == 0
                     else nn.Sequential(nn.Conv2d(n, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)))

    def features(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Standardised features (B, F, H, W), what the head reads."""
        f = pixel_features(before, after, self.scales)
        return (f - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]

    def gate(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): 0 where the dates agree around a pixel, 1 where they clearly differ."""
        m2 = box_mean((after - before).square().mean(dim=1, keepdim=True), min(self.scales))
        return 1.0 - torch.exp(-m2 / (self.tau * self.tau))

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        with torch.autocast(before.device.type, enabled=False):
            before, after = before.float(), after.float()
            return torch.sigmoid(self.head(self.features(before, after))) * self.gate(before, after)


@register_model("pixel_classifier", paper="per-scene supervised classification of a bi-temporal stack "
                                          "(e.g. Lu et al. 2004, change detection techniques, IJRS 25)")
def pixel_classifier(in_channels: int = 3, hidden: int = 0, scales: list[int] | tuple[int, ...] = (5, 11),
                     tau: float = 0.1) -> PixelClassifier:
    """Per-scene classifier on spectral, difference and texture features, fitted on analyst polygons (--labels)."""
    return PixelClassifier(in_channels, hidden, scales, tau)

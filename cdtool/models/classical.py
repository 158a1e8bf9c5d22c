"""Change vector analysis (CVA): the training-free detector, useful before any model is trained.

Each date is standardised per band (see cdtool.normalization, mode "per-image"), so global illumination
and sensor gain differences cancel; the change magnitude is the root-mean-square band difference
m = sqrt(mean_c (z2 - z1)^2). It maps to a score in [0, 1] with 1 - exp(-m^2 / 2): an unchanged pixel whose
dates correlate at 0.8 scores about 0.2, an uncorrelated (changed) one about 0.6. The mask threshold is
chosen per image with Otsu's method (Malila 1980; Otsu 1979).

Otsu always splits a histogram in two, so between two dates that differ only by noise (quantisation after a
gain change, a low-contrast band such as Sentinel-2's cirrus B10) it would flag half the noise. Every
label-free detector here therefore multiplies its score by `noise_floor`: a pixel whose RMS standardised band
difference is below `min_change` (0.3 scene standard deviations by default) never reaches half its score.
"""

from __future__ import annotations

import torch

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model


def noise_floor(before: torch.Tensor, after: torch.Tensor, min_change: float) -> torch.Tensor:
    """(B, 1, H, W) factor in [0, 1]: a smooth step of the RMS band difference r, 0 for r <= min_change/2,
    1/2 at r = min_change, 1 for r >= 1.5 * min_change. Multiplying a score in [0, 1] by it keeps every
    pixel that changed by less than min_change (in per-band scene stds) below 0.5."""
    if min_change <= 0:
        return torch.ones_like(before[:, :1])
    r = (after - before).pow(2).mean(dim=1, keepdim=True).sqrt()
    t = (r / min_change - 0.5).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class ChangeVectorAnalysis(ChangeModel):
    halo = 0
    size_multiple = 1
    default_threshold = "otsu"
    default_normalization = {"mode": "per-image"}

    def __init__(self, min_change: float = 0.3):
        super().__init__()
        self.min_change = float(min_change)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        m2 = (after - before).pow(2).mean(dim=1, keepdim=True)
        return (1.0 - torch.exp(-0.5 * m2)) * noise_floor(before, after, self.min_change)


@register_model("cva", paper="Malila 1980, change vector analysis; Otsu 1979 threshold")
def cva(min_change: float = 0.3) -> ChangeVectorAnalysis:
    """Change vector analysis with an automatic Otsu threshold; needs no training, any band count."""
    return ChangeVectorAnalysis(min_change)

"""Change vector analysis (CVA): the training-free detector, useful before any model is trained.

Robust to misregistration as in RCVA (Thonfeld et al. 2016, "Robust Change Vector Analysis (RCVA) for
multi-sensor very high resolution optical satellite data", JAG 50): each pixel of one date is compared with
the closest pixel (in band space) within a `neighbourhood` x `neighbourhood` window of the other date, in both
directions, and the larger of the two distances is kept. A one-pixel shift between the dates then no longer
turns every edge into change; a real change is far from every neighbour in both directions. `neighbourhood=1`
is plain CVA.

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
import torch.nn.functional as F

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


def nearest_sq_distance(x: torch.Tensor, y: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 1, H, W) mean-over-bands squared distance from each pixel of x to the closest pixel of y within
    `radius` pixels; a running minimum over the offsets, so memory stays that of one image."""
    best = (x - y).pow(2).mean(dim=1, keepdim=True)
    if radius == 0:
        return best
    r = radius
    padded = F.pad(y, (r, r, r, r), mode="replicate")
    h, w = x.shape[-2:]
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            if dy == r and dx == r:
                continue
            d = (x - padded[..., dy:dy + h, dx:dx + w]).pow(2).mean(dim=1, keepdim=True)
            best = torch.minimum(best, d)
    return best


class ChangeVectorAnalysis(ChangeModel):
    size_multiple = 1
    default_threshold = "otsu"
    default_normalization = {"mode": "per-image"}

    def __init__(self, min_change: float = 0.3, neighbourhood: int = 3):
        super().__init__()
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"cva: neighbourhood must be an odd number of pixels, got {neighbourhood}")
        self.min_change, self.radius = float(min_change), neighbourhood // 2
        self.halo = self.radius

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        m2 = torch.maximum(nearest_sq_distance(after, before, self.radius),
                           nearest_sq_distance(before, after, self.radius))
        return (1.0 - torch.exp(-0.5 * m2)) * noise_floor(before, after, self.min_change)


@register_model("cva", paper="Malila 1980, change vector analysis; RCVA neighbourhood, Thonfeld et al. 2016; Otsu 1979")
def cva(min_change: float = 0.3, neighbourhood: int = 3) -> ChangeVectorAnalysis:
    """Change vector analysis, robust to 1-px misregistration (RCVA), Otsu threshold; no training, any bands."""
    return ChangeVectorAnalysis(min_change, neighbourhood)

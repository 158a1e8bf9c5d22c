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


def noise_floor(before: torch.Tensor, after: torch.Tensor, min_change: float,
                mean_sq: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, H, W) factor in [0, 1]: a smooth step of the RMS band difference r, 0 for r <= min_change/2,
    1/2 at r = min_change, 1 for r >= 1.5 * min_change. Multiplying a score in [0, 1] by it keeps every
    pixel that changed by less than min_change (in per-band scene stds) below 0.5. `mean_sq`: the mean
    squared band difference where the caller has it already."""
    if min_change <= 0:
        return torch.ones_like(before[:, :1])
    if mean_sq is None:
        mean_sq = (after - before).pow(2).mean(dim=1, keepdim=True)
    t = (mean_sq.sqrt() / min_change - 0.5).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def robust_sq_distance(before: torch.Tensor, after: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RCVA's change magnitude: the larger of the two directions' mean-over-bands squared distance from a pixel
    of one date to the closest pixel of the other within `radius` (edges replicated), and the plain
    same-pixel distance; both (B, 1, H, W).

    One pass over the offsets serves both directions: with E_o(q) = |after(q) - before(q + o)|² on the
    after-date padded by `radius`, the after-to-before minimum at p is min_o E_o(p) and the before-to-after
    one is min_o E_o(p - o), the same maps shifted. So each offset costs one band difference (not two), and
    the buffers are reused, keeping memory at a few images."""
    bands, (h, w), r = before.shape[1], before.shape[-2:], radius
    if r == 0:
        d = (after - before).square_().sum(dim=1, keepdim=True).div_(bands)
        return d, d
    a = F.pad(after, (r, r, r, r), mode="replicate")
    b = F.pad(before, (2 * r, 2 * r, 2 * r, 2 * r), mode="replicate")
    hp, wp = h + 2 * r, w + 2 * r
    diff, e = torch.empty_like(a), torch.empty_like(a[:, :1])
    forward = backward = same = None
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            torch.sub(a, b[..., r + dy:r + dy + hp, r + dx:r + dx + wp], out=diff)
            torch.sum(diff.square_(), dim=1, keepdim=True, out=e)
            at_p, at_p_minus_o = e[..., r:r + h, r:r + w], e[..., r - dy:r - dy + h, r - dx:r - dx + w]
            if forward is None:
                forward, backward = at_p.clone(), at_p_minus_o.clone()
            else:
                torch.minimum(forward, at_p, out=forward)
                torch.minimum(backward, at_p_minus_o, out=backward)
            if dy == 0 and dx == 0:
                same = at_p.clone()
    return torch.maximum(forward, backward).div_(bands), same.div_(bands)


class ChangeVectorAnalysis(ChangeModel):
    size_multiple = 1
    exact_halo = True  # the neighbourhood radius is all a pixel sees
    default_threshold = "otsu"
    default_normalization = {"mode": "per-image"}

    def __init__(self, min_change: float = 0.3, neighbourhood: int = 3):
        super().__init__()
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"cva: neighbourhood must be an odd number of pixels, got {neighbourhood}")
        self.min_change, self.radius = float(min_change), neighbourhood // 2
        self.halo = self.radius

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        m2, same = robust_sq_distance(before, after, self.radius)
        return (1.0 - torch.exp(-0.5 * m2)) * noise_floor(before, after, self.min_change, same)


@register_model("cva", paper="Malila 1980, change vector analysis; RCVA neighbourhood, Thonfeld et al. 2016; Otsu 1979")
def cva(min_change: float = 0.3, neighbourhood: int = 3) -> ChangeVectorAnalysis:
    """Change vector analysis, robust to 1-px misregistration (RCVA), Otsu threshold; no training, any bands."""
    return ChangeVectorAnalysis(min_change, neighbourhood)

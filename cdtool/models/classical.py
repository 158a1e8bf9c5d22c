"""Change vector analysis (CVA): the training-free detector, useful before any model is trained.

Each date is standardised per band (see cdtool.normalization, mode "per-image"), so global illumination
and sensor gain differences cancel; the change magnitude is the root-mean-square band difference
m = sqrt(mean_c (z2 - z1)^2). It maps to a score in [0, 1] with 1 - exp(-m^2 / 2): an unchanged pixel whose
dates correlate at 0.8 scores about 0.2, an uncorrelated (changed) one about 0.6. The mask threshold is
chosen per image with Otsu's method (Malila 1980; Otsu 1979).
"""

from __future__ import annotations

import torch

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model


class ChangeVectorAnalysis(ChangeModel):
    halo = 0
    size_multiple = 1
    default_threshold = "otsu"
    default_normalization = {"mode": "per-image"}

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        m2 = (after - before).pow(2).mean(dim=1, keepdim=True)
        return 1.0 - torch.exp(-0.5 * m2)


@register_model("cva", paper="Malila 1980, change vector analysis; Otsu 1979 threshold")
def cva() -> ChangeVectorAnalysis:
    """Change vector analysis with an automatic Otsu threshold; needs no training, any band count."""
    return ChangeVectorAnalysis()

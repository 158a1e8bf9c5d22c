"""Run a model at the ground sampling distance it was trained on, whatever the input's.

`Rescaled` wraps a model so that each window is resampled by `factor` (input GSD / model GSD: > 1 enlarges)
before the model sees it and its scores are resampled back onto the window's own pixels. The detection
pipeline therefore stays on the input's grid, streams as before and never holds a resampled copy of more
than the windows in flight; the tile size is divided by the factor so the model's windows keep their size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cdtool.models.base import ChangeModel


class Rescaled(ChangeModel):
    def __init__(self, model: ChangeModel, factor: float):
        super().__init__()
        if not factor > 0:
            raise ValueError(f"factor must be positive, got {factor}")
        self.model, self.factor = model, float(factor)
        # the model's halo in input pixels, plus a pixel for the resampling kernels at the window edge
        self.halo = math.ceil(int(model.halo) / self.factor) + 1
        self.size_multiple = 1
        if model.needs_fit:
            raise ValueError("models fitted per pair are scale-free and are never rescaled")

    def _resize(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            size = (max(1, round(x.shape[-2] * self.factor)), max(1, round(x.shape[-1] * self.factor)))
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        shrinking = size[0] < x.shape[-2]
        return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False,
                             antialias=shrinking)

    @property
    def wrapped(self) -> ChangeModel:
        return self.model

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        h, w = before.shape[-2:]
        b, a = self._resize(before), self._resize(after)
        m = int(self.model.size_multiple)
        H, W = b.shape[-2:]
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            b = F.pad(b, (0, pw, 0, ph), mode="replicate")
            a = F.pad(a, (0, pw, 0, ph), mode="replicate")
        y = self.model(b, a)[..., :H, :W].float()
        return self._resize(y, (h, w)).clamp(0.0, 1.0)

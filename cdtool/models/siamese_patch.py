"""Siamese CNN patch classifier: the baseline of paper 000 (section 4.2, trained with random under- or
over-sampling) for PCD-style patches, where a `patch`×`patch` pair is labelled by its centre.

Both dates pass one shared trunk of unpadded ("valid") 3×3 convolutions and 2×2 poolings; the two
feature maps are joined as [a, b, |a - b|] and a head whose first convolution spans the whole remaining
map scores the pair. Because nothing is padded, the network is exactly a sliding-window classifier when
run on a larger image (the OverFeat equivalence): on an H×W tile it scores every patch whose corner lies
on a grid of step `stride` = 2^stages, in one pass. `forward` turns that grid of patch scores into a dense
map by interpolating between patch centres, which is how the paper overlays its sliding-window outputs
into a heatmap, without classifying each patch separately.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model


def _trunk_size(patch: int, stages: int) -> int:
    """Side of the trunk's output for a `patch`-sized input: each stage is conv3 (valid) then pool 2."""
    s = patch
    for _ in range(stages):
        s = (s - 2) // 2
    return s


class SiamesePatchClassifier(ChangeModel):
    def __init__(self, in_channels: int = 3, patch: int = 112, stages: int = 4, width: int = 16,
                 dropout: float = 0.3):
        super().__init__()
        side = _trunk_size(patch, stages)
        if side < 1:
            raise ValueError(f"patch {patch} is too small for {stages} stages; use fewer stages or a larger patch")
        self.patch, self.stride, self.side = patch, 2 ** stages, side
        # patches sit on a grid of `stride`: only shifts by its multiples leave the map the same, so detect starts
        # its tiles on them (and pads a tile's sides to them)
        self.size_multiple = self.stride
        layers: list[nn.Module] = []
        cin = in_channels
        for k in range(stages):
            cout = width * 2 ** min(k, 2)
            layers += [nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = cout
        self.trunk = nn.Sequential(*layers)
        hidden = 4 * width
        self.head = nn.Sequential(nn.Conv2d(3 * cin, hidden, side), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
                                  nn.Conv2d(hidden, 1, 1))
        # pixels nearer a tile edge than half a patch have no patch centred on them: the stitcher ignores them
        self.halo = patch // 2 + self.stride

    def patch_logits(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(B, 1, gh, gw) logits: entry (i, j) scores the patch whose corner is (i·stride, j·stride)."""
        n = before.shape[0]
        f = self.trunk(torch.cat([before, after]))
        a, b = f[:n], f[n:]
        return self.head(torch.cat([a, b, (a - b).abs()], 1))

    def _at_least_one_patch(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs smaller than a patch get their border replicated, so there is one patch to score."""
        ph, pw = max(0, self.patch - x.shape[-2]), max(0, self.patch - x.shape[-1])
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def forward_train(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        """On `patch`-sized pairs the logits are (B, 1, 1, 1): one per pair, for the patch's label."""
        return {"logits": [self.patch_logits(self._at_least_one_patch(before), self._at_least_one_patch(after))]}

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        h, w = before.shape[-2:]
        logits = self.patch_logits(self._at_least_one_patch(before), self._at_least_one_patch(after))
        return self._dense(torch.sigmoid(logits.float()), h, w)

    def _dense(self, grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Bilinear interpolation between patch centres (pixel (patch-1)/2 + i·stride), clamped at borders."""
        gh, gw = grid.shape[-2:]
        c = (self.patch - 1) / 2
        ys = (torch.arange(h, device=grid.device, dtype=torch.float32) - c) / self.stride
        xs = (torch.arange(w, device=grid.device, dtype=torch.float32) - c) / self.stride
        # grid_sample's align_corners=True maps -1..1 onto the first..last grid entry
        ny = 2 * ys / max(gh - 1, 1) - 1 if gh > 1 else torch.zeros_like(ys)
        nx = 2 * xs / max(gw - 1, 1) - 1 if gw > 1 else torch.zeros_like(xs)
        yy, xx = torch.meshgrid(ny, nx, indexing="ij")
        coords = torch.stack([xx, yy], -1).expand(grid.shape[0], h, w, 2)
        return F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)


@register_model("siamese_patch", output="centre", paper="Hamaguchi et al. 2019 (paper 000), baseline of section 4.2")
def siamese_patch(in_channels: int = 3, patch: int = 112, stages: int = 4, width: int = 16,
                  dropout: float = 0.3) -> SiamesePatchClassifier:
    """Siamese CNN patch classifier (labelled by the patch centre); slides over images as one convolution."""
    return SiamesePatchClassifier(in_channels, patch, stages, width, dropout)

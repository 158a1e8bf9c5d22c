"""Siamese difference U-Net: the shipped defaults' architecture, built so that it cannot see change
between two identical images.

A U-Net encoder (after Daudt et al. 2018's FC-Siam-diff) runs on both dates with shared weights. Unlike
FC-Siam-diff, the decoder sees nothing but the absolute feature differences |f1 - f2| at every scale, and
its layers have neither biases nor normalisation, so a zero difference stays exactly zero through it: two
identical dates score sigmoid(bias) at every pixel, one constant below any threshold the training picks
(checked when the threshold is chosen). The decoder is positively homogeneous in the differences, so a
small radiometric residue (quantisation, the rounding of a gain change) gives a proportionally small
logit, and the model is symmetric in the two dates. Change scores are sigmoid(logit), thresholded at the
value stored in the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model


def _enc_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _dec_block(cin: int, cout: int) -> nn.Sequential:
    # no bias, no normalisation: maps zero to zero
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.ReLU(inplace=True))


class SiamDiffUNet(ChangeModel):
    halo = 40
    size_multiple = 8

    def __init__(self, in_channels: int = 3, width: int = 16):
        super().__init__()
        c = [width, 2 * width, 4 * width, 8 * width]
        self.enc = nn.ModuleList([_enc_block(in_channels, c[0]), _enc_block(c[0], c[1]),
                                  _enc_block(c[1], c[2]), _enc_block(c[2], c[3])])
        self.dec = nn.ModuleList([_dec_block(c[3] + c[2], c[2]), _dec_block(c[2] + c[1], c[1]),
                                  _dec_block(c[1] + c[0], c[0])])
        self.head = nn.Conv2d(c[0], 1, 1, bias=False)
        self.bias = nn.Parameter(torch.tensor(-3.0))  # the score of "no difference at all"

    def forward_train(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        n = before.shape[0]
        x = torch.cat([before, after])
        diffs = []
        for i, enc in enumerate(self.enc):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            diffs.append((x[:n] - x[n:]).abs())
        y = diffs[-1]
        for i, dec in enumerate(self.dec):
            skip = diffs[-2 - i]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = dec(torch.cat([y, skip], 1))
        return {"logits": [self.head(y) + self.bias]}

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_train(before, after)["logits"][0].float())


@register_model("siam_diff_unet", paper="after Daudt et al. 2018 (FC-Siam-diff); difference-only decoder")
def siam_diff_unet(in_channels: int = 3, width: int = 16) -> SiamDiffUNet:
    """Siamese U-Net whose bias-free decoder sees only |f1 - f2|: identical dates give one constant low score."""
    return SiamDiffUNet(in_channels, width)

"""FC-Siam-diff and FC-Siam-conc (Daudt, Le Saux, Boulch 2018, "Fully convolutional siamese networks for
change detection"): a U-Net whose encoder runs on both dates with shared weights; the skip connections
carry |f1 - f2| (diff) or [f1, f2] (conc) to the decoder, which classifies every pixel as change or not.
Four poolings, so inputs pad to a multiple of 16. `width` scales the channels (16 in the paper).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model


def _convs(cin: int, cout: int, n: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True), nn.Dropout2d(dropout)]
    return nn.Sequential(*layers)


class FCSiam(ChangeModel):
    halo = 32
    size_multiple = 16

    def __init__(self, in_channels: int = 3, width: int = 16, fusion: str = "diff", dropout: float = 0.2):
        super().__init__()
        if fusion not in ("diff", "conc"):
            raise ValueError(f"fusion must be 'diff' or 'conc', got {fusion!r}")
        self.fusion = fusion
        c = [width, 2 * width, 4 * width, 8 * width]
        self.enc = nn.ModuleList([_convs(in_channels, c[0], 2, dropout), _convs(c[0], c[1], 2, dropout),
                                  _convs(c[1], c[2], 3, dropout), _convs(c[2], c[3], 3, dropout)])
        k = 2 if fusion == "conc" else 1
        self.up = nn.ModuleList([nn.ConvTranspose2d(c[3], c[3], 3, stride=2, padding=1, output_padding=1),
                                 nn.ConvTranspose2d(c[2], c[2], 3, stride=2, padding=1, output_padding=1),
                                 nn.ConvTranspose2d(c[1], c[1], 3, stride=2, padding=1, output_padding=1),
                                 nn.ConvTranspose2d(c[0], c[0], 3, stride=2, padding=1, output_padding=1)])
        self.dec = nn.ModuleList([_convs(c[3] + k * c[3], c[2], 3, dropout), _convs(c[2] + k * c[2], c[1], 3, dropout),
                                  _convs(c[1] + k * c[1], c[0], 2, dropout)])
        self.last = nn.Sequential(nn.Conv2d(c[0] + k * c[0], c[0], 3, padding=1), nn.BatchNorm2d(c[0]),
                                  nn.ReLU(inplace=True), nn.Conv2d(c[0], 1, 3, padding=1))

    def _fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs() if self.fusion == "diff" else torch.cat([a, b], 1)

    def forward_train(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        n = before.shape[0]
        x = torch.cat([before, after])
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        y = x[n:]  # the decoder starts from the "after" branch's pooled bottleneck, as in the paper's code
        for i, up in enumerate(self.up):
            s = skips[3 - i]
            y = up(y)
            y = torch.cat([y, self._fuse(s[:n], s[n:])], 1)
            y = self.dec[i](y) if i < 3 else self.last(y)
        return {"logits": [y]}

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_train(before, after)["logits"][0].float())


@register_model("fc_siam_diff", paper="Daudt et al. 2018, FC-Siam-diff")
def fc_siam_diff(in_channels: int = 3, width: int = 16, dropout: float = 0.2) -> FCSiam:
    """FC-Siam-diff: siamese U-Net, skip connections carry the absolute feature difference."""
    return FCSiam(in_channels, width, "diff", dropout)


@register_model("fc_siam_conc", paper="Daudt et al. 2018, FC-Siam-conc")
def fc_siam_conc(in_channels: int = 3, width: int = 16, dropout: float = 0.2) -> FCSiam:
    """FC-Siam-conc: siamese U-Net, skip connections carry both dates' features concatenated."""
    return FCSiam(in_channels, width, "conc", dropout)

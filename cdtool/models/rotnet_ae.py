"""Two-stage non-symmetrical RotNet autoencoder (paper 004), and the RotNet-score baseline on the same network.

Stage 1 trains a RotNet: a ResNet-18-style encoder (BasicBlocks [2, 2, 2, 2], channels width·(1, 2, 4, 8);
the paper's ResNet-18 is width 64, a narrower one fits the CPU) with a 4-way head predicting which quarter
turn was applied. Stage 2 freezes the encoder (eval mode: BatchNorm statistics fixed) and trains two
parallel decoders on its (8·width, 4, 4) map: one with MSE, one with −SSIM (kornia, 11×11 window). The
anomaly score is MSE(x, x̂₁) − λ·SSIM(x, x̂₂), λ = 1 (``score: ae``). ``score: rotnet`` is the RotNet
baseline (Golan & El-Yaniv's simple form): −(1/4)·Σ_t log p(t | rot_t(x)), trained by stage 1 only.
SSIM is computed with `ssim_range` as the dynamic range (1 for images normalised to [0, 1], the recipes'
fixed normalisation mean 0, std 255). See `cdtool.models.cae.OneClassModel` for inputs and calibration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdtool.models.cae import OneClassModel
from cdtool.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet18Encoder(nn.Module):
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool): 32×32 -> (8·width, 4, 4)."""

    def __init__(self, cin: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True))
        layers, c = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            layers += [BasicBlock(c, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            c = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x):
        return self.layers(self.stem(x))


def _decoder(cin: int, cout: int, width: int) -> nn.Sequential:
    """(8·width, 4, 4) -> (cout, 32, 32): three stride-2 transposed convolutions, a 3×3 output convolution."""
    layers: list[nn.Module] = []
    c = cin
    for mult in (4, 2, 1):
        layers += [nn.ConvTranspose2d(c, width * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(width * mult),
                   nn.ReLU(True)]
        c = width * mult
    layers += [nn.Conv2d(c, cout, 3, 1, 1)]
    return nn.Sequential(*layers)


def ssim_per_sample(x: torch.Tensor, y: torch.Tensor, value_range: float = 1.0, window: int = 11) -> torch.Tensor:
    """(B,) mean SSIM (kornia) of each sample pair."""
    from kornia.metrics import ssim

    return ssim(x, y, window, max_val=float(value_range)).flatten(1).mean(1)


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 quarter turns of every sample, stacked (4B, ...), and their labels 0..3."""
    xs = torch.cat([torch.rot90(x, k, (-2, -1)) for k in range(4)])
    return xs, torch.arange(4, device=x.device).repeat_interleave(len(x))


class RotNetAE(OneClassModel):
    def __init__(self, in_channels: int = 1, inputs: str = "image", patch: int = 32, size: int = 32,
                 width: int = 64, lam: float = 1.0, score: str = "ae", ssim_range: float = 1.0):
        super().__init__(in_channels, inputs, patch, size)
        if size != 32:
            raise ValueError("rotnet_ae works on 32×32 windows (size: 32); `patch` sets the input window")
        if score not in ("ae", "rotnet"):
            raise ValueError(f"score: {score!r}; allowed: ae (MSE − λ·SSIM), rotnet (rotation log-likelihood)")
        self.lam, self.score, self.ssim_range = float(lam), score, float(ssim_range)
        self.encoder = ResNet18Encoder(self.channels, width)
        self.rot_head = nn.Linear(self.encoder.out_channels, 4)
        self.dec_mse = _decoder(self.encoder.out_channels, self.channels, width)
        self.dec_ssim = _decoder(self.encoder.out_channels, self.channels, width)

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.rot_head(self.encoder(x).mean((-2, -1)))

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.dec_mse(z), self.dec_ssim(z)

    def raw_score(self, x: torch.Tensor) -> torch.Tensor:
        if self.score == "rotnet":
            xs, t = rotations(x)
            nll = F.cross_entropy(self.rotation_logits(xs), t, reduction="none")
            return nll.view(4, len(x)).mean(0)
        r1, r2 = self.reconstruct(x)
        mse = (r1 - x).pow(2).flatten(1).mean(1)
        return mse - self.lam * ssim_per_sample(x, r2, self.ssim_range)


@register_model("rotnet_ae", output="centre", paper="two-stage non-symmetrical RotNet autoencoder (paper 004)")
def rotnet_ae(in_channels: int = 1, inputs: str = "image", patch: int = 32, size: int = 32, width: int = 64,
              lam: float = 1.0, score: str = "ae", ssim_range: float = 1.0) -> RotNetAE:
    """RotNet (ResNet-18-style) encoder + MSE and SSIM decoders: calibrated MSE − λ·SSIM of a window."""
    return RotNetAE(in_channels, inputs, patch, size, width, lam, score, ssim_range)

"""One-class detectors that score one fixed-size window, and the plain convolutional autoencoder (CAE)
baseline of paper 004's comparison.

Every one-class model here shares `OneClassModel`'s detection contract:

- ``inputs: "image"`` (one-class images, MNIST / Fashion-MNIST): the sample is ``before``; ``after`` is ignored.
- ``inputs: "pair"`` (change as anomaly): both dates are stacked channel-wise, ``cat(before, after)``, and
  that 2C-channel window is one sample (trained on unchanged pairs only).

The window is `patch` pixels wide (28 for MNIST, 112 for PCD patches); it is resized to the network's
`size` (32: the DCGAN-style 32×32 design) inside the model, so data need no `resize` and `cdtool detect`
can slide the model at its native window (``patch_only``, ``patch_size``: `cdtool.inference.centre_patch`).
``forward(before, after)`` returns (B, 1, 1, 1): one calibrated score in [0, 1] per window (the contract of
`cdtool.inference.centre_patch.CentrePatch`, which paints it on the window's centre cell). ``raw_score`` is the unbounded anomaly score (a reconstruction error); `calibration`
(`ScoreCalibration`, fitted on the training negatives by the task's last, zero-epoch phase) maps it to the
share of normal training samples that scored lower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdtool.models.base import ChangeModel
from cdtool.models.calibration import ScoreCalibration
from cdtool.models.registry import register_model


class OneClassModel(ChangeModel):
    """Base of the one-class window scorers: input convention, resizing, calibration, dense output."""

    patch_only = True

    def __init__(self, in_channels: int = 1, inputs: str = "image", patch: int = 32, size: int = 32):
        super().__init__()
        if inputs not in ("image", "pair"):
            raise ValueError(f"inputs: {inputs!r}; allowed: image (one-class images), pair (dates stacked)")
        self.inputs, self.size, self.patch_size = inputs, int(size), int(patch)
        self.in_channels = int(in_channels)
        self.channels = self.in_channels * (2 if inputs == "pair" else 1)  # what the network sees
        self.calibration = ScoreCalibration(257)

    def prep(self, before: torch.Tensor, after: torch.Tensor | None = None) -> torch.Tensor:
        """The network's input: `before` (image) or both dates stacked (pair), resized to `size`."""
        if self.inputs == "pair":
            if after is None:
                raise ValueError("inputs 'pair' needs both dates")
            x = torch.cat([before, after], 1)
        else:
            x = before
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def raw_score(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) unbounded anomaly score of prepared inputs (higher: more anomalous)."""
        raise NotImplementedError

    def forward(self, before: torch.Tensor, after: torch.Tensor | None = None) -> torch.Tensor:
        s = self.calibration(self.raw_score(self.prep(before, after)).float())
        return s.view(-1, 1, 1, 1)


def dcgan_encoder(cin: int, width: int, nz: int, size: int = 32) -> nn.Sequential:
    """DCGAN encoder: stride-2 4×4 convolutions from `size` down to 4×4, then a 4×4 convolution to (nz, 1, 1)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    s, c = size // 2, width
    while s > 4:
        layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2, inplace=True)]
        s, c = s // 2, 2 * c
    layers += [nn.Conv2d(c, nz, 4, 1, 0, bias=False)]
    return nn.Sequential(*layers)


def dcgan_decoder(cout: int, width: int, nz: int, size: int = 32) -> nn.Sequential:
    """DCGAN decoder, the mirror of `dcgan_encoder`: (nz, 1, 1) -> (cout, size, size), linear output."""
    c, s = width, size // 2
    while s > 4:
        c, s = 2 * c, s // 2
    layers: list[nn.Module] = [nn.ConvTranspose2d(nz, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
    while s < size // 2:
        layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
        c, s = c // 2, s * 2
    layers += [nn.ConvTranspose2d(c, cout, 4, 2, 1)]
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    """Encoder/decoder pair (DCGAN style); `encode` gives the (B, nz) latent code."""

    def __init__(self, channels: int, width: int, nz: int, size: int = 32):
        super().__init__()
        self.encoder = dcgan_encoder(channels, width, nz, size)
        self.decoder = dcgan_decoder(channels, width, nz, size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class CAE(OneClassModel):
    """Plain convolutional autoencoder; score = mean squared reconstruction error of the window."""

    def __init__(self, in_channels: int = 1, inputs: str = "image", patch: int = 32, size: int = 32,
                 width: int = 32, nz: int = 64):
        super().__init__(in_channels, inputs, patch, size)
        self.ae = AutoEncoder(self.channels, width, nz, size)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.ae(x)

    def raw_score(self, x: torch.Tensor) -> torch.Tensor:
        return (self.ae(x) - x).pow(2).flatten(1).mean(1)


@register_model("cae", output="centre", paper="convolutional autoencoder baseline (paper 004, Table 1 'CAE')")
def cae(in_channels: int = 1, inputs: str = "image", patch: int = 32, size: int = 32, width: int = 32,
        nz: int = 64) -> CAE:
    """Convolutional autoencoder one-class baseline: calibrated MSE reconstruction error of a window."""
    return CAE(in_channels, inputs, patch, size, width, nz)

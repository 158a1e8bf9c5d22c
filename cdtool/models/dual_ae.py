"""Adversarial dual autoencoder (paper 003): a generator autoencoder G = (Ge, Gd), a discriminator D, an
auxiliary autoencoder D′ of G's shape with its own weights, and a latent centre c (a buffer, the mean of
Ge(x) over the normal training data, computed before training by the task's `centre` phase).

The paper gives no layer sizes: every part is DCGAN-style at 32×32 (`cdtool.models.cae`), D being G's
encoder with a one-logit output. The anomaly score the paper names is "the reconstruction loss between the
realistic image and the generated image G′(G(x))"; G′ is read as the auxiliary autoencoder D′, so
``score: dual`` (the default) is ‖x − D′(G(x))‖₁ per window; ``score: generator`` is ‖x − G(x)‖₁, used by the
ablation rows that do not train D′ (without L_dual D′ would be an untrained network).
See `cdtool.models.cae.OneClassModel` for the input convention (image or stacked pair) and calibration.
"""

from __future__ import annotations

import torch

from cdtool.models.cae import AutoEncoder, OneClassModel, dcgan_encoder
from cdtool.models.registry import register_model


class DualAE(OneClassModel):
    def __init__(self, in_channels: int = 1, inputs: str = "image", patch: int = 32, size: int = 32,
                 width: int = 32, nz: int = 100, score: str = "dual"):
        super().__init__(in_channels, inputs, patch, size)
        if score not in ("dual", "generator"):
            raise ValueError(f"score: {score!r}; allowed: dual (‖x − D′(G(x))‖₁), generator (‖x − G(x)‖₁)")
        self.score = score
        self.generator = AutoEncoder(self.channels, width, nz, size)       # G = (Ge, Gd)
        self.auxiliary = AutoEncoder(self.channels, width, nz, size)       # D′, same shape, own weights
        self.discriminator = dcgan_encoder(self.channels, width, 1, size)  # D: one logit per window
        self.register_buffer("centre", torch.zeros(nz))                   # c
        self.register_buffer("centre_set", torch.zeros((), dtype=torch.bool))

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x).flatten(1)[:, 0]

    def raw_score(self, x: torch.Tensor) -> torch.Tensor:
        g = self.generator(x)
        rec = self.auxiliary(g) if self.score == "dual" else g
        return (rec - x).abs().flatten(1).mean(1)


@register_model("dual_ae", output="centre", paper="adversarial dual autoencoder (paper 003)")
def dual_ae(in_channels: int = 1, inputs: str = "image", patch: int = 32, size: int = 32, width: int = 32,
            nz: int = 100, score: str = "dual") -> DualAE:
    """Adversarial dual autoencoder (G, D, auxiliary D′, latent centre): calibrated ‖x − D′(G(x))‖₁ of a window."""
    return DualAE(in_channels, inputs, patch, size, width, nz, score)

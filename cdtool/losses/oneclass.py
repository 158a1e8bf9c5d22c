"""Losses of the one-class detectors (papers 003 and 004). The one-class tasks (`cdtool.tasks.oneclass`) call
them directly on the model and its prepared input, not through the dense-loss convention.

- ``adae`` (paper 003): per-optimiser objectives of the adversarial dual autoencoder, with the paper's weights
  w = (w_i, w_a, w_z, w_c, w_d) = (1, 5, 1, 0.05, 1) and k = 0.4:
  L_irec = E‖x − G(x)‖₁, L_adv (non-saturating BCE for G, BCE on real/fake for D; a mean over the batch),
  L_zrec = E‖Ge(x) − Ge′(G(x))‖₂, L_c = E‖Ge(x) − c‖², L_dual = E‖x − D′(x)‖₁ − k·E‖G(x) − D′(G(x))‖₁.
  Every ‖·‖ is the paper's norm of one sample (the 1-norm sums |·| over all its channels and pixels, the
  2-norm is the root of the sum of squares over the latent, not squared: eq. 5), and E the mean over the
  batch. The reconstruction terms therefore grow with the image (a 32×32 grey image sums 1,024 pixels)
  while L_adv does not, which is the balance the paper's weights were chosen for.
  D minimises its BCE; D′ minimises w_d·L_dual + w_z·L_zrec (its encoder maps G(x) back to Ge(x)); G minimises
  w_i·L_irec + w_a·L_adv + w_z·L_zrec + w_c·L_c + G's side of L_dual (only its second term depends on G),
  which the paper leaves open, so ``g_dual`` picks it:
  ``help`` (default): +w_d·‖G(x) − D′(G(x))‖₁, the other side of the min–max (G wants its outputs
  reconstructed, as the generator of Vu et al. 2019 and BEGAN); ``against``: −w_d·k·‖G(x) − D′(G(x))‖₁, eq. 1
  read literally (one total L that G minimises too, so G pushes its outputs away from what D′ reconstructs).
  A weight of 0 switches a term off (the ablation of the paper's Table 1).
- ``recon_mse``: mean squared error; ``recon_ssim``: −SSIM (kornia, 11×11); ``rotation_ce``: cross-entropy of
  the 4-way rotation head over the four quarter turns of each sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdtool.losses.base import register_loss


def l1_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E‖a − b‖₁: the 1-norm of each sample (|·| summed over every dimension but the first), averaged over
    the batch. Not a per-pixel mean: the paper's reconstruction terms are norms (eqs. 3, 6, 7)."""
    return (a - b).abs().flatten(1).sum(1).mean()


def l2_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E‖a − b‖₂: the (unsquared) 2-norm of each sample, averaged over the batch (the paper's eq. 5)."""
    return torch.linalg.vector_norm((a - b).flatten(1), ord=2, dim=1).mean()


G_DUAL = ("help", "against")


def check_g_dual(value) -> str:
    """The adae loss arg g_dual, validated (the loss and the dual_ae task's recipe check both ask here)."""
    if value not in G_DUAL:
        raise ValueError(f"losses.adae.args.g_dual must be one of {', '.join(G_DUAL)}, got {value!r}")
    return value


def dual_term(x: torch.Tensor, gx: torch.Tensor, aux: nn.Module, k: float) -> torch.Tensor:
    """L_dual = E‖x − D′(x)‖₁ − k·E‖G(x) − D′(G(x))‖₁."""
    return l1_norm(x, aux(x)) - k * l1_norm(gx, aux(gx))


@register_loss("adae")
class ADAELoss(nn.Module):
    """Adversarial dual autoencoder objectives (paper 003): one loss each for D, D′ and G."""

    def __init__(self, w_irec: float = 1.0, w_adv: float = 5.0, w_zrec: float = 1.0, w_c: float = 0.05,
                 w_dual: float = 1.0, k: float = 0.4, g_dual: str = "help"):
        super().__init__()
        self.g_dual = check_g_dual(g_dual)
        self.w = {"irec": float(w_irec), "adv": float(w_adv), "zrec": float(w_zrec), "c": float(w_c),
                  "dual": float(w_dual)}
        self.k = float(k)

    def discriminator(self, model, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """D: real x -> 1, generated G(x) -> 0."""
        with torch.no_grad():
            gx = model.generator(x)
        real, fake = model.discriminate(x), model.discriminate(gx)
        loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        return loss, {"d": float(loss.detach())}

    def auxiliary_active(self) -> bool:
        return self.w["dual"] > 0 or self.w["zrec"] > 0

    def auxiliary(self, model, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """D′: w_d·L_dual + w_z·L_zrec, with G fixed."""
        with torch.no_grad():
            z = model.generator.encode(x)
            gx = model.generator.decode(z)
        loss = x.new_zeros(())
        parts = {}
        if self.w["dual"] > 0:
            dual = dual_term(x, gx, model.auxiliary, self.k)
            loss = loss + self.w["dual"] * dual
            parts["dual"] = float(dual.detach())
        if self.w["zrec"] > 0:
            zrec = l2_norm(z, model.auxiliary.encode(gx))
            loss = loss + self.w["zrec"] * zrec
            parts["aux_zrec"] = float(zrec.detach())
        return loss, parts

    def generator(self, model, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """G: w_i·L_irec + w_a·L_adv + w_z·L_zrec + w_c·L_c ± G's side of L_dual (D and D′ fixed)."""
        z = model.generator.encode(x)
        gx = model.generator.decode(z)
        parts = {}
        irec = l1_norm(x, gx)
        loss = self.w["irec"] * irec
        parts["irec"] = float(irec.detach())
        if self.w["adv"] > 0:
            fake = model.discriminate(gx)
            adv = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            loss = loss + self.w["adv"] * adv
            parts["adv"] = float(adv.detach())
        if self.w["zrec"] > 0:
            zrec = l2_norm(z, model.auxiliary.encode(gx))
            loss = loss + self.w["zrec"] * zrec
            parts["zrec"] = float(zrec.detach())
        if self.w["c"] > 0:
            c = (z - model.centre).pow(2).sum(1).mean()
            loss = loss + self.w["c"] * c
            parts["c"] = float(c.detach())
        if self.w["dual"] > 0:
            g_dual = l1_norm(gx, model.auxiliary(gx))
            sign = 1.0 if self.g_dual == "help" else -self.k
            loss = loss + sign * self.w["dual"] * g_dual
            parts["g_direc"] = float(g_dual.detach())
        return loss, parts


@register_loss("recon_mse")
class ReconMSE(nn.Module):
    """Mean squared reconstruction error."""

    def forward(self, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(rec, x)


@register_loss("recon_ssim")
class ReconSSIM(nn.Module):
    """−SSIM (kornia, `window`×`window` Gaussian window, dynamic range `value_range`)."""

    def __init__(self, window: int = 11, value_range: float = 1.0):
        super().__init__()
        self.window, self.value_range = int(window), float(value_range)

    def forward(self, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        from kornia.metrics import ssim

        return -ssim(x, rec, self.window, max_val=self.value_range).mean()


@register_loss("rotation_ce")
class RotationCE(nn.Module):
    """Cross-entropy of a 4-way rotation head over the quarter turns of every sample."""

    def forward(self, model, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        from cdtool.models.rotnet_ae import rotations

        xs, t = rotations(x)
        logits = model.rotation_logits(xs)
        return F.cross_entropy(logits, t), float((logits.argmax(1) == t).float().mean())

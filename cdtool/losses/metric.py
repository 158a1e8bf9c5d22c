"""Metric-learning losses of CosimNet (Guo et al. 2018, paper 002): contrastive loss, the thresholded
contrastive loss (TCL), the cosine loss, multi-layer side outputs weighted by β, and FCN-Metrics
(classification + λ · contrastive)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from cdtool.losses.base import layer_weights, masked_mean, register_loss
from cdtool.losses.dense import WeightedBCE


def contrastive_map(d: torch.Tensor, changed: torch.Tensor, margin: float, tau: float) -> torch.Tensor:
    """Per-pixel (thresholded) contrastive loss on a distance map.

    Unchanged pixels pay max(0, D - τ)² (τ = 0: plain contrastive, pulling distances to zero; τ > 0: TCL,
    tolerating the residual distance that misregistration and viewpoint changes leave); changed pixels
    pay max(0, m - D)². Squared hinges as in Hadsell et al. and the authors' released code, so the
    gradient vanishes smoothly at the threshold and the margin."""
    same = (d - tau).clamp_min(0.0).pow(2)
    diff = (margin - d).clamp_min(0.0).pow(2)
    return torch.where(changed > 0.5, diff, same)


def side_output_sum(per_pixel_maps: Iterable[torch.Tensor], target: torch.Tensor, valid: torch.Tensor | None,
                    weights: list[float], balance: bool, name: str) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ_h β_h · mean(loss_h) over side outputs, logging each mean as `{name}{h}`: one reduction for every
    per-side-output loss, so the balanced and plain variants cannot drift apart between losses."""
    v = torch.ones_like(target) if valid is None else valid
    total = target.new_zeros(())
    parts = {}
    for i, (b, per_px) in enumerate(zip(weights, per_pixel_maps)):
        if balance:
            term = 0.5 * (masked_mean(per_px, v * target) + masked_mean(per_px, v * (1 - target)))
        else:
            term = masked_mean(per_px, v)
        parts[f"{name}{i}"] = float(term.detach())
        total = total + b * term
    return total, parts


class Contrastive(nn.Module):
    """Σ_h β_h · loss_h over the model's side outputs (MLSO). With `balance`, changed and unchanged pixels
    are averaged separately and summed, so the rare changed class is not drowned out."""

    def __init__(self, margin: float = 2.0, tau: float = 0.0, weights: list[float] | None = None,
                 balance: bool = True):
        super().__init__()
        self.margin, self.tau, self.weights, self.balance = float(margin), float(tau), weights, balance

    def forward(self, outputs: dict, target: torch.Tensor, valid: torch.Tensor | None = None):
        dists = outputs["distances"]
        maps = (contrastive_map(d.float(), target, self.margin, self.tau) for d in dists)
        return side_output_sum(maps, target, valid, layer_weights(self.weights, len(dists)), self.balance,
                               "contrastive")


class CosLoss(nn.Module):
    """The paper's loss for cosine similarity (eq. 2): (y_k - exp(-|w_k·cos_k + b_k|))², with learnable
    w_k, b_k living in the model; here on the change score 1 - exp(...) against the change mask."""

    def __init__(self, weights: list[float] | None = None, balance: bool = True):
        super().__init__()
        self.weights, self.balance = weights, balance

    def forward(self, outputs: dict, target: torch.Tensor, valid: torch.Tensor | None = None):
        scores = outputs["layer_scores"]
        maps = ((s.float() - target).pow(2) for s in scores)
        return side_output_sum(maps, target, valid, layer_weights(self.weights, len(scores)), self.balance, "cos")


class FCNMetrics(nn.Module):
    """FCN-Metrics (paper 002, eq. 7): Loss = Loss_class + λ · Loss_feat, λ = 3 in the paper."""

    def __init__(self, lam: float = 3.0, margin: float = 2.0, tau: float = 0.0, pos_weight: float = 1.0,
                 weights: list[float] | None = None):
        super().__init__()
        self.lam = float(lam)
        self.cls = WeightedBCE(pos_weight)
        self.feat = Contrastive(margin, tau, weights)

    def forward(self, outputs: dict, target: torch.Tensor, valid: torch.Tensor | None = None):
        lc, pc = self.cls(outputs, target, valid)
        lf, pf = self.feat(outputs, target, valid)
        return lc + self.lam * lf, {**pc, **pf}


@register_loss("contrastive", needs=("distances",))
def contrastive(margin: float = 2.0, weights: list[float] | None = None, balance: bool = True) -> Contrastive:
    """Contrastive loss on feature distance maps (unchanged pulled to 0, changed pushed past margin m)."""
    return Contrastive(margin, 0.0, weights, balance)


@register_loss("tcl", needs=("distances",))
def tcl(margin: float = 2.0, tau: float = 0.1, weights: list[float] | None = None, balance: bool = True) -> Contrastive:
    """Thresholded contrastive loss: unchanged distances only pulled below τ, robust to viewpoint shift."""
    return Contrastive(margin, tau, weights, balance)


@register_loss("cos", needs=("layer_scores",))
def cos(weights: list[float] | None = None, balance: bool = True) -> CosLoss:
    """CosimNet's cosine-similarity loss (y - exp(-|w·cos + b|))² per side output."""
    return CosLoss(weights, balance)


@register_loss("fcn_metrics", needs=("logits", "distances"))
def fcn_metrics(lam: float = 3.0, margin: float = 2.0, tau: float = 0.0, pos_weight: float = 1.0,
                weights: list[float] | None = None) -> FCNMetrics:
    """FCN-Metrics: classification cross-entropy + λ·contrastive on the features (λ = 3)."""
    return FCNMetrics(lam, margin, tau, pos_weight, weights)

"""Classification losses on change logits (FC-Siam baselines, the FCN head of FCN-Metrics)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.losses.base import layer_weights, masked_mean, register_loss


class WeightedBCE(nn.Module):
    """Binary cross-entropy on each side output's logits, weighted per layer; `pos_weight` offsets the
    rarity of changed pixels (Daudt et al. weight the classes by their inverse frequency)."""

    def __init__(self, pos_weight: float = 1.0, weights: list[float] | None = None):
        super().__init__()
        self.pos_weight, self.weights = float(pos_weight), weights

    def forward(self, outputs: dict, target: torch.Tensor, valid: torch.Tensor | None = None):
        logits = outputs["logits"]
        betas = layer_weights(self.weights, len(logits))
        pw = torch.tensor(self.pos_weight, device=target.device)
        total = target.new_zeros(())
        parts = {}
        for i, (b, z) in enumerate(zip(betas, logits)):
            ce = F.binary_cross_entropy_with_logits(z.float(), target, pos_weight=pw, reduction="none")
            term = masked_mean(ce, valid)
            parts[f"bce{i}"] = float(term.detach())
            total = total + b * term
        return total, parts


@register_loss("bce", needs=("logits",))
def bce(pos_weight: float = 1.0, weights: list[float] | None = None) -> WeightedBCE:
    """Binary cross-entropy on change logits, positive-class weight and per-side-output weights."""
    return WeightedBCE(pos_weight, weights)

"""Losses of paper 001 (semi-supervised change detection by distillation from feature-metric alignment) for
the `simsac` model: each takes the outputs of `SimSaC.forward_train` (per-level ``flows`` and ``logits``,
coarse to fine, and the encoder features ``feats_r``/``feats_q``).

- ``simsac_sup`` (eq. 2): hierarchical end-point error against the true flow + hierarchical focal loss against
  the change mask, on labelled (synthetic) pairs;
- ``simsac_unsup`` (eq. 6): ℓ_feat (eq. 3) + λ1 ℓ_cr (eq. 4) + λ2 ℓ_sm (eq. 5) on unlabelled pairs, each term
  switchable (weight 0: off);
- ``simsac_dist`` (eq. 7): EPE + focal of the student's outputs against the teacher's, detached.

The functions below are the single terms; the registered modules combine them and return
``(loss, {part: float})`` like every cdtool loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.losses.base import register_loss
from cdtool.models.simsac import warp


def _down(x: torch.Tensor, size, mode: str = "area") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode) if mode == "area" else \
        F.interpolate(x, size=size, mode=mode, align_corners=False)


def _weights(w: list[float] | None, n: int) -> list[float]:
    return [1.0 / n] * n if w is None else [float(v) for v in w[-n:]]


def epe(flow: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean end-point error (pixels) of flow against target (B, 2, h, w) over valid pixels."""
    d = (flow - target).norm(dim=1, keepdim=True)
    if valid is None:
        return d.mean()
    return (d * valid).sum() / valid.sum().clamp_min(1.0)


def hierarchical_epe(flows: list[torch.Tensor], target: torch.Tensor, valid: torch.Tensor | None = None,
                     weights: list[float] | None = None) -> torch.Tensor:
    """Σ_l w_l EPE(flow_l, target area-averaged to level l); flows in full-resolution pixels at every level."""
    total = 0.0
    for w, f in zip(_weights(weights, len(flows)), flows):
        size = f.shape[-2:]
        t = _down(target, size)
        v = None if valid is None else (_down(valid.float(), size) > 0.999).float()
        total = total + w * epe(f, t, v)
    return total


def focal(logit: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, gamma: float = 2.0,
          alpha: float = 0.5) -> torch.Tensor:
    """Binary focal loss with soft targets in [0, 1]; alpha weighs the positives (0.5: balanced)."""
    p = torch.sigmoid(logit)
    ce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    a = alpha * target + (1 - alpha) * (1 - target)
    loss = 2 * a * (1 - pt).pow(gamma) * ce
    if valid is None:
        return loss.mean()
    return (loss * valid).sum() / valid.sum().clamp_min(1.0)


def hierarchical_focal(logits: list[torch.Tensor], target: torch.Tensor, valid: torch.Tensor | None = None,
                       weights: list[float] | None = None, gamma: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Σ_l w_l focal(logit_l, mask area-averaged to level l): soft targets at coarse levels."""
    total = 0.0
    for w, lg in zip(_weights(weights, len(logits)), logits):
        size = lg.shape[-2:]
        v = None if valid is None else (_down(valid.float(), size) > 0.999).float()
        total = total + w * focal(lg, _down(target.float(), size), v, gamma, alpha)
    return total


def similarity(feats_r: list[torch.Tensor], feats_q: list[torch.Tensor], flow: torch.Tensor, stride: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """s of eq. 3: Π_l (1 + cos(ω(F_r^l, V), F_q^l)) / 2 at the resolution of the finest feature level given
    (features upsampled to it, reference warped by `flow`, full-resolution pixels, at that level's `stride`);
    and the in-bounds mask of the warp."""
    size = feats_q[-1].shape[-2:]
    s, inb = 1.0, None
    for fr, fq in zip(feats_r, feats_q):
        fr = _down(fr, size, "bilinear")
        fq = _down(fq, size, "bilinear")
        frw, inb = warp(fr, flow, stride)
        s = s * (1 + F.cosine_similarity(frw, fq, dim=1, eps=1e-6).unsqueeze(1)) / 2
    return s, inb


def feature_metric(prob: torch.Tensor, sim: torch.Tensor, inb: torch.Tensor | None = None) -> torch.Tensor:
    """ℓ_feat (eq. 3): Σ (1 - M)(1 - s) / Σ (1 - M); pixels warped from outside the reference are left out."""
    w = (1 - prob) if inb is None else (1 - prob) * inb
    return (w * (1 - sim)).sum() / w.sum().clamp_min(1e-6)


def change_regularisation(prob: torch.Tensor, sim_detached: torch.Tensor) -> torch.Tensor:
    """ℓ_cr (eq. 4): -mean(s̄ log(1 - M))."""
    return -(sim_detached * torch.log((1 - prob).clamp_min(1e-6))).mean()


def edges(image: torch.Tensor, size) -> torch.Tensor:
    """Canny edge mask (B, 1, h, w) in {0, 1} of an image (B, C, H, W), resized to `size` first."""
    import kornia

    x = _down(image, size, "area")
    grey = x.mean(1, keepdim=True) if x.shape[1] != 3 else kornia.color.rgb_to_grayscale(x)
    lo, hi = grey.amin(dim=(2, 3), keepdim=True), grey.amax(dim=(2, 3), keepdim=True)
    grey = (grey - lo) / (hi - lo).clamp_min(1e-6)  # Canny's thresholds are for [0, 1] images
    _, e = kornia.filters.canny(grey, low_threshold=0.1, high_threshold=0.2)
    return (e > 0).float()


def edge_smoothness(prob: torch.Tensor, sim_detached: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """ℓ_sm (eq. 5): mean over pixels of (1 - s̄) Σ_{x, y} BCE(|∂M/∂x_n|, E)."""
    gx = F.pad((prob[..., :, 1:] - prob[..., :, :-1]).abs(), (0, 1, 0, 0))
    gy = F.pad((prob[..., 1:, :] - prob[..., :-1, :]).abs(), (0, 0, 0, 1))
    bce = sum(F.binary_cross_entropy(g.clamp(1e-4, 1 - 1e-4), edge, reduction="none") for g in (gx, gy))
    return ((1 - sim_detached) * bce).mean()


@register_loss("simsac_sup", needs=("flows", "logits"))
class SupervisedLoss(nn.Module):
    """L_sup (eq. 2): hierarchical EPE of the flow + hierarchical focal loss of the change, labelled pairs."""

    def __init__(self, flow_weight: float = 1.0, change_weight: float = 1.0, gamma: float = 2.0, alpha: float = 0.5,
                 level_weights: list[float] | None = None):
        super().__init__()
        self.fw, self.cw, self.gamma, self.alpha, self.lw = flow_weight, change_weight, gamma, alpha, level_weights

    def forward(self, out: dict, mask: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor | None = None):
        lv = hierarchical_epe(out["flows"], flow, valid, self.lw)
        lm = hierarchical_focal(out["logits"], mask, valid, self.lw, self.gamma, self.alpha)
        return self.fw * lv + self.cw * lm, {"epe": float(lv.detach()), "focal": float(lm.detach())}


@register_loss("simsac_unsup", needs=("flows", "logits", "feats_r", "feats_q"))
class UnsupervisedLoss(nn.Module):
    """L_unsup (eq. 6): feat · ℓ_feat + cr · ℓ_cr + sm · ℓ_sm (paper: 1, 0.01 for PCD, 1); 0 switches a term off."""

    def __init__(self, feat: float = 1.0, cr: float = 0.01, sm: float = 1.0, levels: int = 3):
        super().__init__()
        self.feat, self.cr, self.sm, self.levels = float(feat), float(cr), float(sm), int(levels)

    def active(self) -> bool:
        return any((self.feat, self.cr, self.sm))

    def forward(self, out: dict, after: torch.Tensor, strides: tuple[int, ...]):
        """`after`: the query images (for the Canny edges); `strides` of the model's levels."""
        prob = torch.sigmoid(out["logits"][-1])
        flow = out["flows"][-1]
        # the `levels` finest encoder levels, features gradient-stopped (eq. 3); M and V at the finest
        fr = [f.detach() for f in out["feats_r"][-self.levels:]]
        fq = [f.detach() for f in out["feats_q"][-self.levels:]]
        sim, inb = similarity(fr, fq, flow, strides[-1])
        parts, total = {}, prob.new_zeros(())
        if self.feat:
            lf = feature_metric(prob, sim, inb)
            total, parts["feat"] = total + self.feat * lf, float(lf.detach())
        sd = sim.detach()
        if self.cr:
            lc = change_regularisation(prob, sd)
            total, parts["cr"] = total + self.cr * lc, float(lc.detach())
        if self.sm:
            ls = edge_smoothness(prob, sd, edges(after, prob.shape[-2:]))
            total, parts["sm"] = total + self.sm * ls, float(ls.detach())
        return total, parts


@register_loss("simsac_dist", needs=("flows", "logits"))
class DistillationLoss(nn.Module):
    """L_dist (eq. 7): hierarchical EPE + focal of the student against the teacher's detached outputs
    (soft change targets); `weight` 0 switches it off."""

    def __init__(self, weight: float = 1.0, gamma: float = 2.0, alpha: float = 0.5,
                 level_weights: list[float] | None = None):
        super().__init__()
        self.weight, self.gamma, self.alpha, self.lw = float(weight), gamma, alpha, level_weights

    def forward(self, student: dict, teacher: dict):
        n = len(student["flows"])
        w = _weights(self.lw, n)
        lv = sum(wi * epe(s, t.detach()) for wi, s, t in zip(w, student["flows"], teacher["flows"]))
        lm = sum(wi * focal(s, torch.sigmoid(t.detach()), None, self.gamma, self.alpha)
                 for wi, s, t in zip(w, student["logits"], teacher["logits"]))
        return self.weight * (lv + lm), {"dist_epe": float(lv), "dist_focal": float(lm)}

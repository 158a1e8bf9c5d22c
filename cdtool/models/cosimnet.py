"""CosimNet (Guo et al. 2018, "Learning to measure change: fully convolutional siamese metric networks
for scene change detection", paper 002) and its FCN-Metrics variant.

A siamese, fully convolutional encoder shaped like a small DeepLab-v2 (two pooled stages, then dilated
"conv5", an atrous "fc6" and a 1×1 "fc7") maps both dates to features. Every feature vector used by the
metric is first scaled to unit length, ‖f‖ = 1 at each pixel of each layer (the paper: "we first constrain
this embedding to live on the C-dimensional hypersphere, i.e. ‖feat‖ = 1"; the authors' code l2-normalises
conv5, fc7 and the embedding alike); a fixed metric, Euclidean (l2) or cosine, then compares them pixel by
pixel into a distance map, upsampled bilinearly to the input size. On unit vectors the l2 distance lies in
[0, 2] and the contrastive margin m = 2 (the authors' code, with normalised features; the paper gives no
number) is the largest distance there is; after a ReLU (conv5, fc6) features are non-negative and the
largest reachable distance is √2, so changed pixels there are pushed towards orthogonal features. With
multi-layer side outputs (MLSO) the distance is taken at conv5, fc6 and fc7 (the last `side_outputs` of
them), each trained by its own contrastive loss weighted by β, and the prediction is the mean of the
per-layer change scores. The paper fine-tunes ImageNet DeepLab weights; none can be downloaded here, so it
trains from scratch, and `cdtool train` can initialise the encoder from a local weights file
(recipe key `model.init`).

Distances become change scores in [0, 1] with a fixed monotone map so detection has one interface:
l2: s = D / (D + m/2), 0.5 halfway to the margin m (D ≤ 2, so s ≤ 2/3 at m = 2); cosine:
s = 1 - exp(-|w·cos + b|) with the learnable w, b of the paper's cosine loss. The detection threshold is
chosen on validation pairs and stored in the checkpoint. FCN-Metrics adds a 1×1 classifier on the two
dates' fc7 features (as they come out of the encoder, not normalised: the paper does not say) and predicts
with its sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model

LAYERS = ("conv5", "fc6", "fc7")


def unit_length(f: torch.Tensor) -> torch.Tensor:
    """Each pixel's feature vector (dim 1) scaled to ‖f‖ = 1; an all-zero vector stays zero."""
    return F.normalize(f.float(), p=2.0, dim=1, eps=1e-12)


def _block(cin: int, cout: int, dilation: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MetricEncoder(nn.Module):
    """DeepLab-v2-like trunk at 1/4 resolution; returns the features of conv5, fc6 and fc7."""

    def __init__(self, in_channels: int, width: int, embed: int):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_block(in_channels, w), _block(w, w), nn.MaxPool2d(2),
                                  _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2))
        self.conv5 = nn.Sequential(_block(2 * w, 4 * w, dilation=2), _block(4 * w, 4 * w, dilation=2))
        self.fc6 = nn.Sequential(_block(4 * w, 4 * w, dilation=4), nn.Dropout2d(0.1))
        self.fc7 = nn.Conv2d(4 * w, embed, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c5 = self.conv5(self.stem(x))
        f6 = self.fc6(c5)
        return [c5, f6, self.fc7(f6)]


class CosimNet(ChangeModel):
    halo = 32
    size_multiple = 4

    def __init__(self, in_channels: int = 3, metric: str = "l2", side_outputs: int = 3, width: int = 16,
                 embed: int = 32, margin: float = 2.0, classifier: bool = False):
        super().__init__()
        if metric not in ("l2", "cos"):
            raise ValueError(f"metric must be 'l2' or 'cos', got {metric!r}")
        if not 1 <= side_outputs <= 3:
            raise ValueError(f"side_outputs must be 1, 2 or 3, got {side_outputs}")
        if not 0.0 < float(margin) <= 2.0:
            raise ValueError(f"margin must be in (0, 2]: features have unit length, so l2 distances lie in "
                             f"[0, 2]; got {margin}")
        self.metric, self.side_outputs, self.margin = metric, side_outputs, float(margin)
        self.encoder = MetricEncoder(in_channels, width, embed)
        # the paper's learnable scale and shift of the cosine similarity, one pair per side output
        self.cos_w = nn.Parameter(torch.full((side_outputs,), 5.0))
        self.cos_b = nn.Parameter(torch.full((side_outputs,), -5.0))
        self.classifier = nn.Conv2d(2 * embed, 1, 1) if classifier else None

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pixel distance of two feature maps that `forward_train` has scaled to unit length."""
        if self.metric == "l2":
            return (a - b).pow(2).sum(1, keepdim=True).add(1e-8).sqrt()
        return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-6).unsqueeze(1)

    def _score(self, d: torch.Tensor, k: int) -> torch.Tensor:
        if self.metric == "l2":
            return d / (d + 0.5 * self.margin)
        cos = 1.0 - d
        return 1.0 - torch.exp(-(self.cos_w[k] * cos + self.cos_b[k]).abs())

    def forward_train(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        """Distance maps and change scores per side output (shallow to deep) and, for FCN-Metrics, logits."""
        size = before.shape[-2:]
        n = before.shape[0]
        feats = self.encoder(torch.cat([before, after]))[-self.side_outputs:]
        dists, scores = [], []
        for k, f in enumerate(feats):
            u = unit_length(f)  # the paper's hypersphere: ‖f‖ = 1 before any metric
            d = F.interpolate(self._distance(u[:n], u[n:]), size=size, mode="bilinear", align_corners=False)
            dists.append(d)
            scores.append(self._score(d, k))
        out = {"distances": dists, "layer_scores": scores}
        if self.classifier is not None:
            top = feats[-1]
            z = self.classifier(torch.cat([top[:n], top[n:]], 1))
            out["logits"] = [F.interpolate(z, size=size, mode="bilinear", align_corners=False)]
        return out

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        out = self.forward_train(before, after)
        if self.classifier is not None:
            return torch.sigmoid(out["logits"][-1].float())
        return torch.stack(out["layer_scores"]).mean(0).clamp(0.0, 1.0)


@register_model("cosimnet", paper="Guo et al. 2018, CosimNet (paper 002)")
def cosimnet(in_channels: int = 3, metric: str = "l2", side_outputs: int = 3, width: int = 16, embed: int = 32,
             margin: float = 2.0) -> CosimNet:
    """CosimNet: siamese FCN, l2/cosine feature distance map, multi-layer side outputs; train with contrastive/TCL."""
    return CosimNet(in_channels, metric, side_outputs, width, embed, margin)


@register_model("fcn_metrics", paper="Guo et al. 2018, FCN-Metrics (paper 002)")
def fcn_metrics(in_channels: int = 3, side_outputs: int = 1, width: int = 16, embed: int = 32,
                margin: float = 2.0) -> CosimNet:
    """FCN-Metrics: CosimNet trunk plus a change classifier; trained with classification + 3·contrastive."""
    return CosimNet(in_channels, "l2", side_outputs, width, embed, margin, classifier=True)

"""PCA-kmeans: label-free change detection by clustering the principal components of local difference patches.

Celik 2009, "Unsupervised change detection in satellite images using principal component analysis and
k-means clustering", IEEE GRSL 6(4). The difference image is |after - before| per band (dates standardised
per band, so every band counts in units of its own scene std). Each pixel is described by its h x h
neighbourhood in all C bands (C*h*h values); PCA is estimated on non-overlapping blocks, and each pixel's
centred neighbourhood is projected on the S leading eigenvectors. k-means (k = 2) splits the projections;
the cluster whose centroid reconstructs to the larger mean difference is "changed".

Detection streams a raster tile by tile, so the statistics (mean vector, eigenvectors, centroids) are
fitted once per pair (`fit`) and forward applies them to any tile: the projection is a convolution with
the eigenvectors as kernels, so tiles stitch exactly away from a halo of h//2 pixels.

Score s = d_u / (d_u + d_c) (distances to the unchanged and changed centroids): s >= 0.5 exactly where
k-means assigns the pixel to the changed cluster, hence the default threshold of 0.5.

Floor (`min_change`, shared with IR-MAD): k-means always finds a "changed" cluster, even in two identical
dates or dates that differ only by a global radiometric change, where it would split quantisation noise.
The score is therefore multiplied by `noise_floor`, a smooth step of the pixel's RMS standardised band
difference r = sqrt(mean_c (after - before)^2): 0 below min_change/2, 1/2 at min_change, 1 from
1.5 * min_change. A pixel with r < min_change never reaches 0.5; one with r >= 1.5 * min_change keeps its
score. Degenerate fits (no difference at all: zero variance) score 0 everywhere, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cdtool.errors import InputError
from cdtool.models.base import PairFittedModel, Tiles, thin
from cdtool.models.classical import noise_floor
from cdtool.models.registry import register_model

class PCAKMeans(PairFittedModel):
    default_threshold = 0.5
    exact_halo = True  # the block's half-width is all a pixel sees

    def __init__(self, block: int = 5, components: int | None = None, min_change: float = 0.3):
        super().__init__()
        if block < 1 or block % 2 == 0:
            raise InputError(f"pca_kmeans: block must be an odd number of pixels, got {block}")
        if components is not None and components < 1:
            raise InputError(f"pca_kmeans: components must be at least 1, got {components}")
        self.block, self.components, self.min_change = block, components, float(min_change)
        self.halo = block // 2

    def _project(self, diff: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) difference -> (B, S, H, W) principal components of each pixel's neighbourhood."""
        p = self.halo
        return F.conv2d(F.pad(diff, (p, p, p, p), mode="replicate") if p else diff, kernels, bias)

    def _estimate(self, tiles: Tiles) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """PCA and k-means on normalised (before, after, valid) tiles of one pair: projection kernels
        (S, C, h, h), bias -V^T psi (S,), centroids (unchanged, changed)."""
        h = self.block
        diffs, valids = [], []
        for before, after, valid in tiles:  # invalid pixels zeroed: nodata never reaches the statistics
            d = (after - before).abs().detach().to("cpu", torch.float64)
            valids.append(valid.detach().to("cpu", torch.float64)[None, None])
            diffs.append(torch.where(valids[-1][0] > 0, d, 0.0)[None])
        c = diffs[0].shape[1]
        # PCA on non-overlapping h x h blocks wholly valid (Celik's sampling); every pixel if there are too few
        blocks = [F.unfold(d, h, stride=h)[0][:, F.unfold(v, h, stride=h)[0].min(0).values == 1].T
                  for d, v in zip(diffs, valids)]
        x = torch.cat(blocks)
        if len(x) < 2:
            p = self.halo
            x = torch.cat([F.unfold(F.pad(d, (p, p, p, p), mode="replicate"), h)[0][:, v.flatten() > 0].T
                           for d, v in zip(diffs, valids)])
        x = thin(x)
        mean = x.mean(0)
        vals, vecs = torch.linalg.eigh(torch.cov(x.T, correction=0))
        vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1)
        s = min(self.components or _enough(vals), len(vals))
        v = vecs[:, :s]  # (C*h*h, S)
        kernels, bias = v.T.reshape(s, c, h, h), -(v.T @ mean)
        # k-means on the projections of pixels whose whole neighbourhood is valid
        feats = []
        for d, valid in zip(diffs, valids):
            inside = -F.max_pool2d(-valid, h, stride=1, padding=self.halo)
            f = self._project(d, kernels, bias)[0].flatten(1).T  # (H*W, S)
            feats.append(f[inside.flatten() > 0] if (inside > 0).any() else f[valid.flatten() > 0])
        centroids = _two_means(thin(torch.cat(feats)))
        recon = (mean + centroids @ v.T).mean(1)  # mean difference each centroid stands for
        return kernels, bias, centroids[recon.argsort()]

    def _score(self, before: torch.Tensor, after: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor,
               centroids: torch.Tensor) -> torch.Tensor:
        f = self._project((after - before).abs(), kernels, bias)
        d_u, d_c = ((f - c[None, :, None, None]).pow(2).sum(1, keepdim=True).sqrt() for c in centroids)
        s = d_u / (d_u + d_c).clamp_min(1e-12)  # both 0 only when the fit is degenerate: score 0
        return s * noise_floor(before, after, self.min_change)


def _enough(vals: torch.Tensor, share: float = 0.9, most: int = 10) -> int:
    """Fewest leading components explaining `share` of the variance, at most `most` (1 if none varies)."""
    total = vals.sum()
    if total <= 0:
        return 1
    return int(min(most, int((vals.cumsum(0) / total < share).sum()) + 1, len(vals)))


def _two_means(x: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """Lloyd's k-means with k = 2 on (N, S) samples, started deterministically from the samples with the
    smallest and largest first component. Returns the (2, S) centroids."""
    c = torch.stack([x[x[:, 0].argmin()], x[x[:, 0].argmax()]])
    total, labels = x.sum(0), None
    for _ in range(iters):
        new = x @ (c[1] - c[0]) > 0.5 * (c[1] @ c[1] - c[0] @ c[0])  # nearer to c[1]: the bisecting plane
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        n1 = int(labels.sum())
        s1 = labels.to(x.dtype) @ x
        if 0 < n1 < len(x):
            c = torch.stack([(total - s1) / (len(x) - n1), s1 / n1])
    return c


@register_model("pca_kmeans", paper="Celik 2009, IEEE GRSL 6(4): PCA and k-means change detection")
def pca_kmeans(block: int = 5, components: int | None = None, min_change: float = 0.3) -> PCAKMeans:
    """PCA-kmeans (Celik 2009): k-means on PCA of h x h difference patches; label-free, any band count."""
    return PCAKMeans(block, components, min_change)

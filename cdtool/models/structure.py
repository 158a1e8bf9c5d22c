"""Change between images from two sensors (SAR and optical, NIR and RGB): compare each date's own structure.

Pixel values of two sensors cannot be compared, but what looks alike within one image can: where nothing
changed, a patch that resembles some patches elsewhere in the scene in one date (the same crop, the same kind
of roof) still resembles those patches in the other date, whatever each sensor makes of them. This is the
structure consistency of nonlocal patch-similarity graphs (Sun et al. 2021, "Nonlocal patch similarity based
heterogeneous remote sensing change detection", Pattern Recognition 109; the INLPG pairs), in a form that
streams tile by tile:

- `fit` picks `anchors` patch locations spread over the pair's valid pixels and keeps both dates' patches
  there (each date per-image standardised);
- each pixel's squared patch distance to every anchor, in each date: a convolution with the anchor patches;
- the `neighbours` anchors nearest to a pixel in one date, and their rank among all anchors in the other
  date. Unchanged: they are near there too (low ranks). Changed: their ranks are those of any anchor. A
  changed area larger than any local window is still found, as its anchors lie all over the scene;
- both directions, each weighted by how distinct its own nearest anchors are (a pixel like no anchor has no
  structure to carry over).

The score is the weighted mean of the two directions' ranks, each rescaled from "the k nearest there too" (0)
to "the k farthest" (1): identical dates score exactly 0, ranks no better than chance about 0.5. The default
threshold 0.5 flags pixels whose structure carries over to the other date no better than chance (chosen after
seeing INLPG's pairs' scores: README "Dates from two sensors"). Each date is compared only with itself, so the
dates may differ in band count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cdtool.models.base import PairFittedModel, Tiles
from cdtool.models.registry import register_model

ROWS_PER_CHUNK = 64  # output rows scored at once: bounds the (anchors, rows, width) distance maps
ANCHOR_GRID = 4  # anchors are drawn from every 4th row and column of the fit tiles' valid pixels


def anchor_distances(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(B, M, H, W) mean squared difference between the patch at each pixel of `x` (B, C, H + p - 1, W + p - 1),
    already padded by half a patch, and each anchor patch (M, C, p, p): |x|² - 2 x⋆a + |a|² per pixel."""
    n = anchors[0].numel()
    ones = torch.ones((1, x.shape[1], *anchors.shape[-2:]), dtype=x.dtype, device=x.device)
    energy = F.conv2d(x.square(), ones)
    cross = F.conv2d(x, anchors)
    return (energy - 2 * cross + anchors.square().sum(dim=(1, 2, 3))[None, :, None, None]).clamp_min(0) / n


def carried_rank(near_in: torch.Tensor, ranked_in: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How well `near_in`'s k nearest anchors stay near in `ranked_in` (both (B, M, H, W)): their ranks there
    rescaled to [0, 1] (0: they are the k nearest there too, 1: the k farthest; chance about 0.5), and how
    distinct they are in `near_in` (1 - their mean distance over the mean distance to all anchors, in [0, 1]);
    both (B, 1, H, W). Ranks are counted in integers, so identical dates give exactly 0."""
    m = near_in.shape[1]
    nearest, idx = near_in.topk(k, dim=1, largest=False)
    distinct = 1.0 - nearest.mean(dim=1, keepdim=True) / near_in.mean(dim=1, keepdim=True).clamp_min(1e-12)
    there = ranked_in.gather(1, idx)
    order = ranked_in.movedim(1, -1).sort(dim=-1).values.contiguous()
    below = torch.searchsorted(order, there.movedim(1, -1).contiguous())  # anchors strictly nearer there
    best, worst = k * (k - 1) // 2, k * (2 * m - k - 1) // 2  # the sums of the k lowest and highest ranks
    excess = (below.sum(dim=-1) - best).clamp_min(0).to(torch.float64) / (worst - best)
    return excess.to(near_in.dtype)[:, None], distinct.clamp(0.0, 1.0)


class PatchStructure(PairFittedModel):
    exact_halo = True  # a pixel sees its own patch; the anchors are the pair's, fitted once
    cross_sensor = True
    fits_whole_pair = True  # anchors from a corner of the scene would miss what the rest of it holds
    default_threshold = 0.5  # no better than chance (module doc)

    def __init__(self, patch: int = 5, anchors: int = 256, neighbours: int = 16):
        super().__init__()
        if patch < 1 or patch % 2 == 0:
            raise ValueError(f"patch_structure: patch must be an odd number of pixels, got {patch}")
        if not 1 <= neighbours < anchors:
            raise ValueError(f"patch_structure: need 1 <= neighbours < anchors, got {neighbours} and {anchors}")
        self.patch, self.anchors, self.neighbours = int(patch), int(anchors), int(neighbours)
        self.halo = self.patch // 2

    def _estimate(self, tiles: Tiles) -> tuple[torch.Tensor, torch.Tensor]:
        """Both dates' patches at `anchors` locations spread evenly over the valid pixels of the tiles (taken on
        a grid of ANCHOR_GRID pixels, then every k-th)."""
        p, h = self.patch, self.patch // 2
        spots = []
        for t, (_, _, valid) in enumerate(tiles):
            inside = torch.zeros_like(valid)
            inside[h:valid.shape[0] - h:ANCHOR_GRID, h:valid.shape[1] - h:ANCHOR_GRID] = True
            inside &= valid
            spots += [(t, r, c) for r, c in torch.nonzero(inside).tolist()]
        bands = tiles[0][0].shape[0]
        if len(spots) < self.anchors:  # too few valid pixels to say anything: every score 0
            zeros = torch.zeros((self.anchors, bands, p, p))
            return zeros, zeros.clone()
        pick = torch.linspace(0, len(spots) - 1, self.anchors).round().long().tolist()
        found = [spots[i] for i in pick]
        return tuple(torch.stack([tiles[t][d][:, r - h:r + h + 1, c - h:c + h + 1] for t, r, c in found]).float()
                     for d in (0, 1))

    def _score(self, before: torch.Tensor, after: torch.Tensor, anchors_b: torch.Tensor,
               anchors_a: torch.Tensor) -> torch.Tensor:
        h = self.halo
        pb = F.pad(before, (h, h, h, h), mode="replicate")
        pa = F.pad(after, (h, h, h, h), mode="replicate")
        out = []
        for r0 in range(0, before.shape[-2], ROWS_PER_CHUNK):
            r1 = min(r0 + ROWS_PER_CHUNK, before.shape[-2])
            db = anchor_distances(pb[..., r0:r1 + 2 * h, :], anchors_b)
            da = anchor_distances(pa[..., r0:r1 + 2 * h, :], anchors_a)
            rank_ba, w_b = carried_rank(db, da, self.neighbours)
            rank_ab, w_a = carried_rank(da, db, self.neighbours)
            out.append(((w_b * rank_ba + w_a * rank_ab) / (w_b + w_a).clamp_min(1e-6)).clamp(0.0, 1.0))
        return torch.cat(out, dim=-2)


@register_model("patch_structure", paper="Sun et al. 2021, nonlocal patch similarity (structure consistency) for "
                                         "heterogeneous change detection")
def patch_structure(patch: int = 5, anchors: int = 256, neighbours: int = 16) -> PatchStructure:
    """Dates from two sensors (SAR vs optical): compares each date's own patch-similarity structure; any bands."""
    return PatchStructure(patch, anchors, neighbours)

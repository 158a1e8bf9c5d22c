"""The one interface detection relies on, whatever the model family.

A change model takes the two dates as normalised float tensors `(B, C, H, W)` each and returns change
scores in [0, 1] as `(B, 1, H, W)` ("dense" models). `halo` is how many pixels at a tile's inner edges
are unreliable (roughly the receptive radius): the stitcher gives them no weight, so a stitched map
equals the whole-image map. `size_multiple` is the factor the input sides must divide by (encoders
that downsample); the predictor pads with reflection and crops back.

Label-free models that estimate statistics of the whole pair (PCA-kmeans, IR-MAD) set `needs_fit` and
implement `fit`: detection calls it once per pair, before any tile is scored, with normalised tiles
spread over the pair, so a streamed map equals one computed from the same statistics on the whole image.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ChangeModel(nn.Module):
    """Subclasses define forward(before, after) -> (B, 1, H, W) scores; nn.Module refuses a missing one."""

    halo: int = 0
    size_multiple: int = 1
    needs_fit: bool = False

    def fit(self, tiles: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Estimate per-pair statistics from normalised (before (C,h,w), after (C,h,w), valid (h,w) bool)
        tiles spread over the pair. Models without per-pair statistics need nothing."""

"""The one interface detection relies on, whatever the model family.

A change model takes the two dates as normalised float tensors `(B, C, H, W)` each and returns change
scores in [0, 1] as `(B, 1, H, W)` ("dense" models). `halo` is how many pixels at a tile's inner edges
are unreliable (roughly the receptive radius): the stitcher gives them no weight, so a stitched map
equals the whole-image map. `size_multiple` is the factor the input sides must divide by (encoders
that downsample); the predictor pads with reflection and crops back.
"""

from __future__ import annotations

import torch.nn as nn


class ChangeModel(nn.Module):
    """Subclasses define forward(before, after) -> (B, 1, H, W) scores; nn.Module refuses a missing one."""

    halo: int = 0
    size_multiple: int = 1

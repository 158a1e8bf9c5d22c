"""Dense maps from models that score one fixed-size window: fully connected patch classifiers (paper 000's
siamese and VAE scorers, the one-class autoencoders of papers 003 and 004) cannot take a tile, so they are
slid over it: a `patch`×`patch` window every `cell` pixels, its score painted on its `cell`×`cell` centre
(the PCD protocol: 112×112 windows, 14×14 centres).

The cells lie on a grid from the tile's origin, and detection starts every tile on that grid
(`size_multiple`), so a streamed map equals the whole-image map; `halo` covers the context a cell's window
reaches beyond it. Windows are scored one grid row at a time, so memory stays bounded by the tile width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CentrePatch(nn.Module):
    def __init__(self, model: nn.Module, patch: int, cell: int = 14, chunk: int = 256):
        super().__init__()
        if patch < cell or (patch - cell) % 2:
            raise ValueError(f"a {patch}-pixel window cannot centre a {cell}-pixel cell")
        self.model, self.patch, self.cell, self.chunk = model, int(patch), int(cell), int(chunk)
        self.pad = (self.patch - self.cell) // 2
        self.halo = self.pad + self.cell - 1  # a pixel's window reaches this far, wherever it lies in its cell
        self.size_multiple = self.cell

    def score_windows(self, windows: torch.Tensor, channels: int) -> torch.Tensor:
        """(N, 2C, patch, patch) stacked windows -> (N,) scores, `chunk` windows at a time."""
        out = []
        for part in windows.split(self.chunk):
            y = self.model(part[:, :channels], part[:, channels:])
            y = y.reshape(len(part), -1)
            out.append(y[:, y.shape[1] // 2] if y.shape[1] > 1 else y[:, 0])
        return torch.cat(out)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        b, c, h, w = before.shape
        nh, nw = -(-h // self.cell), -(-w // self.cell)
        need_h, need_w = (nh - 1) * self.cell + self.patch, (nw - 1) * self.cell + self.patch
        x = F.pad(torch.cat([before, after], 1), (self.pad, need_w - self.pad - w, self.pad, need_h - self.pad - h),
                  mode="replicate")
        cells = torch.empty(b, nh, nw, dtype=before.dtype, device=before.device)
        for i in range(nh):  # one grid row of windows: (B, 2C, patch, need_w) -> (B * nw, 2C, patch, patch)
            strip = x[:, :, i * self.cell:i * self.cell + self.patch]
            windows = strip.unfold(3, self.patch, self.cell).permute(0, 3, 1, 2, 4).reshape(b * nw, 2 * c,
                                                                                          self.patch, self.patch)
            cells[:, i] = self.score_windows(windows, c).view(b, nw).to(cells.dtype)
        dense = cells.repeat_interleave(self.cell, 1).repeat_interleave(self.cell, 2)
        return dense[:, None, :h, :w]


def as_dense(model: nn.Module) -> nn.Module:
    """The model as detection runs it: wrapped in `CentrePatch` when it scores only one window size
    (`patch_only`, `patch_size`), else unchanged."""
    if getattr(model, "patch_only", False):
        return CentrePatch(model, int(model.patch_size), int(getattr(model, "cell", 14)))
    return model

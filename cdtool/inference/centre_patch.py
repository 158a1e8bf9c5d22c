"""Dense maps from models that score one fixed-size window: fully connected patch classifiers (paper 000's
siamese and VAE scorers, the one-class autoencoders of papers 003 and 004) cannot take a tile, so they are
slid over it: a `patch`×`patch` window every `cell` pixels, its score painted on its `cell`×`cell` centre
(the PCD protocol: 112×112 windows, 14×14 centres).

The cells lie on a grid from the tile's origin, and detection starts every tile on that grid
(`size_multiple`), so a streamed map equals the whole-image map. `halo` is the band along a tile's inner
edges whose cells' windows reach past the tile: the window's margin, plus up to a cell less one where the
tile edge cuts a cell. Windows are copied out of the padded input `chunk` at a time, so memory stays bounded
whatever the tile size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cdtool.errors import InputError
from cdtool.models.base import ChangeModel


class CentrePatch(ChangeModel):
    def __init__(self, model: ChangeModel, patch: int, cell: int = 14, chunk: int = 256):
        super().__init__()
        if patch < cell or (patch - cell) % 2:
            raise InputError(f"{type(model).__name__}: a {patch}-pixel window cannot centre a {cell}-pixel cell")
        self.model, self.patch, self.cell, self.chunk = model, int(patch), int(cell), int(chunk)
        self.pad = (self.patch - self.cell) // 2
        self.halo = self.pad + self.cell - 1
        self.size_multiple = self.cell

    def score_windows(self, windows: torch.Tensor, channels: int) -> torch.Tensor:
        """(N, 2C, patch, patch) stacked before/after windows -> (N,) scores, `chunk` windows at a time."""
        return torch.cat([self._score(part[:, :channels], part[:, channels:]) for part in windows.split(self.chunk)])

    def _score(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        y = self.model(before, after)
        if y.numel() != len(before):
            raise InputError(f"{type(self.model).__name__}: a patch-only model must return one score per window, "
                             f"got shape {tuple(y.shape)} for {len(before)} windows")
        return y.reshape(len(before))

    @property
    def wrapped(self) -> ChangeModel:
        return self.model

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        b, c, h, w = before.shape
        nh, nw = -(-h // self.cell), -(-w // self.cell)
        need_h, need_w = (nh - 1) * self.cell + self.patch, (nw - 1) * self.cell + self.patch
        x = F.pad(torch.cat([before, after], 1), (self.pad, need_w - self.pad - w, self.pad, need_h - self.pad - h),
                  mode="replicate")
        # (B, nh, nw, 2C, patch, patch): a view; only `chunk` windows at a time are copied out of it
        windows = x.unfold(2, self.patch, self.cell).unfold(3, self.patch, self.cell).permute(0, 2, 3, 1, 4, 5)
        cells = torch.empty(b * nh * nw, dtype=before.dtype, device=before.device)
        for start in range(0, len(cells), self.chunk):
            flat = torch.arange(start, min(start + self.chunk, len(cells)), device=before.device)
            part = windows[flat // (nh * nw), flat // nw % nh, flat % nw]
            cells[start:start + len(flat)] = self._score(part[:, :c], part[:, c:]).to(cells.dtype)
        dense = cells.view(b, nh, nw).repeat_interleave(self.cell, 1).repeat_interleave(self.cell, 2)
        return dense[:, None, :h, :w]


def as_dense(model: ChangeModel, output: str) -> ChangeModel:
    """The model as detection runs it: a "centre" model that scores only one window size (`patch_only`, or a
    `patch_size`) wrapped in `CentrePatch`; others (dense models, `siamese_patch`, which slides as a
    convolution) unchanged."""
    if output != "centre" or not (model.patch_only or model.patch_size is not None):
        return model
    if model.patch_size is None:
        raise InputError(f"{type(model).__name__}: a patch-only model must state its window side (patch_size)")
    return CentrePatch(model, int(model.patch_size), int(model.cell))

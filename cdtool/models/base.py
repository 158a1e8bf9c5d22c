"""The one interface detection relies on, whatever the model family.

A change model takes the two dates as normalised float tensors `(B, C, H, W)` each and returns change
scores in [0, 1] as `(B, 1, H, W)` ("dense" models). Every hook detection, evaluation and training read from
a model is declared on `ChangeModel` with its default, so a model states only where it differs and callers
read plain attributes; `cdtool.models.registry.create_model` refuses a builder that returns anything else.

`halo` is how many pixels at a tile's inner edges are unreliable (roughly the receptive radius): the stitcher
gives them no weight, so a stitched map equals the whole-image map. `exact_halo` says the halo is the model's
whole reach (classical methods), so tiles overlapping by twice it already stitch exactly and detect overlaps
them by no more. `size_multiple` is the factor the input sides must divide by (encoders that downsample); the
predictor pads with reflection and crops back.

Label-free models that estimate statistics of the whole pair (PCA-kmeans, IR-MAD) set `needs_fit` and
implement `fit`: detection calls it once per pair, before any tile is scored, with normalised tiles
spread over the pair, so a streamed map equals one computed from the same statistics on the whole image.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

import torch
import torch.nn as nn


class ChangeModel(nn.Module):
    """Subclasses define forward(before, after) -> (B, 1, H, W) scores; nn.Module refuses a missing one. The
    class attributes below are the hooks callers read, with the value a model that does not set them has."""

    halo: int = 0  # pixels along a tile's inner edges the stitcher ignores
    exact_halo: bool = False  # the halo is the whole reach: overlapping tiles by twice it stitches exactly
    size_multiple: int = 1  # input sides are padded to a multiple of this
    needs_fit: bool = False  # `fit` must see the pair before any tile is scored
    fits_whole_pair: bool = False  # `fit` needs windows touching all of the pair, not a sample of its statistics
    # "centre" models that score one fixed-size window only (fully connected heads): detection slides a
    # `patch_size` window every `cell` pixels and paints its score on the `cell`-sized centre
    # (cdtool.inference.centre_patch); patch_size None means the model takes any size
    patch_only: bool = False
    patch_size: int | None = None
    cell: int = 14
    # what detection uses when a model is named by its registry name (label-free): checkpoints record their own
    default_threshold: float | str = "otsu"  # a probability, or a per-image method ("otsu", "kmeans", "gmm")
    default_normalization: Mapping[str, object] = MappingProxyType({"mode": "per-image"})  # copied by readers
    # training outputs (a dict of logits, distances, ...) for losses; None: the model has nothing to train
    forward_train: Callable[..., dict] | None = None
    # a joint flow + change model also has `forward_flow(before, after)` -> (B, 2, H, W) misregistration
    estimates_flow: bool = False
    # compares each date only with itself, so the dates may come from two sensors (SAR and optical): a
    # single-band date is then read as many times as the other date has bands
    cross_sensor: bool = False

    @property
    def wrapped(self) -> "ChangeModel | None":
        """The model a wrapper (resampling, sliding a patch model) runs; None for a model itself."""
        return None

    def fit(self, tiles: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Estimate per-pair statistics from normalised (before (C,h,w), after (C,h,w), valid (h,w) bool)
        tiles spread over the pair. Models without per-pair statistics need nothing."""


Tiles = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
MAX_FIT_SAMPLES = 1 << 18  # fit samples kept (every k-th): bounds memory and time on large fit sets


def thin(x: torch.Tensor, n: int = MAX_FIT_SAMPLES) -> torch.Tensor:
    """At most about n rows of x, every k-th: deterministic, and spread like the input."""
    return x[:: -(-len(x) // n)] if len(x) > n else x


class PairFittedModel(ChangeModel):
    """A label-free model whose statistics come from the pair itself (PCA-kmeans, IR-MAD). Subclasses define
    `_estimate(tiles) -> tuple of tensors` and `_score(before, after, *statistics)`; `fit` keeps the statistics
    of the pair being detected, and an unfitted model fits each sample of a batch on itself (whole images)."""

    needs_fit = True
    size_multiple = 1

    def __init__(self):
        super().__init__()
        self.statistics: tuple[torch.Tensor, ...] | None = None

    def _estimate(self, tiles: Tiles) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _score(self, before: torch.Tensor, after: torch.Tensor, *statistics: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, tiles: Tiles) -> None:
        self.statistics = tuple(t.to(torch.float32) for t in self._estimate(tiles))

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        with torch.autocast(before.device.type, enabled=False):
            before, after = before.float(), after.float()
            if self.statistics is not None:
                return self._score(before, after, *(t.to(before) for t in self.statistics))
            out = []
            for b, a in zip(before, after):
                whole = torch.ones(b.shape[-2:], dtype=torch.bool, device=b.device)
                out.append(self._score(b[None], a[None], *(t.to(before) for t in self._estimate([(b, a, whole)]))))
            return torch.cat(out)

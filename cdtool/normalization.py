"""Input normalisation, recorded with every model so detection feeds it what training fed it.

Two modes, as plain dicts so they travel inside checkpoints and recipes:
- ``{"mode": "per-image"}``: each date standardised per band with its own mean and std, estimated from a
  spread sample of windows. Band-agnostic and robust to gain/illumination shifts between dates and sensors.
- ``{"mode": "fixed", "mean": [...], "std": [...]}``: per-band statistics of the training data, applied to
  both dates (one value per band).
- ``{"mode": "none"}``: raw values as float (models that scale their input themselves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cdtool.errors import InputError
from cdtool.windows import Tile

if TYPE_CHECKING:
    import torch

MODES = ("per-image", "fixed", "none")


def check(spec: dict) -> dict:
    mode = spec.get("mode")
    if mode not in MODES:
        raise InputError(f"normalization.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "fixed" and (len(spec.get("mean", [])) == 0 or len(spec["mean"]) != len(spec.get("std", []))):
        raise InputError("normalization 'fixed' needs 'mean' and 'std' lists of one value per band")
    return spec


def sample_tiles(height: int, width: int, size: int = 256, per_side: int = 6, cover: bool = False) -> list[Tile]:
    """Up to per_side² tiles spread evenly over the raster: bounded reads that see all of it. As many a side as
    fit whole (a 700-pixel side gets 2, leaving a gap between them), or with `cover` as many as it takes to
    touch every pixel, up to per_side. The statistics every shipped model was calibrated with come from the
    first kind, so normalisation keeps it."""
    th, tw = min(size, height), min(size, width)
    count = (lambda n, t: -(-n // t)) if cover else (lambda n, t: max(1, n // t))
    rows = np.unique(np.linspace(0, height - th, min(per_side, count(height, th))).round().astype(int))
    cols = np.unique(np.linspace(0, width - tw, min(per_side, count(width, tw))).round().astype(int))
    return [Tile(int(r), int(c), th, tw) for r in rows for c in cols]


# Valid pixels the spread sample must hold for its statistics to be trusted. Below it, the data may lie between
# the sampled windows (a 400² island in a 4096² raster of nodata was refused as "all nodata"): every window of
# the raster is then read once, in bounded pieces, so a refusal means no pixel is valid anywhere.
MIN_SAMPLE = 4096
SCAN_TILE = 512


def scan_tiles(height: int, width: int, size: int = SCAN_TILE) -> list[Tile]:
    """Every pixel once, in windows of at most size²: the full scan behind a sample that found too little."""
    return [Tile(r, c, min(size, height - r), min(size, width - c))
            for r in range(0, height, size) for c in range(0, width, size)]


def tiles_with_data(pair, limit: int = 36) -> list[Tile]:
    """Windows of a full scan that hold pixels valid in both dates, at most `limit` of them spread over those
    found (a label-free model is fitted on them in memory)."""
    found = [t for t in scan_tiles(*pair.shape) if pair.read(t)[1].any()]
    return found[:: -(-len(found) // limit)] if found else []


def _moments(pair, tiles: list[Tile]) -> tuple[int, np.ndarray, np.ndarray]:
    """(valid pixel count, per-date per-band sum, sum of squares) over the valid pixels of `tiles`."""
    n = 0
    s = np.zeros((2, pair.info.count), np.float64)
    s2 = np.zeros_like(s)
    for tile in tiles:
        data, valid = pair.read(tile)
        px = data[:, :, valid].astype(np.float64)  # (2, C, n)
        n += px.shape[-1]
        s += px.sum(-1)
        s2 += (px * px).sum(-1)
    return n, s, s2


def pair_statistics(pair) -> tuple[np.ndarray, np.ndarray]:
    """Per-date, per-band mean and std (each (2, C)) over the valid pixels of a spread sample of windows, or of
    the whole raster where the sample holds fewer than MIN_SAMPLE of them."""
    n, s, s2 = _moments(pair, sample_tiles(*pair.shape))
    if n < MIN_SAMPLE:
        n, s, s2 = _moments(pair, scan_tiles(*pair.shape))
    if n == 0:
        raise InputError(f"{pair.before_path}, {pair.after_path}: no pixel is valid in both dates "
                         "(all nodata, masked or NaN)")
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def statistics_record(pair) -> str | None:
    """`pair_statistics` as JSON, stored with every chip cut from the pair, so a model trained on chips is
    normalised as `detect` will normalise the whole image; None when no pixel is valid."""
    import json

    try:
        mean, std = pair_statistics(pair)
    except InputError:
        return None
    return json.dumps({"mean": mean.tolist(), "std": std.tolist()})


class Normalizer:
    """Turns raw (2, C, h, w) pixel stacks into model input; built once per pair."""

    def __init__(self, spec: dict, pair=None):
        check(spec)
        if spec["mode"] == "none":
            count = pair.info.count if pair is not None else 1
            self.mean, self.std = np.zeros((2, count), np.float32), np.ones((2, count), np.float32)
        elif spec["mode"] == "per-image":
            if pair is None:
                raise ValueError("per-image normalisation needs the pair to estimate statistics")
            self.mean, self.std = pair_statistics(pair)
        else:
            mean = np.asarray(spec["mean"], np.float64)  # float32 after the offset below: raw units may be large
            std = np.maximum(np.asarray(spec["std"], np.float32), 1e-6)
            if pair is not None and len(mean) != pair.info.count:
                raise InputError(f"{pair.before_path}: has {pair.info.count} bands but the model was trained "
                                 f"on {len(mean)}; pick bands with --bands")
            self.mean, self.std = np.stack([mean, mean]), np.stack([std, std])
        offset = getattr(pair, "offset", None)
        if offset is not None and spec["mode"] != "per-image":  # values are read less an offset; these are raw
            self.mean = self.mean - offset
        self.mean = np.asarray(self.mean, np.float32)

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        """stack: (..., 2, C, h, w) raw pixels -> standardised float32."""
        return ((stack - self.mean[..., None, None]) / self.std[..., None, None]).astype(np.float32)

    def torch(self, stack: "torch.Tensor") -> "torch.Tensor":
        """The same on a tensor (..., 2, C, h, w), in place, on whatever device it lives on."""
        import torch

        return standardize(stack, torch.as_tensor(self.mean), torch.as_tensor(self.std), in_place=True)


def standardize(x: "torch.Tensor", mean: "torch.Tensor", std: "torch.Tensor", in_place: bool = False) -> "torch.Tensor":
    """(x - mean) / std with per-band statistics `mean`, `std` of shape (..., C) broadcast over (h, w)."""
    m = mean.to(x)[..., None, None]
    s = std.to(x).clamp_min(1e-6)[..., None, None]
    return x.sub_(m).div_(s) if in_place else (x - m) / s


def normalize_batch(image: "torch.Tensor", spec: dict, mean: "torch.Tensor | None" = None,
                    std: "torch.Tensor | None" = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """A batch of pairs, raw (B, 2, C, H, W) -> normalised (before, after)."""
    z = normalize_stack(image, spec, mean, std)
    return z[:, 0], z[:, 1]


def normalize_stack(image: "torch.Tensor", spec: dict, mean: "torch.Tensor | None" = None,
                    std: "torch.Tensor | None" = None) -> "torch.Tensor":
    """A training or evaluation batch, raw (B, T, C, H, W) (T dates; 1 for single images) -> normalised. Per-image
    mode uses the whole-pair statistics the dataset provides (`mean`, `std`: (B, T, C)), as `Normalizer`
    computes them for detection, and falls back to each sample's own statistics."""
    import torch

    x = image.float()
    if spec["mode"] == "none":
        return x
    if spec["mode"] == "fixed":
        if len(spec["mean"]) != x.shape[2]:
            raise InputError(f"normalization has {len(spec['mean'])} band values but the data has {x.shape[2]} bands")
        mean, std = torch.as_tensor(spec["mean"], dtype=x.dtype), torch.as_tensor(spec["std"], dtype=x.dtype)
    elif mean is None or std is None:
        mean, std = x.mean(dim=(-2, -1)), x.std(dim=(-2, -1))
    return standardize(x, mean, std)

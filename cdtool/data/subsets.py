"""Selections and resizing any dataset kind takes from a recipe (`build_dataset` applies them): keep some
labels (negatives only for one-class methods, the normal classes), keep N positives (the rare-event setting
of paper 000), a seeded subset (N samples or a fraction), and resizing to S×S.

Selections are seeded and fixed for the whole run (the same samples every epoch, and after a resume);
they keep the wrapped dataset's `labels` aligned with the samples so class samplers still work.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cdtool.errors import InputError

SELECTION_ARGS = ("labels", "positives", "subset", "resize")


class _Wrapper(Dataset):
    """A dataset over `base` that still shows what the engine reads off a dataset: `labels` (class
    samplers), `names`, `channels` (in_channels), and `set_epoch` (fresh crops each epoch)."""

    def __init__(self, base: Dataset, labels: list[int] | None, names: list[str] | None):
        self.base, self.labels, self.names = base, labels, names
        self.channels = getattr(base, "channels", None)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


class Selected(_Wrapper):
    """The samples of `base` at `indices`, in that order."""

    def __init__(self, base: Dataset, indices: np.ndarray):
        self.indices = np.asarray(indices, np.int64)
        labels, names = getattr(base, "labels", None), getattr(base, "names", None)
        if names is not None and len(names) == len(base):  # per-sample names; a folder's crops name its pairs
            names = [names[i] for i in self.indices]
        super().__init__(base, [labels[i] for i in self.indices] if labels else None, names)
        self.crop = getattr(base, "crop", None)  # the size check of training still sees a folder's crops

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.base[int(self.indices[i])]


class Resized(_Wrapper):
    """Images resized to size×size (bilinear, antialiased), masks and valid flags by nearest neighbour,
    flow fields resampled and scaled to the new pixel size."""

    def __init__(self, base: Dataset, size: int):
        super().__init__(base, getattr(base, "labels", None), getattr(base, "names", None))
        self.size = size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s, size = dict(self.base[i]), (self.size, self.size)
        img = s["image"].float()
        flat = img.reshape(-1, *img.shape[-3:])
        s["image"] = F.interpolate(flat, size=size, mode="bilinear", antialias=True,
                                   align_corners=False).reshape(*img.shape[:-2], *size)
        for key in ("mask", "valid"):
            if key in s:
                m = s[key]
                s[key] = F.interpolate(m[None].float(), size=size, mode="nearest")[0].to(m.dtype)
        if "flow" in s:  # (dx, dy) in pixels: resampled, then scaled by the change of pixel size
            f = s["flow"]
            gain = torch.tensor([self.size / f.shape[-1], self.size / f.shape[-2]]).view(2, 1, 1)
            s["flow"] = F.interpolate(f[None].float(), size=size, mode="bilinear", align_corners=False)[0] * gain
        return s


def _labels_of(data: Dataset, arg: str) -> np.ndarray:
    labels = getattr(data, "labels", None)
    if not labels:
        raise InputError(f"data args {arg}: this dataset has no per-sample labels to select by")
    return np.asarray(labels, np.int64)


def _count(arg: str, value: Any, least: int) -> int:
    """`value` as a whole number of at least `least`, or a one-line refusal naming `arg`."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise InputError(f"data args {arg}: {value!r} is not a whole number >= {least}")
    return int(value)


def select(data: Dataset, seed: int, labels: int | list[int] | None = None, positives: int | None = None,
           subset: float | None = None, resize: int | None = None) -> Dataset:
    """`data` narrowed by the recipe's selection arguments, in this order: labels, positives, subset, resize."""
    rng = np.random.default_rng([seed, 7193])
    index = np.arange(len(data))
    if labels is not None:
        keep = sorted({_count("labels", x, 0) for x in (labels if isinstance(labels, (list, tuple)) else [labels])})
        index = index[np.isin(_labels_of(data, "labels")[index], keep)]
        if not len(index):
            raise InputError(f"data args labels {keep}: no sample has these labels")
    if positives is not None:
        n = _count("positives", positives, 0)
        lab = _labels_of(data, "positives")[index]
        pos = index[lab > 0]
        if n > len(pos):
            raise InputError(f"data args positives: {n} asked for, {len(pos)} positives available")
        index = np.sort(np.concatenate([index[lab == 0], rng.choice(pos, n, replace=False)]))
    if subset is not None:
        if isinstance(subset, Real) and not isinstance(subset, Integral) and 0 < subset <= 1:
            n = round(subset * len(index))  # a fraction
        else:
            n = _count("subset", subset, 1)
        if not 0 < n <= len(index):
            raise InputError(f"data args subset: {subset} does not pick between 1 and {len(index)} samples")
        index = np.sort(rng.choice(index, n, replace=False))
    out = data if len(index) == len(data) else Selected(data, index)
    return out if resize is None else Resized(out, _count("resize", resize, 1))


def split_selection(args: dict[str, Any]) -> tuple[dict, dict]:
    """(the kind's own arguments, the selection arguments)."""
    return ({k: v for k, v in args.items() if k not in SELECTION_ARGS},
            {k: v for k, v in args.items() if k in SELECTION_ARGS})

"""Selections and resizing any dataset kind takes from a recipe (`build_dataset` applies them): keep some
labels (negatives only for one-class methods, the normal classes), keep N positives (the rare-event setting
of paper 000), a seeded subset (N samples or a fraction), and resizing to S×S.

Selections are seeded and fixed for the whole run (the same samples every epoch, and after a resume);
they keep the wrapped dataset's `labels` aligned with the samples so class samplers still work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn.functional as F
from torch.utils.data import Dataset

from cdtool.errors import InputError

SELECTION_ARGS = ("labels", "positives", "subset", "resize")


class Selected(Dataset):
    """The samples of `base` at `indices`, in that order."""

    def __init__(self, base: Dataset, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, np.int64)
        labels = getattr(base, "labels", None)
        self.labels = [labels[i] for i in self.indices] if labels else None
        self.channels = getattr(base, "channels", None)
        names = getattr(base, "names", None)
        self.names = [names[i] for i in self.indices] if names and len(names) == len(base) else list(names or [])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.base[int(self.indices[i])]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


class Resized(Dataset):
    """Images resized to size×size (bilinear, antialiased); masks and valid flags by nearest neighbour."""

    def __init__(self, base: Dataset, size: int):
        self.base, self.size = base, int(size)
        for key in ("labels", "channels", "names"):
            setattr(self, key, getattr(base, key, None))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.base[i])
        img = s["image"].float()
        lead = img.shape[:-3]
        flat = img.reshape(-1, *img.shape[-3:])
        s["image"] = F.interpolate(flat, size=(self.size, self.size), mode="bilinear", antialias=True,
                                   align_corners=False).reshape(*lead, img.shape[-3], self.size, self.size)
        for key in ("mask", "valid"):
            if key in s:
                m = s[key]
                s[key] = F.interpolate(m[None].float(), size=(self.size, self.size), mode="nearest")[0].to(m.dtype)
        s.pop("flow", None)  # a flow field would need rescaling too; resized sets do not carry one
        return s

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def _labels_of(data: Dataset, arg: str) -> np.ndarray:
    labels = getattr(data, "labels", None)
    if not labels:
        raise InputError(f"data args {arg}: this dataset has no per-sample labels to select by")
    return np.asarray(labels, np.int64)


def select(data: Dataset, seed: int, labels: list[int] | None = None, positives: int | None = None,
           subset: int | float | None = None, resize: int | None = None) -> Dataset:
    """`data` narrowed by the recipe's selection arguments, in this order: labels, positives, subset, resize."""
    rng = np.random.default_rng([seed, 7193])
    index = np.arange(len(data))
    if labels is not None:
        keep = set(int(x) for x in (labels if isinstance(labels, (list, tuple)) else [labels]))
        index = index[np.isin(_labels_of(data, "labels")[index], list(keep))]
        if not len(index):
            raise InputError(f"data args labels {sorted(keep)}: no sample has these labels")
    if positives is not None:
        lab = _labels_of(data, "positives")[index]
        pos = index[lab > 0]
        if not 0 <= int(positives) <= len(pos):
            raise InputError(f"data args positives: {positives} asked for, {len(pos)} positives available")
        chosen = np.sort(rng.choice(pos, int(positives), replace=False))
        index = np.sort(np.concatenate([index[lab == 0], chosen]))
    if subset is not None:
        n = int(round(subset * len(index))) if isinstance(subset, float) and subset <= 1 else int(subset)
        if not 0 < n <= len(index):
            raise InputError(f"data args subset: {subset} does not pick between 1 and {len(index)} samples")
        index = np.sort(rng.choice(index, n, replace=False))
    out = data if len(index) == len(data) else Selected(data, index)
    if resize is not None:
        if int(resize) < 1:
            raise InputError(f"data args resize: {resize} is not a size in pixels")
        out = Resized(out, int(resize))
    return out


def split_selection(args: dict[str, Any]) -> tuple[dict, dict]:
    """(the kind's own arguments, the selection arguments)."""
    return ({k: v for k, v in args.items() if k not in SELECTION_ARGS},
            {k: v for k, v in args.items() if k in SELECTION_ARGS})


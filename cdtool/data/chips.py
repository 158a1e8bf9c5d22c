"""Torch dataset over what `cdtool tile` and `cdtool patches` write (format: cdtool.data.store).

Sample layout (one dict per sample; the DataLoader's default collate stacks them into a batch):

    "image": float32 (2, C, H, W)  both dates, raw pixel values (not normalised; the engine normalises)
    "mask":  float32 (1, H, W)     change mask in {0, 1}                        (when the set has masks)
    "valid": bool    (1, H, W)     pixels that are data in both dates           (when the set has nodata)
    "label": int64   ()            pair label: 1 changed / 0 unchanged          (pcd, footprints, mnist)
    "flow":  float32 (2, H, W)     (dx, dy) in pixels on the AFTER grid: AFTER(x, y) shows what BEFORE
                                   shows at (x + dx, y + dy)                    (synthetic pairs)
    "index": int64   ()            row of the sample in index.gpkg

Shards are opened with numpy memory-mapping and cached per worker, so memory stays bounded by the
samples actually read, whatever the dataset size.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from cdtool.data.store import SPLITS, read_index
from cdtool.errors import InputError

OPEN_SHARDS = 32  # memory maps kept open per worker


class ChipDataset(Dataset):
    """Samples of one dataset folder, optionally restricted to one split (train, val or test)."""

    def __init__(self, root: str | Path, split: str | None = None, transform: Callable | None = None):
        self.root = Path(root)
        if split is not None and split not in SPLITS:
            raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        index = read_index(self.root)
        self.meta = json.loads((self.root / "dataset.json").read_text())
        if split is not None:
            index = index[index["split"] == split].reset_index(drop=True)
        self.index = index
        self.split, self.transform = split, transform
        self._shards = index["shard"].to_numpy()
        self._offsets = index["offset"].to_numpy().astype(np.int64)
        arrays = set(self.meta.get("arrays", []))
        self.has_mask, self.has_valid, self.has_flow = "mask" in arrays, "valid" in arrays, "flow" in arrays
        labels = index["label"].to_numpy() if "label" in index else None
        self.labels = labels.astype(np.int64).tolist() if labels is not None and (labels >= 0).any() else None
        self._cache: OrderedDict[tuple[str, str], np.ndarray | None] = OrderedDict()
        # statistics of each chip's source pair, as detection computes them (datasets written before they
        # were recorded, and generated pairs, have none: per-image normalisation then uses the chip's own)
        stats = index["norm_stats"].to_numpy() if "norm_stats" in index else np.full(len(index), None)
        self._stats_text = stats
        self._stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _array(self, shard: str, name: str) -> np.ndarray | None:
        key = (shard, name)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self.root / "shards" / f"{shard}.{name}.npy"
        arr = np.load(path, mmap_mode="r") if path.exists() else None
        self._cache[key] = arr
        if len(self._cache) > OPEN_SHARDS * len(("image", "mask", "valid", "flow")):
            self._cache.popitem(last=False)
        return arr

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        shard, off = self._shards[i], int(self._offsets[i])
        image = self._array(shard, "image")
        if image is None:
            raise InputError(f"{self.root / 'shards' / shard}.image.npy: shard missing; re-run to resume")
        sample = {"image": torch.from_numpy(np.asarray(image[off], dtype=np.float32)),
                  "index": torch.tensor(i if i >= 0 else len(self) + i, dtype=torch.int64)}
        h, w = sample["image"].shape[-2:]
        if self.has_mask:
            m = self._array(shard, "mask")
            sample["mask"] = (torch.from_numpy(np.asarray(m[off], dtype=np.float32))[None] if m is not None
                              else torch.zeros(1, h, w))
        if self.has_valid:
            v = self._array(shard, "valid")
            sample["valid"] = (torch.from_numpy(np.array(v[off], dtype=bool))[None] if v is not None
                               else torch.ones(1, h, w, dtype=torch.bool))
        if self.has_flow:
            f = self._array(shard, "flow")
            sample["flow"] = torch.from_numpy(np.array(f[off], dtype=np.float32)) if f is not None \
                else torch.zeros(2, h, w)
        if self.labels is not None:
            sample["label"] = torch.tensor(self.labels[i], dtype=torch.int64)
        text = self._stats_text[i]
        if isinstance(text, str) and text:
            if text not in self._stats:
                d = json.loads(text)
                self._stats[text] = (torch.tensor(d["mean"], dtype=torch.float32),
                                     torch.tensor(d["std"], dtype=torch.float32))
            sample["mean"], sample["std"] = self._stats[text]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # memory maps are reopened in each worker
        return state

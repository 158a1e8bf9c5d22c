"""Training samples straight from folders of whole image pairs, with train and test pairs held apart.

Two layouts are recognised under each root:
- LEVIR-CD / DSIFN style: ``A/<name>.png``, ``B/<name>.png``, ``label/<name>.png`` (0/255, change > 0), and the
  other folder names and image suffixes `cdtool tile` accepts (`cdtool.data.sources`);
- OSCD style: one folder per city with ``imgs_1/``, ``imgs_2/`` (single-band files, stacked onto the 10 m
  grid by `open_pair`) and ``cm/<city>-cm.tif`` (1 = no change, 2 = change); every mask is read by the one
  rule of `cdtool.io.change_mask`.

Pairs are named ``<root folder>/<name>`` (e.g. ``levir/test_2_0000_0000``, ``oscd/paris``); `pairs` and
`exclude` pick by exact name or by root (``levir``). Pairs are small, so they are read once into memory.

With `crop` set, each item is a random crop of a pair (pairs visited in turn, so small sets are seen
evenly; flips and turns come from the recipe's `augment`, applied by the training loop), optionally with a
simulated viewpoint shift of the AFTER image (the change mask stays on the BEFORE grid, as a camera that moved would give).
Randomness is a pure function of (seed, epoch, index), so a resumed run draws the same crops. Without
`crop`, each item is one whole pair (for validation and evaluation, batch size 1).

Samples follow the layout of `cdtool.data.chips`: ``image`` float32 (2, C, H, W) raw, ``mask`` float32
(1, H, W), ``valid`` bool (1, H, W), ``label`` int64 (pair changed or not), plus ``mean`` and ``std``
float32 (2, C): per-date band statistics of the whole pair, so "per-image" normalisation during
training uses the same statistics detection computes over the whole raster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cdtool.errors import InputError
from cdtool.data.pair_crops import PairCrops
from cdtool.data.sources import is_pair_folder, pairs_from_folder
from cdtool.io.change_mask import read_change_mask
from cdtool.io.pair import open_pair
from cdtool.windows import Tile

@dataclass(frozen=True)
class PairRecord:
    name: str
    before: Path
    after: Path
    label: Path
    align: bool = False  # warp AFTER onto BEFORE's grid (OSCD dates differ slightly in grid)


def discover(root: str | Path) -> list[PairRecord]:
    """Every labelled pair under one root, in name order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such data folder")
    found: list[PairRecord] = []
    if is_pair_folder(root):  # the same discovery `cdtool tile` uses: one set of layouts and suffixes
        found += [PairRecord(f"{root.name}/{p.name}", p.before, p.after, p.mask)
                  for p in pairs_from_folder(root, require_mask=True)]
    for city in sorted(p for p in root.iterdir() if p.is_dir()):
        cm = city / "cm" / f"{city.name}-cm.tif"
        if (city / "imgs_1").is_dir() and (city / "imgs_2").is_dir() and cm.is_file():
            found.append(PairRecord(f"{root.name}/{city.name}", city / "imgs_1", city / "imgs_2", cm, True))
    if not found:
        raise InputError(f"{root}: no labelled pairs (expected A/ B/ label/ or another before/after/mask layout, or city folders with "
                         "imgs_1/ imgs_2/ cm/<city>-cm.tif)")
    return found


def select(records: list[PairRecord], pairs: list[str] | None, exclude: list[str] | None) -> list[PairRecord]:
    """Keep the named pairs (or roots), then drop the excluded ones; unknown names are errors."""
    names = {r.name for r in records} | {r.name.split("/")[0] for r in records}

    def match(r: PairRecord, sel: list[str]) -> bool:
        return r.name in sel or r.name.split("/")[0] in sel

    for sel in (pairs or []) + (exclude or []):
        if sel not in names:
            raise InputError(f"data pair {sel!r} not found; available: {', '.join(sorted(r.name for r in records))}")
    out = [r for r in records if pairs is None or match(r, pairs)]
    out = [r for r in out if not exclude or not match(r, exclude)]
    if not out:
        raise InputError("the pair selection is empty (check data pairs / exclude)")
    return out


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(changed, valid) of a whole change mask, by the one rule every mask reader follows
    (`cdtool.io.change_mask`: 0/1, 0/255, OSCD 1/2, 255 or the file's nodata)."""
    return read_change_mask(path)


def load_pair(rec: PairRecord, bands: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw float32 (2, C, H, W), valid bool (H, W), change bool (H, W)) of one whole pair; pixels the mask
    holds nodata for are not valid."""
    with open_pair(rec.before, rec.after, bands=bands, align=rec.align) as pair:
        h, w = pair.shape
        data, valid = pair.read(Tile(0, 0, h, w))
        r0, c0 = pair.origin  # the mask lies on BEFORE's grid; an aligned pair may be a window of it
    changed, mask_valid = (a[r0:r0 + h, c0:c0 + w] for a in read_mask(rec.label))
    if changed.shape != (h, w):
        raise InputError(f"{rec.label}: mask is {changed.shape[1]}x{changed.shape[0]} but the pair is {w}x{h}")
    return data, valid & mask_valid, changed


def pair_stats(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-date, per-band mean and std over valid pixels, as `cdtool.normalization` computes them."""
    px = data[:, :, valid].astype(np.float64)
    if px.shape[-1] == 0:
        return np.zeros(data.shape[:2], np.float32), np.ones(data.shape[:2], np.float32)
    return px.mean(-1).astype(np.float32), np.maximum(px.std(-1), 1e-6).astype(np.float32)


def viewpoint_shift(img: torch.Tensor, rng: np.random.Generator, max_px: float, max_deg: float,
                    max_scale: float) -> torch.Tensor:
    """Warp (C, H, W) by a random small rotation, zoom and translation (reflection at the borders): a
    camera that moved a little between the dates. The paper's PTZ / viewpoint setting, simulated."""
    _, h, w = img.shape
    ang = math.radians(rng.uniform(-max_deg, max_deg))
    s = 1.0 + rng.uniform(-max_scale, max_scale)
    tx, ty = rng.uniform(-max_px, max_px) * 2 / w, rng.uniform(-max_px, max_px) * 2 / h
    theta = torch.tensor([[s * math.cos(ang), -s * math.sin(ang) * h / w, tx],
                          [s * math.sin(ang) * w / h, s * math.cos(ang), ty]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, *img.shape], align_corners=False)
    return F.grid_sample(img[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


def pair_names(roots: list[str]) -> list[str]:
    """The names of every labelled pair under `roots`, found without reading a pixel."""
    return [r.name for root in roots for r in discover(root)]


def load_selected(roots: list[str], pairs: list[str] | None, exclude: list[str] | None,
                  bands: list[int] | None) -> tuple[list[PairRecord], list[tuple], int]:
    """The selected pairs under `roots`, each read whole (`load_pair`), and their one band count."""
    records: list[PairRecord] = []
    for r in roots:
        records += discover(r)
    records = select(records, pairs, exclude)
    data = [load_pair(r, bands) for r in records]
    counts = {d[0].shape[1] for d in data}
    if len(counts) > 1:
        raise InputError(f"selected pairs have different band counts {sorted(counts)}; train one model per "
                         "band layout (select pairs of one sensor)")
    return records, data, counts.pop()


class PairFolderDataset(PairCrops):
    """Random crops (or whole pairs) of labelled pairs found under `roots`."""

    def __init__(self, roots: list[str], pairs: list[str] | None = None, exclude: list[str] | None = None,
                 crop: int | None = 128, samples: int = 256, shift: dict | None = None,
                 bands: list[int] | None = None, seed: int = 0):
        self.records, self._data, self.channels = load_selected(roots, pairs, exclude, bands)
        self.crop, self.samples, self.seed = crop, int(samples), int(seed)
        self.shift = dict(shift) if shift else None
        self.epoch = 0
        self._stats = [pair_stats(d, v) for d, v, _ in self._data]
        # whether a pair changed at all labels whole pairs only: a random crop may miss the change
        self.labels = [int(m.any()) for _, _, m in self._data] if crop is None else None

    def __len__(self) -> int:
        return len(self.records) if self.crop is None else self.samples

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i, 0 if self.crop else 1])
        k = i if self.crop is None else i % len(self.records)
        data, valid, mask = self._data[k]
        mean, std = self._stats[k]
        if self.crop is not None:
            h, w = mask.shape
            ch, cw = min(self.crop, h), min(self.crop, w)
            r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            data, valid, mask = (data[..., r0:r0 + ch, c0:c0 + cw], valid[r0:r0 + ch, c0:c0 + cw],
                                 mask[r0:r0 + ch, c0:c0 + cw])
        image = torch.from_numpy(np.ascontiguousarray(data, np.float32))
        m = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None]
        v = torch.from_numpy(np.ascontiguousarray(valid))[None]
        if self.shift:
            image = image.clone()
            image[1] = viewpoint_shift(image[1], rng, float(self.shift.get("px", 8)),
                                       float(self.shift.get("deg", 3)), float(self.shift.get("scale", 0.03)))
        sample = {"image": image.contiguous(), "mask": m.contiguous(), "valid": v.contiguous(),
                  "mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}
        if self.labels is not None:
            sample["label"] = torch.tensor(self.labels[k], dtype=torch.int64)
        return sample

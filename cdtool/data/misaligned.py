"""Data kind ``misaligned``: labelled pairs (LEVIR/DSIFN/OSCD folders, as kind ``folder`` finds them) whose AFTER
image is re-sampled under a simulated viewpoint change, plus a photometric change: the target domain of
paper 001 built from the shared aerial and satellite pairs. The labels are kept for scoring only.

For each sample a `crop`-sized window of BEFORE is taken; AFTER is sampled at p + flow(p), where

    flow(p) = H(p) - p + local(p)

H is a random homography (each corner of the window moved by up to `shift` pixels) and `local` a smooth
random displacement (a 4x4 grid of offsets up to `local` pixels, upsampled bicubically). So BEFORE(p + flow(p))
shows what AFTER shows at p, the convention of `cdtool.data.synthetic`. The change mask is re-sampled the same
way (nearest), onto AFTER's grid, which is where the `simsac` model predicts change; pixels whose source lies
outside the image are invalid. AFTER then gets a photometric change: a brightness/contrast gain in
1 ± `gain` with per-band variation of ±5 %, an offset of ± `offset` × the band's std, and gamma in 1 ± `gamma`.

Samples: ``image`` (2, C, H, W) raw float32, ``mask`` (1, H, W), ``valid`` (1, H, W) bool, ``flow`` (2, H, W),
the true simulated flow (for end-point-error scoring). Randomness is a pure function of (seed, epoch, index)
for training and of (seed, index) for validation, so every run scores the same validation/test samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cdtool.data.pair_crops import PairCrops
from cdtool.data.registry import DATASETS
from cdtool.errors import InputError


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with H src_i ~ dst_i for four point pairs (N, 2)."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y]); b.append(u)
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y]); b.append(v)
    h = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def simulated_flow(rng: np.random.Generator, size: int, shift: float, local: float) -> np.ndarray:
    """(2, size, size) flow: a random homography plus a smooth local warp, in pixels."""
    c = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float64)
    hmat = homography(c, c + rng.uniform(-shift, shift, c.shape))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    pts = hmat @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    fx = (pts[0] / pts[2]).reshape(size, size) - xs
    fy = (pts[1] / pts[2]).reshape(size, size) - ys
    flow = torch.from_numpy(np.stack([fx, fy]).astype(np.float32))
    if local > 0:
        coarse = torch.from_numpy(rng.uniform(-local, local, (1, 2, 4, 4)).astype(np.float32))
        flow = flow + F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
    return flow.numpy()


def _sample(img: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, mode: str) -> torch.Tensor:
    """img (C, H, W) at full-image coordinates (sx, sy) (h, w)."""
    _, h, w = img.shape
    grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], -1)[None]
    return F.grid_sample(img[None], grid, mode=mode, padding_mode="border", align_corners=True)[0]


class MisalignedDataset(PairCrops):
    """Crops of labelled pairs with a simulated viewpoint and photometric change of AFTER."""

    def __init__(self, roots: list[str], pairs: list[str] | None = None, exclude: list[str] | None = None,
                 crop: int = 64, samples: int = 256, shift: float = 4.0, local: float = 2.0, gain: float = 0.2,
                 offset: float = 0.2, gamma: float = 0.2, bands: list[int] | None = None, seed: int = 0,
                 fixed: bool = False):
        from cdtool.data.pair_folder import load_selected  # lazily: rasterio only when used

        self.records, loaded, self.channels = load_selected(roots, pairs, exclude, bands)
        self.crop, self.samples, self.seed, self.fixed = int(crop), int(samples), int(seed), bool(fixed)
        self.shift, self.local, self.gain, self.offset, self.gamma = shift, local, gain, offset, gamma
        self.epoch = 0
        self._data = []
        for r, (data, valid, mask) in zip(self.records, loaded):
            if min(mask.shape) < self.crop:
                raise InputError(f"{r.name}: {mask.shape[1]}x{mask.shape[0]} is smaller than crop {self.crop}")
            self._data.append((torch.from_numpy(np.ascontiguousarray(data, np.float32)),
                               torch.from_numpy(valid), torch.from_numpy(mask)))

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, 0 if self.fixed else self.epoch, i, 7 if self.fixed else 3])
        k = i % len(self.records)
        data, valid, mask = self._data[k]
        h, w = mask.shape
        s = self.crop
        r0, c0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        flow = torch.from_numpy(simulated_flow(rng, s, self.shift, self.local))
        ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                                indexing="ij")
        sx, sy = c0 + xs + flow[0], r0 + ys + flow[1]
        after = _sample(data[1], sx, sy, "bilinear")
        m = _sample(mask[None].float(), sx, sy, "nearest")
        inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
        v_after = _sample(valid[None].float(), sx, sy, "nearest")[0] > 0.5
        v = valid[r0:r0 + s, c0:c0 + s] & inside & v_after
        # photometric change of AFTER: gain (brightness/contrast), offset, gamma, per band a little apart
        c = after.shape[0]
        g = (1 + rng.uniform(-self.gain, self.gain)) * (1 + rng.uniform(-0.05, 0.05, c))
        std = after.flatten(1).std(1).clamp_min(1e-3).numpy()
        off = rng.uniform(-self.offset, self.offset) * std
        lo, hi = float(data[1].min()), float(data[1].max())
        after = after * torch.tensor(g, dtype=torch.float32)[:, None, None] + torch.tensor(off, dtype=torch.float32)[:, None, None]
        if self.gamma and hi > lo:
            t = ((after - lo) / (hi - lo)).clamp(0, 1) ** float(1 + rng.uniform(-self.gamma, self.gamma))
            after = lo + t * (hi - lo)
        before = data[0][:, r0:r0 + s, c0:c0 + s]
        image = torch.stack([before, after]).contiguous()
        return {"image": image, "mask": (m * v).contiguous(), "valid": v[None].contiguous(),
                "flow": flow.contiguous()}


@DATASETS.register("misaligned")
def _misaligned(role: str = "train", seed: int = 0, **kwargs) -> Dataset:
    """Labelled pairs with a simulated viewpoint (homography + local warp) and photometric change of AFTER,
    random crops; validation samples are fixed (seed + 1, same draws every epoch)."""
    if role == "val":
        kwargs.setdefault("fixed", True)
        seed = seed + 1
    seed = int(kwargs.pop("sample_seed", seed))  # fixed draws whatever the run's seed (test sets)
    return MisalignedDataset(seed=seed, **kwargs)

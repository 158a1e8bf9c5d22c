"""Pair augmentation on batches in the ChipDataset layout, on whatever device the batch is on.

Geometric transforms (flips, quarter turns, small rotations/scalings) must be identical for both dates
and the mask, or the augmentation itself would create change; they are drawn once per sample and
applied through kornia to image, mask and valid alike. Photometric transforms (gain, offset, noise) are
drawn independently per date, since illumination differs between acquisitions and a model should not
call that change. Offsets and noise scale with each image's own standard deviation because the images
are raw (uint8 PNG or uint16 Sentinel-2 alike).

Flow samples: flips are applied with the flow's components mirrored; quarter turns and affine warps
would need the flow re-derived, so they are skipped for batches that carry "flow".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.geometry.transform import get_rotation_matrix2d, hflip, vflip, warp_affine


@dataclass
class PairAugment:
    """Callable on a sample or batch dict: {"image": (B,2,C,H,W) or (2,C,H,W), "mask", "valid", "flow", ...}."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    degrees: float = 0.0          # random rotation within ±degrees (0: off)
    scale: float = 0.0            # random scaling within 1 ± scale
    gain: float = 0.1             # contrast factor within 1 ± gain, per date
    offset: float = 0.1           # offset within ± offset x std, per date
    noise: float = 0.0            # Gaussian noise std as a share of the image std, per date
    seed: int | None = None

    def __post_init__(self) -> None:
        self._gen: torch.Generator | None = None

    def _rand(self, n: int, device) -> torch.Tensor:
        if self.seed is not None and self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(n, generator=self._gen).to(device)

    def __call__(self, batch: dict) -> dict:
        single = batch["image"].dim() == 4
        out = {k: (v.unsqueeze(0) if single and torch.is_tensor(v) else v) for k, v in batch.items()}
        img = out["image"].float().clone()  # never modify the caller's tensors
        b, t, c, h, w = img.shape
        dev = img.device
        spatial = {k: out[k].float().clone() for k in ("mask", "valid") if k in out}
        flow = out.get("flow")
        flat = img.reshape(b, t * c, h, w)
        # -- geometric, one draw per sample shared by both dates and the mask
        for p, fn, comp in ((self.hflip, hflip, 0), (self.vflip, vflip, 1)):
            if p <= 0:
                continue
            sel = self._rand(b, dev) < p
            if sel.any():
                flat[sel] = fn(flat[sel])
                for k in spatial:
                    spatial[k][sel] = fn(spatial[k][sel])
                if flow is not None:
                    f = fn(flow[sel].float())
                    f[:, comp] = -f[:, comp]
                    flow = flow.clone().float()
                    flow[sel] = f
        if flow is None and self.rot90 and h == w:
            ks = (self._rand(b, dev) * 4).long().clamp(max=3)
            for k in range(1, 4):
                sel = ks == k
                if sel.any():
                    flat[sel] = torch.rot90(flat[sel], k, dims=(-2, -1))
                    for name in spatial:
                        spatial[name][sel] = torch.rot90(spatial[name][sel], k, dims=(-2, -1))
        if flow is None and (self.degrees > 0 or self.scale > 0):
            angle = (self._rand(b, dev) * 2 - 1) * self.degrees
            scale = 1 + (self._rand(b, dev) * 2 - 1) * self.scale
            centre = torch.tensor([[(w - 1) / 2, (h - 1) / 2]], device=dev).expand(b, 2)
            m = get_rotation_matrix2d(centre, angle, torch.stack([scale, scale], 1))
            flat = warp_affine(flat, m, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
            inside = warp_affine(torch.ones(b, 1, h, w, device=dev), m, (h, w), mode="nearest", align_corners=True)
            for k in spatial:
                spatial[k] = warp_affine(spatial[k], m, (h, w), mode="nearest", align_corners=True)
            if "valid" in spatial:
                spatial["valid"] = spatial["valid"] * inside
        img = flat.reshape(b, t, c, h, w)
        # -- photometric, independent per date
        if self.gain > 0 or self.offset > 0 or self.noise > 0:
            mean = img.mean(dim=(-2, -1), keepdim=True)
            std = img.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
            g = 1 + (self._rand(b * t, dev).view(b, t, 1, 1, 1) * 2 - 1) * self.gain
            o = (self._rand(b * t, dev).view(b, t, 1, 1, 1) * 2 - 1) * self.offset * std
            img = (img - mean) * g + mean + o
            if self.noise > 0:
                gen = self._gen
                img = img + torch.randn(img.shape, generator=gen).to(dev) * self.noise * std
        out["image"] = img
        for k, v in spatial.items():
            out[k] = v > 0.5 if k == "valid" else v
        if flow is not None:
            out["flow"] = flow
        if single:
            out = {k: (v.squeeze(0) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in out.items()}
        return out

"""Rare-event detection with disentangled representations (paper 000, Hamaguchi et al. 2019).

Two weight-sharing VAE branches (one module called on both dates) encode each image into a common latent
zc (what a negative pair shares: the digit, the scene's content) and a specific latent zs (what differs
between the dates of a negative pair: rotation, illumination); both are diagonal Gaussians with N(0, I)
priors and the decoder takes [zc, zs]. A 3-layer classifier on [µc_A, µc_B] scores the pair.

Encoders:
  * ``arch="digits"`` (28×28): C-P-C-P-C-H, the hidden layer H being four convolutions (µc, log σc², µs,
    log σs²) spanning the 7×7 map; the decoder mirrors it.
  * ``arch="scene"`` (any patch side, e.g. 112; padded inside to a multiple of 2^levels): a ladder / VLAE-style model
    (Zhao et al. 2017): `levels` stride-2 stages, a Gaussian latent read off each stage's pooled features;
    the top two levels carry the common latent (their halves concatenated), every level a specific one;
    the decoder runs top-down, adding each level's latents back in.
The posterior means of the common latent are tanh-bounded, so |µc| < 1 as the activation loss needs.

Detection (`forward`): on patch-sized pairs one change probability per pair, (B, 1, 1, 1); `patch_only` and
`patch_size` make `cdtool detect` slide it (cdtool.inference.centre_patch). By default (``pinned=True``)
the head scores h([µA, µB]) − ½h([µA, µA]) − ½h([µB, µB]) + b, so a pair of identical images scores the
same constant sigmoid(b) everywhere (the project's identical-dates invariance), and with
``identical_negative`` (default) b = −softplus(β) < 0, so that constant is never flagged at 0.5;
``pinned=False`` is the paper's plain head h([µA, µB]). In the unsupervised mode (``unsupervised=1`` in the buffers, set by the task's `cluster`
phase) the score comes from 2-means on the distance between common features: 0 at or below the "same"
centroid, 1 at or above the "changed" one, linear in between (≥ 0.5 exactly when nearer "changed").
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model


def common_distance(mu_a: torch.Tensor, lv_a: torch.Tensor, mu_b: torch.Tensor, lv_b: torch.Tensor,
                    kind: str = "mahalanobis") -> torch.Tensor:
    """Per-pair distance (B,) between the common posteriors q(zc|xA), q(zc|xB) (diagonal Gaussians given
    by mean and log-variance), averaged over the M latent units. Kinds of Table 5: mahalanobis (eq. 8),
    jeffreys (symmetric KL), l2, l1, cosine (1 - cos of the means), mmd (closed-form MMD² of the two
    Gaussians under a unit-bandwidth RBF kernel per unit). Each is 0 for identical posteriors."""
    d = mu_a - mu_b
    if kind == "mahalanobis":
        return (d * d * torch.exp(-0.5 * (lv_a + lv_b))).mean(1)
    if kind == "jeffreys":
        va, vb = lv_a.exp(), lv_b.exp()
        return ((va + d * d) / (2 * vb) + (vb + d * d) / (2 * va) - 1).mean(1)
    if kind == "l2":
        return (d * d).mean(1)
    if kind == "l1":
        return d.abs().mean(1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(mu_a, mu_b, dim=1, eps=1e-6)
    if kind == "mmd":
        va, vb = lv_a.exp(), lv_b.exp()

        def ek(s2: torch.Tensor, delta2: torch.Tensor) -> torch.Tensor:  # E k(x, y), x - y ~ N(delta, s2)
            return torch.rsqrt(1 + s2) * torch.exp(-delta2 / (2 * (1 + s2)))

        zero = torch.zeros_like(d)
        return (ek(2 * va, zero) + ek(2 * vb, zero) - 2 * ek(va + vb, d * d)).mean(1)
    raise ValueError(f"unknown distance {kind!r}: mahalanobis, jeffreys, l2, l1, cosine or mmd")


DISTANCES = ("mahalanobis", "jeffreys", "l2", "l1", "cosine", "mmd")


class _DigitsCoder(nn.Module):
    """C-P-C-P-C-H encoder for 28×28 (any side divisible by 4) and its mirror decoder."""

    def __init__(self, cin: int, patch: int, zc: int, zs: int, width: int):
        super().__init__()
        if patch % 4:
            raise ValueError(f"arch 'digits' needs a patch side divisible by 4, got {patch}")
        side, w2 = patch // 4, 2 * width
        self.side, self.w2 = side, w2
        self.features = nn.Sequential(
            nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, w2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(inplace=True))
        # H: four convolutional branches spanning the map: µc, log σc², µs, log σs²
        self.heads = nn.ModuleList([nn.Conv2d(w2, n, side) for n in (zc, zc, zs, zs)])
        self.up = nn.Linear(zc + zs, w2 * side * side)
        self.dec = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(w2, width, 3, padding=1), nn.ReLU(inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(width, cin, 3, padding=1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.features(x)
        mu_c, lv_c, mu_s, lv_s = (head(h).flatten(1) for head in self.heads)
        return torch.tanh(mu_c), lv_c, mu_s, lv_s

    def decode(self, zc: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
        h = self.up(torch.cat([zc, zs], 1)).view(-1, self.w2, self.side, self.side)
        return self.dec(h)


class _LadderCoder(nn.Module):
    """A small VLAE-style hierarchy for scene patches: `levels` stride-2 stages; level l's features give
    a specific latent (zs_per) and, on the top two levels, a common latent (zc halves); the decoder goes
    top-down, each level's latents projected and added to the upsampled map."""

    def __init__(self, cin: int, patch: int, zc: int, zs: int, width: int, levels: int):
        super().__init__()
        if levels < 2:
            raise ValueError(f"arch 'scene' needs levels >= 2; got {levels}")
        if zc % 2 or zs % levels:
            raise ValueError(f"arch 'scene': zc ({zc}) must be even and zs ({zs}) divisible by levels ({levels})")
        # a patch side not divisible by 2^levels (112 with 5 levels) is zero-padded (the per-image mean) to the
        # next multiple inside the coder; the reconstruction is cropped back to the patch
        self.patch, side = patch, -(-patch // 2 ** levels) * 2 ** levels
        self.pad = side - patch
        patch = side
        self.levels, self.top = levels, patch // 2 ** levels
        self.widths = [min(width * 2 ** k, 8 * width) for k in range(levels)]
        self.zc_per, self.zs_per = zc // 2, zs // levels
        self.down = nn.ModuleList()
        c = cin
        for w in self.widths:
            self.down.append(nn.Sequential(nn.Conv2d(c, w, 3, stride=2, padding=1), nn.BatchNorm2d(w),
                                           nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(w, w, 3, padding=1),
                                           nn.BatchNorm2d(w), nn.LeakyReLU(0.1, inplace=True)))
            c = w
        self.heads = nn.ModuleList()
        for k, w in enumerate(self.widths):
            nc = self.zc_per if k >= levels - 2 else 0
            self.heads.append(nn.Linear(w, 2 * nc + 2 * self.zs_per))
        self.inject = nn.ModuleList()
        for k, w in enumerate(self.widths):
            nc = self.zc_per if k >= levels - 2 else 0
            side = patch // 2 ** (k + 1)
            self.inject.append(nn.Linear(nc + self.zs_per, w * 4 if k < levels - 1 else w * side * side))
        self.up = nn.ModuleList()
        for k in range(levels - 1, -1, -1):
            cout = self.widths[k - 1] if k > 0 else width
            self.up.append(nn.Sequential(nn.Conv2d(self.widths[k], self.widths[k], 3, padding=1),
                                         nn.LeakyReLU(0.1, inplace=True), nn.Upsample(scale_factor=2),
                                         nn.Conv2d(self.widths[k], cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)))
        self.out = nn.Conv2d(width, cin, 3, padding=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mus_c, lvs_c, mus_s, lvs_s = [], [], [], []
        h = F.pad(x, (self.pad // 2, self.pad - self.pad // 2) * 2) if self.pad else x
        for k in range(self.levels):
            h = self.down[k](h)
            p = self.heads[k](h.mean((2, 3)))
            nc = self.zc_per if k >= self.levels - 2 else 0
            mc, lc, ms, ls = torch.split(p, [nc, nc, self.zs_per, self.zs_per], 1)
            if nc:
                mus_c.append(mc), lvs_c.append(lc)
            mus_s.append(ms), lvs_s.append(ls)
        return (torch.tanh(torch.cat(mus_c, 1)), torch.cat(lvs_c, 1), torch.cat(mus_s, 1), torch.cat(lvs_s, 1))

    def decode(self, zc: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
        zcs = list(torch.split(zc, self.zc_per, 1))
        zss = list(torch.split(zs, self.zs_per, 1))
        h = None
        for j, k in enumerate(range(self.levels - 1, -1, -1)):
            parts = [zcs[k - (self.levels - 2)]] if k >= self.levels - 2 else []
            v = self.inject[k](torch.cat(parts + [zss[k]], 1))
            if h is None:
                h = v.view(-1, self.widths[k], self.top, self.top)
            else:  # a per-channel 2x2 pattern, tiled over the map
                pat = v.view(-1, self.widths[k], 2, 2)
                h = h + pat.repeat(1, 1, h.shape[2] // 2, h.shape[3] // 2)
            h = self.up[j](h)
        h = self.out(h)
        if self.pad:
            a = self.pad // 2
            h = h[:, :, a:a + self.patch, a:a + self.patch]
        return h


class DisentangledVAE(ChangeModel):
    patch_only = True

    def __init__(self, in_channels: int = 1, patch: int = 28, arch: str = "digits", zc: int = 16, zs: int = 16,
                 width: int = 32, levels: int = 3, hidden: int = 100, pinned: bool = True,
                 cluster_distance: str = "mahalanobis", cell: int = 14, identical_negative: bool = True):
        super().__init__()
        if arch == "digits":
            self.vae: nn.Module = _DigitsCoder(in_channels, patch, zc, zs, width)
        elif arch == "scene":
            self.vae = _LadderCoder(in_channels, patch, zc, zs, width, levels)
        else:
            raise ValueError(f"arch must be 'digits' or 'scene', got {arch!r}")
        if cluster_distance not in DISTANCES:
            raise ValueError(f"cluster_distance must be one of {DISTANCES}")
        self.patch_size, self.patch, self.cell = int(patch), int(patch), int(cell)
        self.pinned, self.cluster_distance = bool(pinned), cluster_distance
        self.identical_negative = bool(identical_negative)
        # the 3-layer event detector on [µc_A, µc_B] (hidden-hidden-out; one logit = 2-way softmax's difference)
        self.classifier = nn.Sequential(nn.Linear(2 * zc, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                        nn.ReLU(inplace=True), nn.Linear(hidden, 1, bias=not pinned))
        # pinned: the identical-pair logit; with identical_negative it is -softplus(bias) < 0 (init -1)
        self.bias = nn.Parameter(torch.full((1,), 0.5413 if identical_negative else 0.0)) if pinned else None
        self.register_buffer("unsupervised", torch.zeros(()))
        self.register_buffer("centroids", torch.tensor([0.0, 1.0]))

    # --- the VAE -------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(µc, log σc², µs, log σs²), each (B, dim)."""
        return self.vae.encode(x)

    def decode(self, zc: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(zc, zs)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward_vae(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        """Both branches in one batch: posteriors, sampled latents' reconstructions."""
        n = before.shape[0]
        mu_c, lv_c, mu_s, lv_s = self.encode(torch.cat([before, after]))
        recon = self.decode(self.sample(mu_c, lv_c), self.sample(mu_s, lv_s))
        return {"mu_c": (mu_c[:n], mu_c[n:]), "logvar_c": (lv_c[:n], lv_c[n:]),
                "mu_s": (mu_s[:n], mu_s[n:]), "logvar_s": (lv_s[:n], lv_s[n:]),
                "recon": (recon[:n], recon[n:]), "inputs": (before, after)}

    # --- the event detector --------------------------------------------------------------------------------
    def head(self, mu_a: torch.Tensor, mu_b: torch.Tensor) -> torch.Tensor:
        """(B,) change logits from the common means."""
        if not self.pinned:
            return self.classifier(torch.cat([mu_a, mu_b], 1))[:, 0]
        h = self.classifier(torch.cat([torch.cat([mu_a, mu_b], 1), torch.cat([mu_a, mu_a], 1),
                                       torch.cat([mu_b, mu_b], 1)]))[:, 0]
        n = mu_a.shape[0]
        b = -F.softplus(self.bias) if self.identical_negative else self.bias
        return h[:n] - 0.5 * (h[n:2 * n] + h[2 * n:]) + b

    def common(self, before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = before.shape[0]
        mu_c, lv_c, _, _ = self.encode(torch.cat([before, after]))
        return mu_c[:n], lv_c[:n], mu_c[n:], lv_c[n:]

    def distance(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        mu_a, lv_a, mu_b, lv_b = self.common(before, after)
        return common_distance(mu_a, lv_a, mu_b, lv_b, self.cluster_distance)

    def forward_train(self, before: torch.Tensor, after: torch.Tensor, vae: bool = False) -> dict:
        """Training outputs: the VAE's (`forward_vae`) when `vae`, else the detector's logits (B, 1, 1, 1)
        for the fine-tuning phase (one entry point, so a DDP wrapper sees both)."""
        if vae:
            return self.forward_vae(before, after)
        mu_a, _, mu_b, _ = self.common(before, after)
        return {"logits": [self.head(mu_a, mu_b).view(-1, 1, 1, 1)]}

    def cluster_score(self, d: torch.Tensor) -> torch.Tensor:
        lo, hi = self.centroids[0], self.centroids[1]
        return ((d - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        if float(self.unsupervised) > 0.5:
            p = self.cluster_score(self.distance(before, after))
        else:
            mu_a, _, mu_b, _ = self.common(before, after)
            p = torch.sigmoid(self.head(mu_a, mu_b).float())
        return p.view(-1, 1, 1, 1).to(before.dtype)


def two_means_1d(d: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """Centroids (low, high) of 2-means on 1-D values (initialised at the extremes' quartiles)."""
    d = d.flatten().double()
    c = torch.stack([d.quantile(0.25), d.quantile(0.75)])
    for _ in range(iters):
        far = (d - c[0]).abs() > (d - c[1]).abs()
        new = torch.stack([d[~far].mean() if (~far).any() else c[0], d[far].mean() if far.any() else c[1]])
        if torch.allclose(new, c):
            break
        c = new
    return c.sort().values.float()


@register_model("disentangled_vae", output="centre", paper="Hamaguchi et al. 2019, rare-event detection with disentangled representations (paper 000)")
def disentangled_vae(in_channels: int = 1, patch: int = 28, arch: str = "digits", zc: int = 16, zs: int = 16,
                     width: int = 32, levels: int = 3, hidden: int = 100, pinned: bool = True,
                     cluster_distance: str = "mahalanobis", cell: int = 14,
                     identical_negative: bool = True) -> DisentangledVAE:
    """Disentangled VAE pair classifier (paper 000): common/specific latents, detector on the common means."""
    return DisentangledVAE(in_channels, patch, arch, zc, zs, width, levels, hidden, pinned, cluster_distance, cell,
                           identical_negative)

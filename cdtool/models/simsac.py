"""SimSaC-style joint flow and change estimation (paper 001, after Park et al.'s SimSaC), small enough to
train from scratch on a CPU.

A shared feature-pyramid encoder f runs on both dates (strides 2, 4, 8, 16). A flow decoder g and a change
decoder h work coarse to fine over the strides 16, 8, 4, 2:

- stride 16: global correlation of every query (AFTER) feature with every reference (BEFORE) feature; a
  soft-argmax over it, with a learned Gaussian prior towards zero displacement, gives the coarse flow (no
  layer sees the correlation volume's size, so any tile size works), refined by a small convolution;
- strides 8, 4, 2: the reference features are warped by the upsampled flow (bilinear, `grid_sample`), a
  local correlation of radius `radius` is taken, g predicts a flow residual and h a change logit from the
  correlation of the re-warped features, the query features, the warped reference features and the
  upsampled change logit of the level below.

Flow convention (as `cdtool.data.synthetic`): flow (dx, dy) at an AFTER pixel p points to where that point
lies in BEFORE, BEFORE(p + flow(p)) = AFTER(p); flows are in full-resolution pixels at every level. The change
map lies on AFTER's grid (the query), as in SimSaC; for the small misregistrations `cdtool detect` handles
the two grids are nominally the same.

No difference, no change: every level's change logit gets log g added, where g = 1 - exp(-D / tau) and D is
the mean absolute difference of the two (normalised) input images over a 5x5 neighbourhood, area-averaged to
the level (tau learned, 0.05 at the start). Wherever the inputs differ at all g is ~1 and the logit is the
decoder's; where they are equal g = 0 and the change probability is 0 whatever the decoders learned, so
identical dates flag nothing by construction (a misregistered or changed pair always differs).

`decoders="separate"` holds a teacher pair (g_t, h_t) and a student pair (g_s, h_s) on the one encoder
(paper 001, Sec. 3.3); the teacher reads the encoder's features detached unless `teacher_grad` (eq. 8: the
teacher's losses train the teacher decoders φ only, the encoder belongs to the student's θ); `forward` (what `cdtool detect` runs) returns the student's change probability, or
the shared decoders' with `decoders="shared"`. No pretrained backbone is used (none can be downloaded here):
the encoder learns from the synthetic pairs; `models.model.init` in a recipe loads a local weights file.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.models.base import ChangeModel
from cdtool.models.registry import register_model

STRIDES = (16, 8, 4, 2)  # decoding levels, coarse to fine


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.1, inplace=True))


def warp(x: torch.Tensor, flow: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample x (B, C, h, w) at p + flow(p) / stride (flow (B, 2, h, w) in full-resolution pixels): the
    reference warped onto the query's grid; also the in-bounds mask (B, 1, h, w)."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    sx = xs + flow[:, 0] / stride
    sy = ys + flow[:, 1] / stride
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], -1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    inb = ((sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)).unsqueeze(1).to(x.dtype)
    return out, inb


def local_correlation(q: torch.Tensor, r: torch.Tensor, radius: int) -> torch.Tensor:
    """Cosine-like correlation of q with r at every displacement within ±radius: (B, (2r+1)^2, h, w)."""
    b, c, h, w = q.shape
    k = 2 * radius + 1
    patches = F.unfold(F.pad(r, [radius] * 4), k).view(b, c, k * k, h, w)
    return (q.unsqueeze(2) * patches).sum(1) / c


def global_flow(q: torch.Tensor, r: torch.Tensor, stride: int, temperature: torch.Tensor,
                log_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-argmax of the global correlation: the expected displacement (full-resolution pixels) of each query
    position in the reference, and the peak correlation (B, 1, h, w). A Gaussian prior on the displacement
    (σ = exp(log_sigma) coarse cells, learned) keeps a flat correlation at zero flow rather than at the
    tile's centre, so the estimate does not depend on the tile size."""
    b, c, h, w = q.shape
    qf, rf = F.normalize(q, dim=1).flatten(2), F.normalize(r, dim=1).flatten(2)  # (B, C, N)
    corr = torch.einsum("bcn,bcm->bnm", qf, rf)  # query n, reference m
    ys, xs = torch.meshgrid(torch.arange(h, device=q.device, dtype=q.dtype),
                            torch.arange(w, device=q.device, dtype=q.dtype), indexing="ij")
    pos = torch.stack([xs.flatten(), ys.flatten()], -1)  # (N, 2)
    d2 = torch.cdist(pos, pos).pow(2)  # (N, N)
    prob = torch.softmax(corr * temperature - d2 / (2 * torch.exp(2 * log_sigma)), dim=-1)
    target = prob @ pos  # (B, N, 2)
    flow = (target - pos).permute(0, 2, 1).reshape(b, 2, h, w) * stride
    peak = corr.max(-1).values.view(b, 1, h, w)
    return flow, peak


class Encoder(nn.Module):
    """Feature pyramid f: features at strides 2, 4, 8, 16 (widths w, 2w, 4w, 4w), with a top-down path."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        c = [width, 2 * width, 4 * width, 4 * width]
        self.stages = nn.ModuleList([
            nn.Sequential(_conv(in_channels, c[0], 2), _conv(c[0], c[0])),
            nn.Sequential(_conv(c[0], c[1], 2), _conv(c[1], c[1])),
            nn.Sequential(_conv(c[1], c[2], 2), _conv(c[2], c[2])),
            nn.Sequential(_conv(c[2], c[3], 2), _conv(c[3], c[3]))])
        self.lateral = nn.ModuleList([nn.Conv2d(c[i], c[i], 1) for i in range(3)])
        self.top = nn.ModuleList([nn.Conv2d(c[i + 1], c[i], 1) for i in range(3)])
        self.channels = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features coarse to fine: strides 16, 8, 4, 2."""
        feats = []
        for st in self.stages:
            x = st(x)
            feats.append(x)
        out = [feats[3]]
        for i in (2, 1, 0):
            up = F.interpolate(self.top[i](out[-1]), size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.lateral[i](feats[i]) + up)
        return out


class FlowDecoder(nn.Module):
    """g: coarse flow from global correlation, then residuals from local correlation at each finer level."""

    def __init__(self, channels: list[int], radius: int, hidden: int):
        super().__init__()
        k = (2 * radius + 1) ** 2
        self.radius = radius
        self.temperature = nn.Parameter(torch.tensor(10.0))
        self.log_sigma = nn.Parameter(torch.tensor(0.7))  # about 2 coarse cells (32 px) of prior spread
        cs = channels[::-1]  # coarse to fine
        self.coarse = nn.Sequential(_conv(cs[0] + 3, hidden), nn.Conv2d(hidden, 2, 3, padding=1))
        self.refine = nn.ModuleList([nn.Sequential(_conv(k + cs[i] + 2, hidden), _conv(hidden, hidden),
                                                   nn.Conv2d(hidden, 2, 3, padding=1)) for i in range(1, len(cs))])
        for head in [self.coarse[-1]] + [r[-1] for r in self.refine]:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def level(self, i: int, q: torch.Tensor, r: torch.Tensor, flow: torch.Tensor | None) -> torch.Tensor:
        s = STRIDES[i]
        if i == 0:
            f0, peak = global_flow(q, r, s, self.temperature, self.log_sigma)
            return f0 + self.coarse(torch.cat([q, f0 / s, peak], 1)) * s
        flow = F.interpolate(flow, size=q.shape[-2:], mode="bilinear", align_corners=False)  # full-res px
        rw, _ = warp(r, flow, s)
        corr = local_correlation(F.normalize(q, dim=1), F.normalize(rw, dim=1), self.radius)
        return flow + self.refine[i - 1](torch.cat([corr, q, flow / s], 1)) * s


class ChangeDecoder(nn.Module):
    """h: a change logit per level from the query features, the reference features warped by the level's flow,
    their local correlation and the upsampled logit of the level below."""

    def __init__(self, channels: list[int], radius: int, hidden: int):
        super().__init__()
        k = (2 * radius + 1) ** 2
        self.radius = radius
        cs = channels[::-1]
        self.heads = nn.ModuleList([nn.Sequential(_conv(k + 3 * cs[i] + (1 if i else 0), hidden), _conv(hidden, hidden),
                                                  nn.Conv2d(hidden, 1, 3, padding=1)) for i in range(len(cs))])

    def level(self, i: int, q: torch.Tensor, r: torch.Tensor, flow: torch.Tensor, prev: torch.Tensor | None
              ) -> torch.Tensor:
        rw, _ = warp(r, flow, STRIDES[i])
        qn, rn = F.normalize(q, dim=1), F.normalize(rw, dim=1)
        corr = local_correlation(qn, rn, self.radius)
        parts = [corr, q, rw, (q - rw).abs()]
        if prev is not None:
            parts.append(F.interpolate(prev, size=q.shape[-2:], mode="bilinear", align_corners=False))
        return self.heads[i](torch.cat(parts, 1))


class Decoders(nn.Module):
    """One (g, h) pair, run coarse to fine."""

    def __init__(self, channels: list[int], radius: int, hidden: int):
        super().__init__()
        self.g = FlowDecoder(channels, radius, hidden)
        self.h = ChangeDecoder(channels, radius, hidden)

    def forward(self, fr: list[torch.Tensor], fq: list[torch.Tensor]) -> dict:
        flows, logits, flow, logit = [], [], None, None
        for i in range(len(STRIDES)):
            flow = self.g.level(i, fq[i], fr[i], flow)
            logit = self.h.level(i, fq[i], fr[i], flow, logit)
            flows.append(flow)
            logits.append(logit)
        return {"flows": flows, "logits": logits}


def difference_gate(before: torch.Tensor, after: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
    """log g (B, 1, H, W), g = 1 - exp(-D / tau): D the channel-mean |after - before| averaged over 5x5; log g
    is -inf-free (at most about -27.6 where the inputs are equal) and ~0 wherever they differ."""
    d = F.avg_pool2d((after - before).abs().mean(1, keepdim=True), 5, stride=1, padding=2, count_include_pad=False)
    return torch.log((-torch.expm1(-d / torch.exp(log_tau))).clamp_min(1e-12))


def _gated(logits: list[torch.Tensor], log_g: torch.Tensor) -> list[torch.Tensor]:
    return [lg + F.adaptive_avg_pool2d(log_g.exp(), lg.shape[-2:]).clamp_min(1e-12).log() for lg in logits]


class SimSaC(ChangeModel):
    """Shared encoder, flow and change decoders (shared, or teacher and student pairs)."""

    halo = 32
    size_multiple = 16
    estimates_flow = True
    strides = STRIDES

    def __init__(self, in_channels: int = 3, width: int = 16, radius: int = 3, hidden: int = 32,
                 decoders: str = "shared", teacher_grad: bool = False):
        super().__init__()
        self.teacher_grad = bool(teacher_grad)
        if decoders not in ("shared", "separate"):
            raise ValueError(f"decoders must be 'shared' or 'separate', got {decoders!r}")
        self.separate = decoders == "separate"
        self.encoder = Encoder(in_channels, width)
        ch = self.encoder.channels
        self.teacher = Decoders(ch, radius, hidden)  # the shared decoders when not separate
        self.student = Decoders(ch, radius, hidden) if self.separate else None
        self.log_tau = nn.Parameter(torch.tensor(-3.0))  # tau 0.05 (normalised units) of the difference gate

    def encode(self, before: torch.Tensor, after: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n = before.shape[0]
        feats = self.encoder(torch.cat([before, after]))
        return [f[:n] for f in feats], [f[n:] for f in feats]

    def _detector(self) -> Decoders:
        return self.student if self.separate else self.teacher

    def forward_train(self, before: torch.Tensor, after: torch.Tensor, before_s: torch.Tensor | None = None,
                      after_s: torch.Tensor | None = None) -> dict:
        """Teacher (or shared) outputs on (before, after): per-level ``flows`` (B, 2, h, w) and ``logits``
        (B, 1, h, w), coarse to fine (strides 16, 8, 4, 2), and the encoder features ``feats_r``/``feats_q``.
        With separate decoders, or when student inputs (e.g. photometrically augmented) are given, also
        ``student``: the student decoders' (or the shared ones') outputs on (before_s, after_s)."""
        n = before.shape[0]
        xs = [before, after] + ([before_s, after_s] if before_s is not None else [])
        feats = self.encoder(torch.cat(xs))
        fr, fq = [f[:n] for f in feats], [f[n:2 * n] for f in feats]
        if self.separate and not self.teacher_grad:  # eq. 8: the teacher's losses train its decoders only
            out = self.teacher([f.detach() for f in fr], [f.detach() for f in fq])
        else:
            out = self.teacher(fr, fq)
        gate = difference_gate(before, after, self.log_tau)
        out.update(feats_r=fr, feats_q=fq, logits=_gated(out["logits"], gate))
        if before_s is not None:
            st = self._detector()(*([f[2 * n:3 * n] for f in feats], [f[3 * n:] for f in feats]))
            out["student"] = {**st, "logits": _gated(st["logits"], difference_gate(before_s, after_s, self.log_tau))}
        elif self.separate:
            st = self.student(fr, fq)
            out["student"] = {**st, "logits": _gated(st["logits"], gate)}
        return out

    def predict(self, before: torch.Tensor, after: torch.Tensor, symmetric: bool = True) -> dict:
        """The detecting decoders' finest flow and change logit, upsampled to the input size; the logit is
        gated at full resolution (no input difference: no change). With `symmetric` the flow is the
        forward-backward average ½(f(BEFORE → AFTER) − f(AFTER → BEFORE)) (the decoders run a second time on
        the swapped features): for a few pixels of smooth misregistration the backward flow is about minus
        the forward one, so this keeps the estimate and cancels whatever bias both directions share (a tile's
        border pulls the coarse soft-argmax towards its centre); identical dates get exactly zero flow. The
        one-way flow f(BEFORE → AFTER) comes along as "flow_one_way"."""
        fr, fq = self.encode(before, after)
        dec = self._detector()
        out = dec(fr, fq)
        size = before.shape[-2:]
        forward = out["flows"][-1]
        one_way = F.interpolate(forward, size=size, mode="bilinear", align_corners=False)
        flow = one_way
        if symmetric:
            flow = F.interpolate(0.5 * (forward - dec(fq, fr)["flows"][-1]), size=size, mode="bilinear",
                                 align_corners=False)
        logit = F.interpolate(out["logits"][-1], size=size, mode="bilinear", align_corners=False)
        return {"flow": flow, "flow_one_way": one_way, "logit": logit + difference_gate(before, after, self.log_tau)}

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Change probability (B, 1, H, W) on AFTER's grid: the student's with separate decoders."""
        return torch.sigmoid(self.predict(before, after, symmetric=False)["logit"])

    def forward_flow(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Estimated flow (B, 2, H, W), (dx, dy) in pixels: BEFORE(p + flow(p)) = AFTER(p); forward-backward
        symmetric (`predict`)."""
        return self.predict(before, after)["flow"]


@register_model("simsac", output="dense",
                paper="after Park et al. 2022, SimSaC: joint flow and change on misaligned pairs (paper 001)")
def simsac(in_channels: int = 3, width: int = 16, radius: int = 3, hidden: int = 32,
           decoders: str = "shared", teacher_grad: bool = False) -> SimSaC:
    """SimSaC-style joint flow + change network (global/local correlation, coarse to fine); teacher/student decoders."""
    return SimSaC(in_channels, width, radius, hidden, decoders, teacher_grad)

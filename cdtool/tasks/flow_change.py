"""Task family ``flow_change``: semi-supervised change detection with flow and feature-metric alignment
(paper 001: Lee & Kim, "Semi-Supervised Scene Change Detection by Distillation from Feature-metric
Alignment", after SimSaC).

Two sources per step: ``labelled`` (synthetic pairs with a true ``flow`` and ``mask``, `cdtool patches -p
synthetic`) and ``unlabelled`` (target pairs, e.g. kind ``misaligned``; their labels are never read here).
Phases:

- ``pretrain``: L_sup (hierarchical EPE + hierarchical focal, eq. 2) on the labelled pairs, for every
  decoder pair the model holds; it draws the labelled source only (`phase_sources`);
- ``adapt`` (eq. 8): the teacher (or shared) decoders get L_sup + L_unsup (eq. 6) on the original inputs;
  with ``losses.dist.args.weight`` > 0 the student decoders get L_sup + L_dist (eq. 7) on photometrically
  augmented inputs (colour jitter, grey, random shadow, brightness/contrast; each date drawn on its
  own), with the teacher's detached outputs as targets. With separate decoders the teacher sees the
  encoder's features detached (`simsac` model arg ``teacher_grad: false``), so per eq. 8 only θ (encoder +
  student) learns from L_sup(θ) + L_dist(θ) and only φ (the teacher decoders) from L_sup(φ) + L_unsup(φ).

The loss switches are loss arguments (``unsup: {feat, cr, sm}``, ``dist: {weight}``; 0 is off), so every row
of the paper's ablations is a recipe variant. One optimiser (the recipe's, AdamW in the shipped recipes)
steps on the sum; the teacher and student parameter sets are disjoint, so this equals eq. 8's split.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from cdtool.engine.task import Step, Task, register_task
from cdtool.errors import InputError
from cdtool.normalization import normalize_stack


def photometric(raw: torch.Tensor) -> torch.Tensor:
    """Strong photometric augmentation of raw images (B, C, H, W), each image drawn on its own (torch's RNG,
    which the loop seeds per epoch): scaled to [0, 1] by its own range; colour jitter (brightness, contrast,
    saturation, p 0.8; saturation for 3 bands only); grey (p 0.2, 3 bands); a random shadow (p 0.5: a smooth
    random field darkening up to half the image by up to 50 %); then back to the image's range. Written with
    kornia's colour conversion and plain tensor ops: kornia's RandomPlasmaShadow and ColorJitter cost about
    a second per batch of 8 on a CPU, more than the model's step."""
    import kornia

    b, c = raw.shape[:2]
    lo = raw.amin(dim=(1, 2, 3), keepdim=True)
    hi = raw.amax(dim=(1, 2, 3), keepdim=True)
    x = ((raw - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)

    def draw(p: float, a: float, bnd: float) -> torch.Tensor:  # factor in [a, bnd] with probability p, else 1
        f = torch.empty(b, 1, 1, 1, device=x.device).uniform_(a, bnd)
        return torch.where(torch.rand(b, 1, 1, 1, device=x.device) < p, f, torch.ones_like(f))

    x = (x * draw(0.8, 0.7, 1.3)).clamp(0, 1)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * draw(0.8, 0.7, 1.3) + mean).clamp(0, 1)  # contrast
    if c == 3:
        grey = kornia.color.rgb_to_grayscale(x)
        x = ((x - grey) * draw(0.8, 0.7, 1.3) + grey).clamp(0, 1)  # saturation
        to_grey = torch.rand(b, 1, 1, 1, device=x.device) < 0.2
        x = torch.where(to_grey, kornia.color.rgb_to_grayscale(x).expand_as(x), x)
    field = torch.nn.functional.interpolate(torch.rand(b, 1, 4, 4, device=x.device), size=x.shape[-2:],
                                            mode="bicubic", align_corners=False)
    shadow = (field > torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.5, 1.0)).float()
    shadow = kornia.filters.box_blur(shadow, (5, 5))
    x = x * (1 - shadow * (1 - draw(0.5, 0.5, 1.0)))
    return lo + x.clamp(0, 1) * (hi - lo)


@register_task
class FlowChangeTask(Task):
    """Joint flow + change (SimSaC) from synthetic labels and unlabelled misaligned target pairs (paper 001)."""

    name = "flow_change"
    phases = ("pretrain", "adapt")
    models: ClassVar[dict[str, str]] = {"model": "simsac: shared encoder f, flow decoder g, change decoder h "
                                                 "(teacher and student pairs with decoders: separate)"}
    losses: ClassVar[dict[str, str]] = {"sup": "L_sup on labelled pairs (simsac_sup)",
                                        "unsup": "L_unsup on unlabelled pairs, teacher only (simsac_unsup)",
                                        "dist": "L_dist, student vs teacher on augmented pairs (simsac_dist)"}
    sources: ClassVar[dict[str, str]] = {"labelled": "synthetic pairs with flow and mask (cdtool patches -p synthetic)",
                                         "unlabelled": "target pairs, labels unused (e.g. kind misaligned)"}
    phase_sources: ClassVar[dict[str, tuple[str, ...]]] = {"pretrain": ("labelled",)}

    @classmethod
    def check(cls, recipe) -> None:
        want = {"sup": "simsac_sup", "unsup": "simsac_unsup", "dist": "simsac_dist"}
        for role, name in want.items():
            if recipe.losses[role].name != name:
                raise ValueError(f"losses.{role}: task 'flow_change' takes loss {name!r}, not {recipe.losses[role].name!r}")
        if recipe.models["model"].name != "simsac":
            raise ValueError(f"models.model: task 'flow_change' trains model 'simsac', not {recipe.models['model'].name!r}")

    def build(self) -> None:
        self.sup, self.unsup, self.dist = self.loss_fns["sup"], self.loss_fns["unsup"], self.loss_fns["dist"]
        self.strides = tuple(self.nets["model"].strides)

    def _labelled(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if "flow" not in batch or "mask" not in batch:
            raise InputError("data.train.labelled: task 'flow_change' needs pairs with a true flow and a change mask "
                             "(cdtool patches -p synthetic ..., or kind misaligned)")
        before, after = self.pair(batch)
        valid = batch["valid"].float() if "valid" in batch else None
        return before, after, batch["mask"].float(), batch["flow"].float(), valid

    def _augmented(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raw = batch["image"].float()
        aug = torch.stack([photometric(raw[:, 0]), photometric(raw[:, 1])], 1)
        # statistics of the augmented images themselves in per-image mode, as detection would compute them
        x = normalize_stack(aug, self.recipe.normalization, None, None)
        return x[:, 0], x[:, 1]

    def training_step(self, wrapped, batches: dict[str, dict], phase: str) -> Step:
        bl, al, mask, flow, valid = self._labelled(batches["labelled"])
        model = wrapped["model"]
        if phase == "pretrain" or not (self.unsup.active() or self.dist.weight):
            out = model(bl, al)
            loss, parts = self.sup(out, mask, flow, valid)
            if "student" in out:
                ls, ps = self.sup(out["student"], mask, flow, valid)
                loss = loss + ls
                parts.update({f"student_{k}": v for k, v in ps.items()})
            yield "model", loss, parts
            return
        n = bl.shape[0]
        bu, au = self.pair(batches["unlabelled"])
        before, after = torch.cat([bl, bu]), torch.cat([al, au])
        if self.dist.weight:
            sbl, sal = self._augmented(batches["labelled"])
            sbu, sau = self._augmented(batches["unlabelled"])
            out = model(before, after, torch.cat([sbl, sbu]), torch.cat([sal, sau]))
        else:
            out = model(before, after)
        lab = {k: [t[:n] for t in out[k]] for k in ("flows", "logits")}
        unl = {k: [t[n:] for t in out[k]] for k in ("flows", "logits", "feats_r", "feats_q")}
        loss, parts = self.sup(lab, mask, flow, valid)
        if self.unsup.active():
            lu, pu = self.unsup(unl, au, self.strides)
            loss = loss + lu
            parts.update(pu)
        if "student" in out:
            st = out["student"]
            ls, ps = self.sup({k: [t[:n] for t in st[k]] for k in ("flows", "logits")}, mask, flow, valid)
            loss = loss + ls
            parts.update({f"student_{k}": v for k, v in ps.items()})
            if self.dist.weight:
                ld, pd = self.dist({k: [t[n:] for t in st[k]] for k in ("flows", "logits")},
                                   {k: [t.detach() for t in unl[k]] for k in ("flows", "logits")})
                loss = loss + ld
                parts.update(pd)
        yield "model", loss, parts

"""Rare-event detection with disentangled representations (paper 000): task family `vae`.

Phases, in order (a recipe picks and sizes them):
  * ``represent``: the two-branch VAE (`disentangled_vae` model) on negative pairs only, loss role `vae`
    (eq. 3: ELBO_A + ELBO_B + λ1·L_sim + λ2·L_act; `distance: none` for "VAE without L_sim"). The source
    keeps only negatives through the generic dataset arg ``labels: [0]`` (a phase override).
  * ``finetune``: the 3-layer detector on [µc_A, µc_B] with loss role `change` (bce on the single logit,
    the same as 2-way softmax cross-entropy); the encoder at a lower learning rate (recipe ``groups:
    {model.vae: 0.1}``), negatives under-sampled to the positives (``sampler: under``).
  * ``cluster`` (zero epochs): the unsupervised mode of Table 2: 2-means on the distance between the
    common features of the phase's (unlabelled) pairs; the centroids go into the model's buffers and
    detection then scores by them.
Validation: each labelled pair's score against its label (as task `patch`).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from cdtool.engine.task import PhaseContext, Step, Task, register_task
from cdtool.errors import InputError
from cdtool.losses.base import loss_entry
from cdtool.metrics import BinaryMetrics
from cdtool.models.disentangled_vae import two_means_1d


@register_task
class VAETask(Task):
    """Disentangled VAE (paper 000): representation learning on negatives, detector fine-tuning, 2-means."""

    name = "vae"
    phases: ClassVar[tuple[str, ...]] = ("represent", "finetune", "cluster")
    models: ClassVar[dict[str, str]] = {"model": "disentangled_vae: the two-branch VAE and its detector head"}
    losses: ClassVar[dict[str, str]] = {"vae": "representation loss on the VAE outputs (disentangled_vae)",
                                        "change": "detector loss on logits (bce)"}
    sources: ClassVar[dict[str, str]] = {"main": "labelled patch pairs (cdtool patches mnist|pcd)"}
    detector = "model"

    @classmethod
    def check(cls, recipe) -> None:
        if recipe.models["model"].name != "disentangled_vae":
            raise ValueError(f"task 'vae' trains model 'disentangled_vae', not {recipe.models['model'].name!r}")
        if "mu_c" not in loss_entry(recipe.losses["vae"].name).needs:
            raise ValueError(f"losses.vae: {recipe.losses['vae'].name!r} is no VAE loss; use disentangled_vae")
        if loss_entry(recipe.losses["change"].name).needs != ("logits",):
            raise ValueError(f"losses.change: {recipe.losses['change'].name!r} is no loss on logits; use bce")

    def training_step(self, wrapped, batches: dict[str, dict], phase: str) -> Step:
        batch = batches["main"]
        before, after = self.pair(batch)
        if phase == "represent":
            if "label" in batch and bool((batch["label"] > 0).any()):
                raise InputError("phase 'represent' learns from negative pairs only; give its source "
                                 "`labels: [0]` (phases[].train: {main: {labels: [0]}})")
            out = wrapped["model"](before, after, vae=True)
            loss, parts = self.loss_fns["vae"](out)
            yield "model", loss, parts
        elif phase == "finetune":
            if "label" not in batch:
                raise InputError("phase 'finetune' needs labelled pairs (cdtool patches mnist|pcd)")
            out = wrapped["model"](before, after)
            target = (batch["label"] > 0).float().view(-1, 1, 1, 1)
            loss, parts = self.loss_fns["change"](out, target, None)
            yield "model", loss, parts
        else:
            raise InputError(f"phase {phase!r} of task 'vae' trains nothing; give it 0 epochs")

    @torch.no_grad()
    def before_phase(self, phase: str, ctx: PhaseContext) -> None:
        model = self.nets["model"]
        if phase != "cluster":
            model.unsupervised.fill_(0.0)
            return
        was = model.training
        model.eval()
        dist = [model.distance(*self.pair(batch)) for batch in ctx.batches("main", 256)]
        model.train(was)
        if not dist:
            raise InputError("phase 'cluster': its source has no pairs")
        model.centroids.copy_(two_means_1d(torch.cat(dist)).to(model.centroids))
        model.unsupervised.fill_(1.0)

    def validate(self, loader, device: torch.device, amp: bool) -> BinaryMetrics:
        from cdtool.engine.evaluate import evaluate_labels

        return evaluate_labels(self.nets["model"], loader, self.recipe.normalization, device, 0.5, amp)

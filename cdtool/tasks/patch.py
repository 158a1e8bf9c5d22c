"""Patch pairs labelled by their centre (PCD-style, MNIST): one change logit per pair against its label,
the shape of paper 000's siamese baselines (with under- or over-sampling by the source's sampler)."""

from __future__ import annotations

from typing import ClassVar

import torch

from cdtool.engine.task import register_task
from cdtool.errors import InputError
from cdtool.losses.base import loss_entry
from cdtool.metrics import BinaryMetrics
from cdtool.models.registry import model_entry
from cdtool.tasks.dense import DenseTask


@register_task
class PatchTask(DenseTask):
    """Patch pairs labelled by their centre: one change logit per pair; validated by the score at each
    pair's centre against its label."""

    name = "patch"
    sources: ClassVar[dict[str, str]] = {"patches": "labelled patch pairs (cdtool patches pcd|mnist|footprints)"}

    @classmethod
    def check(cls, recipe) -> None:
        if loss_entry(recipe.losses["change"].name).needs != ("logits",):
            raise ValueError(f"task 'patch' needs a loss on logits (bce), not {recipe.losses['change'].name!r}")
        if model_entry(recipe.models["model"].name).output != "centre":
            raise ValueError(f"model {recipe.models['model'].name!r} gives dense maps; train it with task "
                             "'dense' or 'metric', not 'patch'")

    def training_step(self, wrapped, batches: dict[str, dict], phase: str):
        yield from super().training_step(wrapped, {"pairs": batches["patches"]}, phase)

    def target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "label" not in batch:
            raise InputError("task 'patch' needs labelled samples (cdtool patches pcd|mnist|footprints)")
        return batch["label"].float().view(-1, 1, 1, 1), None

    def validate(self, loader, device: torch.device, amp: bool) -> BinaryMetrics:
        from cdtool.engine.evaluate import evaluate_labels

        return evaluate_labels(self.nets["model"], loader, self.recipe.normalization, device, 0.5, amp)

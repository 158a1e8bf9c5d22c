"""Dense change maps against change masks: FC-Siam and FCN-Metrics (change logits), CosimNet (feature
distance maps by a metric loss). One model, one loss, one source of labelled pairs, one optimiser."""

from __future__ import annotations

from typing import ClassVar

import torch

from cdtool.engine.task import Step, Task, register_task
from cdtool.errors import InputError
from cdtool.losses.base import loss_entry
from cdtool.models.registry import model_entry


@register_task
class DenseTask(Task):
    """Change logits per pixel against the change mask (FC-Siam, FCN-Metrics)."""

    name = "dense"
    losses: ClassVar[dict[str, str]] = {"change": "compares the model's training outputs with the change mask"}
    sources: ClassVar[dict[str, str]] = {"pairs": "labelled pairs (change masks)"}

    @classmethod
    def check(cls, recipe) -> None:
        if model_entry(recipe.models["model"].name).output != "dense":
            raise ValueError(f"model {recipe.models['model'].name!r} gives one score per patch; train it with "
                             f"task 'patch', not {recipe.task!r}")

    def build(self) -> None:
        if self.nets["model"].forward_train is None:
            raise InputError(f"model {self.recipe.models['model'].name!r} has nothing to train (no forward_train)")
        self.loss = self.loss_fns["change"]
        self._needs = loss_entry(self.recipe.losses["change"].name).needs

    def training_step(self, wrapped, batches: dict[str, dict], phase: str) -> Step:
        batch = batches["pairs"]
        out = wrapped["model"](*self.pair(batch))  # TrainOutputs (maybe under DDP): forward_train
        missing = [k for k in self._needs if k not in out]
        if missing:
            raise InputError(f"loss {self.recipe.losses['change'].name!r} needs model outputs {missing}, which "
                             f"model {self.recipe.models['model'].name!r} does not give (it gives {sorted(out)})")
        target, valid = self.target(batch)
        loss, parts = self.loss(out, target, valid)
        yield "model", loss, parts

    def target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the loss compares the outputs with: the change mask, and the pixels that count."""
        if "mask" not in batch:
            raise InputError(f"task {self.name!r} needs change masks, and this dataset has none; "
                             "labelled patches train with task 'patch'")
        return batch["mask"], batch["valid"].float() if "valid" in batch else None


@register_task
class MetricTask(DenseTask):
    """Feature distance maps against the change mask by a metric loss (CosimNet: contrastive, TCL, cos)."""

    name = "metric"

    @classmethod
    def check(cls, recipe) -> None:
        super().check(recipe)
        if loss_entry(recipe.losses["change"].name).needs == ("logits",):
            raise ValueError(f"task 'metric' needs a metric loss, not {recipe.losses['change'].name!r}")

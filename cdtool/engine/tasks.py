"""Tasks own their training step; the loop (cdtool.engine.loop) owns everything else.

A task declares its named modules (each saved as a named state dict in the checkpoint), its optimisers
(one per name; a step returns one loss per optimiser, stepped in order, so alternating adversarial
updates fit), its phases (a recipe may run several, e.g. pre-train then fine-tune, and a checkpoint
records the phase), and how to predict change scores for validation. Dense and metric training share a
step: the model's ``forward_train`` outputs go to the loss, which reads logits or distance maps. Patch
classification (paper 000's baselines) supervises one logit per sample with the sample's label, and
validates per sample, so a task also owns how it is validated.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from cdtool.engine.evaluate import evaluate_labels, evaluate_loader
from cdtool.engine.recipe import Recipe
from cdtool.errors import InputError
from cdtool.losses.base import loss_entry
from cdtool.metrics import BinaryMetrics


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Task:
    """One model, one loss, one optimiser: the shape of FC-Siam and CosimNet training."""

    name: ClassVar[str] = "dense"
    phases: ClassVar[tuple[str, ...]] = ("train",)

    def __init__(self, recipe: Recipe, model: nn.Module, loss: nn.Module):
        self.recipe, self.model, self.loss = recipe, model, loss
        needs = loss_entry(recipe.loss.name).needs
        if not hasattr(model, "forward_train"):
            raise InputError(f"model {recipe.model.name!r} has nothing to train (no forward_train)")
        self._needs = needs

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self, wrapped: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"model": build_optimizer(wrapped["model"].parameters(), self.recipe.optim)}

    def training_step(self, wrapped: dict[str, nn.Module], before: torch.Tensor, after: torch.Tensor,
                      batch: dict, phase: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Losses per optimiser name, and numbers to log. `wrapped` holds the modules as the loop wraps them
        for training (`TrainOutputs`, and DDP when distributed)."""
        out = wrapped["model"](before, after)  # TrainOutputs (maybe under DDP): forward_train
        missing = [k for k in self._needs if k not in out]
        if missing:
            raise InputError(f"loss {self.recipe.loss.name!r} needs model outputs {missing}, which model "
                             f"{self.recipe.model.name!r} does not give (it gives {sorted(out)})")
        target, valid = self.target(batch)
        loss, parts = self.loss(out, target, valid)
        return {"model": loss}, parts

    def target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the loss compares the outputs with: the change mask, and the pixels that count."""
        if "mask" not in batch:
            raise InputError(f"task {self.name!r} needs change masks, and this dataset has none; "
                             "labelled patches train with task 'patch'")
        return batch["mask"], batch["valid"].float() if "valid" in batch else None

    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.model(before, after)

    def validate(self, loader, normalization: dict, device: torch.device, amp: bool) -> BinaryMetrics:
        """Metrics at threshold 0.5 plus the score histograms the threshold is tuned on."""
        acc, _ = evaluate_loader(self.model, loader, normalization, device, 0.5, amp)
        return acc


class DenseTask(Task):
    name = "dense"


class MetricTask(Task):
    """Same step; distance maps are supervised by a metric loss and the threshold is tuned on validation."""

    name = "metric"


class PatchTask(Task):
    """Patch-pair classification (PCD-style patches labelled by their centre): the model's logits on a
    patch-sized pair are (B, 1, 1, 1), one per pair, supervised by the sample's label; validation scores
    each pair by its centre pixel and compares it with the label."""

    name = "patch"

    def target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "label" not in batch:
            raise InputError("task 'patch' needs labelled samples (cdtool patches pcd|mnist|footprints)")
        return batch["label"].float().view(-1, 1, 1, 1), None

    def validate(self, loader, normalization: dict, device: torch.device, amp: bool) -> BinaryMetrics:
        return evaluate_labels(self.model, loader, normalization, device, 0.5, amp)


TASKS: dict[str, type[Task]] = {"dense": DenseTask, "metric": MetricTask, "patch": PatchTask}


class TrainOutputs(nn.Module):
    """Wraps a model so its ``forward`` returns the training outputs: DDP then sees (and synchronises)
    the forward it wraps, while the model's own ``forward`` keeps the detection contract."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        return self.model.forward_train(before, after)

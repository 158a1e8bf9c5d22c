"""Tasks own their training step; the loop (cdtool.engine.loop) owns everything else.

A task declares its named modules (each saved as a named state dict in the checkpoint), its optimisers
(one per name; a step returns one loss per optimiser, stepped in order, so alternating adversarial
updates fit), its phases (a recipe may run several, e.g. pre-train then fine-tune, and a checkpoint
records the phase), and how to predict change scores for validation. Dense and metric training share a
step: the model's ``forward_train`` outputs go to the loss, which reads logits or distance maps.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from cdtool.engine.recipe import Recipe
from cdtool.errors import InputError
from cdtool.losses.base import loss_entry


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
        valid = batch["valid"].float() if "valid" in batch else None
        loss, parts = self.loss(out, batch["mask"], valid)
        return {"model": loss}, parts

    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.model(before, after)


class DenseTask(Task):
    name = "dense"


class MetricTask(Task):
    """Same step; distance maps are supervised by a metric loss and the threshold is tuned on validation."""

    name = "metric"


TASKS: dict[str, type[Task]] = {"dense": DenseTask, "metric": MetricTask}


class TrainOutputs(nn.Module):
    """Wraps a model so its ``forward`` returns the training outputs: DDP then sees (and synchronises)
    the forward it wraps, while the model's own ``forward`` keeps the detection contract."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        return self.model.forward_train(before, after)

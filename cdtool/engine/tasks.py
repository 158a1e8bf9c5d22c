"""Tasks own their training step; the loop (cdtool.engine.loop) owns everything else.

A task declares its named modules (each saved as a named state dict in the checkpoint), its optimisers
per phase (one per name), its phases (a recipe runs one or several in order, e.g. learn a representation,
then fine-tune a head at another learning rate with another sampler; a checkpoint records the phase), and
how it is validated. Its step is a generator that yields one loss per optimiser: the loop steps that
optimiser before the generator goes on, so alternating updates (an adversarial critic, then the
generator against the updated critic) see each other's steps. Dense and metric training share a step:
the model's ``forward_train`` outputs go to the loss, which reads logits or distance maps. Patch
classification (paper 000's baselines) supervises one logit per sample with the sample's label, and
validates per sample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Iterator

import torch
import torch.nn as nn

from cdtool.engine.evaluate import evaluate_labels, evaluate_loader
from cdtool.errors import InputError
from cdtool.losses.base import loss_entry
from cdtool.metrics import BinaryMetrics
from cdtool.registry import Registry

if TYPE_CHECKING:
    from cdtool.engine.recipe import Recipe

Step = Iterator[tuple[str, torch.Tensor, dict[str, float]]]  # (optimiser name, loss, numbers to log)


def build_optimizer(params, cfg, lr: float | None = None) -> torch.optim.Optimizer:
    """The recipe's optimiser over `params` (or parameter groups), at `lr` when a phase sets one."""
    lr = cfg.lr if lr is None else lr
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=cfg.weight_decay)


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

    def optimizers(self, wrapped: dict[str, nn.Module], phase: str, lr: float | None) -> dict[str, torch.optim.Optimizer]:
        """Fresh optimisers at the start of `phase` (its learning rate `lr`, None: the recipe's)."""
        return {"model": build_optimizer(wrapped["model"].parameters(), self.recipe.optim, lr)}

    def training_step(self, wrapped: dict[str, nn.Module], before: torch.Tensor, after: torch.Tensor,
                      batch: dict, phase: str) -> Step:
        """Yield (optimiser name, loss, parts) per update. `wrapped` holds the modules as the loop wraps
        them for training (`TrainOutputs`, and DDP when distributed)."""
        out = wrapped["model"](before, after)  # TrainOutputs (maybe under DDP): forward_train
        missing = [k for k in self._needs if k not in out]
        if missing:
            raise InputError(f"loss {self.recipe.loss.name!r} needs model outputs {missing}, which model "
                             f"{self.recipe.model.name!r} does not give (it gives {sorted(out)})")
        target, valid = self.target(batch)
        loss, parts = self.loss(out, target, valid)
        yield "model", loss, parts

    def target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the loss compares the outputs with: the change mask, and the pixels that count."""
        if "mask" not in batch:
            raise InputError(f"task {self.name!r} needs change masks, and this dataset has none; "
                             "labelled patches train with task 'patch'")
        return batch["mask"], batch["valid"].float() if "valid" in batch else None

    def validate(self, loader, normalization: dict, device: torch.device, amp: bool) -> BinaryMetrics:
        """Metrics at threshold 0.5 plus the score histograms the threshold is tuned on."""
        acc, _ = evaluate_loader(self.model, loader, normalization, device, 0.5, amp)
        return acc


TASKS: Registry[type[Task]] = Registry("task", "cdtool.engine.tasks")


def register_task(cls: type[Task]) -> type[Task]:
    """Make a task family available to recipes (key `task`) under its `name`."""
    return TASKS.register(cls.name)(cls)


@register_task
class DenseTask(Task):
    """Change logits per pixel against the change mask (FC-Siam, FCN-Metrics)."""

    name = "dense"


@register_task
class MetricTask(Task):
    """Feature distance maps against the change mask by a metric loss (CosimNet: contrastive, TCL, cos)."""

    name = "metric"


@register_task
class PatchTask(Task):
    """Patch pairs labelled by their centre (PCD-style, MNIST): one change logit per pair against its label.

    The model's logits on a patch-sized pair are (B, 1, 1, 1); validation scores each pair by the model's
    score at its centre pixel and compares it with the label."""

    name = "patch"

    def target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "label" not in batch:
            raise InputError("task 'patch' needs labelled samples (cdtool patches pcd|mnist|footprints)")
        return batch["label"].float().view(-1, 1, 1, 1), None

    def validate(self, loader, normalization: dict, device: torch.device, amp: bool) -> BinaryMetrics:
        return evaluate_labels(self.model, loader, normalization, device, 0.5, amp)


class TrainOutputs(nn.Module):
    """Wraps a model so its ``forward`` returns the training outputs: DDP then sees (and synchronises)
    the forward it wraps, while the model's own ``forward`` keeps the detection contract."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        return self.model.forward_train(before, after)

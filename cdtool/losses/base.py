"""The loss registry and the one calling convention every loss follows.

A loss is an `nn.Module` called as ``loss(outputs, target, valid) -> (scalar, {name: float})`` where
`outputs` is what a model's ``forward_train`` returns: a dict that may hold ``logits`` (list of
``(B, 1, H, W)`` change logits, one per side output), ``distances`` (list of feature distance maps at
input resolution) and ``layer_scores`` (list of per-layer change scores in [0, 1]). `target` is the
change mask ``(B, 1, H, W)`` in {0, 1}; `valid` is a same-shaped float mask of pixels that count.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from cdtool.errors import InputError
from cdtool.registry import Entry, Registry


LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss", "cdtool.losses")


def register_loss(name: str, *, needs: tuple[str, ...] = ()) -> Callable:
    """Register a loss builder; `needs` names the keys of the model's training outputs it reads."""
    return LOSSES.register(name, needs=tuple(needs))


def loss_names() -> list[str]:
    return LOSSES.names()


def loss_entry(name: str) -> Entry:
    return LOSSES.entry(name)


def create_loss(name: str, **kwargs) -> nn.Module:
    return LOSSES.create(name, **kwargs)


def layer_weights(weights: list[float] | None, n: int) -> list[float]:
    """β per side output: given, or equal; the deepest layer is last, as models list them."""
    if weights is None:
        return [1.0] * n
    if len(weights) < n:
        raise InputError(f"loss weights {weights} give fewer values than the model's {n} side outputs")
    return [float(w) for w in weights[-n:]]


def masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return x.mean()
    return (x * valid).sum() / valid.sum().clamp_min(1.0)

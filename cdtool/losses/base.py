"""The loss registry and the one calling convention every loss follows.

A loss is an `nn.Module` called as ``loss(outputs, target, valid) -> (scalar, {name: float})`` where
`outputs` is what a model's ``forward_train`` returns: a dict that may hold ``logits`` (list of
``(B, 1, H, W)`` change logits, one per side output), ``distances`` (list of feature distance maps at
input resolution) and ``layer_scores`` (list of per-layer change scores in [0, 1]). `target` is the
change mask ``(B, 1, H, W)`` in {0, 1}; `valid` is a same-shaped float mask of pixels that count.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from cdtool.errors import InputError


@dataclass(frozen=True)
class LossEntry:
    name: str
    builder: Callable[..., nn.Module]
    summary: str
    needs: tuple[str, ...]  # keys of the model's training outputs this loss reads


_LOSSES: dict[str, LossEntry] = {}


def register_loss(name: str, *, needs: tuple[str, ...] = ()) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        summary = (inspect.getdoc(fn) or "").splitlines()[0] if fn.__doc__ else ""
        _LOSSES[name] = LossEntry(name, fn, summary, needs)
        return fn

    return deco


def loss_names() -> list[str]:
    import cdtool.losses  # noqa: F401

    return sorted(_LOSSES)


def loss_entry(name: str) -> LossEntry:
    import cdtool.losses  # noqa: F401

    if name not in _LOSSES:
        raise InputError(f"unknown loss {name!r}; registered: {', '.join(sorted(_LOSSES))}")
    return _LOSSES[name]


def create_loss(name: str, **kwargs) -> nn.Module:
    return loss_entry(name).builder(**{k: v for k, v in kwargs.items() if v is not None})


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

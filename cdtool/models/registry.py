"""Models registered by name with a decorator on their builder, so recipes, checkpoints and the CLI
refer to them by name, and tests can run over every registered model."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from cdtool.errors import InputError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    summary: str
    output: str  # "dense": a change map per tile; "centre": one score per patch covering its centre
    paper: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, output: str = "dense", paper: str = "") -> Callable:
    """Register a builder `fn(**kwargs) -> nn.Module` under `name`; its docstring's first line is the summary."""
    if output not in {"dense", "centre"}:
        raise ValueError(f"output must be 'dense' or 'centre', got {output!r}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        summary = (inspect.getdoc(fn) or "").splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = ModelEntry(name, fn, summary, output, paper)
        return fn

    return deco


def _load_builtin() -> None:
    # Importing the model modules runs their @register_model decorators.
    import cdtool.models  # noqa: F401


def model_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    _load_builtin()
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; kwargs left as None are dropped so the builder's defaults win."""
    entry = model_entry(name)
    return entry.builder(**{k: v for k, v in kwargs.items() if v is not None})

"""Models registered by name with a decorator on their builder, so recipes, checkpoints and the CLI
refer to them by name, and tests can run over every registered model.

Each entry records its ``output``: "dense" (a change map per tile) or "centre" (one score per patch,
painted on the patch's centre cell), and the ``paper`` it comes from."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from cdtool.registry import Entry, Registry


def _check(info: dict) -> None:
    if info.get("output", "dense") not in {"dense", "centre"}:
        raise ValueError(f"output must be 'dense' or 'centre', got {info['output']!r}")


MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "cdtool.models", _check)


def register_model(name: str, *, output: str = "dense", paper: str = "") -> Callable:
    """Register a builder `fn(**kwargs) -> nn.Module` under `name`; its docstring's first line is the summary."""
    return MODELS.register(name, output=output, paper=paper)


def model_names() -> list[str]:
    return MODELS.names()


def model_entry(name: str) -> Entry:
    return MODELS.entry(name)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; kwargs left as None are dropped so the builder's defaults win."""
    return MODELS.create(name, **kwargs)

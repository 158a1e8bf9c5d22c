"""Models registered by name with a decorator on their builder, so recipes, checkpoints and the CLI
refer to them by name, and tests can run over every registered model.

Each entry records its ``output``: "dense" (a change map per tile) or "centre" (one score per patch,
painted on the patch's centre cell), and the ``paper`` it comes from."""

from __future__ import annotations

from typing import Callable

from cdtool.errors import InputError
from cdtool.models.base import ChangeModel
from cdtool.registry import Entry, Registry


def _check(info: dict) -> None:
    if info.get("output", "dense") not in {"dense", "centre"}:
        raise ValueError(f"output must be 'dense' or 'centre', got {info['output']!r}")


MODELS: Registry[Callable[..., ChangeModel]] = Registry("model", "cdtool.models", _check)


def register_model(name: str, *, output: str = "dense", paper: str = "") -> Callable:
    """Register a builder `fn(**kwargs) -> ChangeModel` under `name`; its docstring's first line is the summary."""
    return MODELS.register(name, output=output, paper=paper)


def model_names() -> list[str]:
    return MODELS.names()


def model_entry(name: str) -> Entry:
    return MODELS.entry(name)


def create_model(name: str, **kwargs) -> ChangeModel:
    """Build a registered model; kwargs left as None are dropped so the builder's defaults win. Anything but a
    `ChangeModel` is refused here, so every caller may read the hooks it declares as plain attributes."""
    model = MODELS.create(name, **kwargs)
    if not isinstance(model, ChangeModel):
        raise InputError(f"model {name!r} is not a ChangeModel (its builder returned {type(model).__name__}); "
                         "subclass cdtool.models.base.ChangeModel")
    return model

"""Training data: tiling and patch extraction to datasets on disk, which need no torch, and the torch datasets a
recipe names under ``data.kind``.

The dataset kinds register like the models: each module below registers its kinds in `DATASETS`
(cdtool.data.registry) with a decorator, and the registry calls `register_kinds` the first time it is read.
They are not imported with the package, so `cdtool tile` and `cdtool patches` never load torch."""

from __future__ import annotations

import importlib

KIND_MODULES = ("cdtool.data.registry", "cdtool.data.images", "cdtool.data.misaligned", "cdtool.data.pair_windows")


def register_kinds() -> None:
    """Import every module that registers a dataset kind (folder, chips, images, misaligned, pair_windows)."""
    for module in KIND_MODULES:
        importlib.import_module(module)

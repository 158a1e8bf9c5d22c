"""Dataset kinds a recipe can name under ``data.kind``: a builder from (split arguments) to a torch
Dataset of samples in the layout of `cdtool.data.chips`.

- ``folder``: `cdtool.data.pair_folder.PairFolderDataset`, whole pairs in LEVIR/DSIFN/OSCD folders,
  random crops for training, whole pairs for validation;
- ``chips``: `cdtool.data.chips.ChipDataset`, what `cdtool tile` / `cdtool patches` wrote, by split.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import Dataset

from cdtool.errors import InputError


def _folder(**kwargs: Any) -> Dataset:
    from cdtool.data.pair_folder import PairFolderDataset

    return PairFolderDataset(**kwargs)


def _chips(root: str, split: str | None = None) -> Dataset:
    from cdtool.data.chips import ChipDataset  # imported lazily: only runs that use chips need it

    return ChipDataset(root, split)


DATASETS: dict[str, Callable[..., Dataset]] = {"folder": _folder, "chips": _chips}


def build_dataset(kind: str, **kwargs: Any) -> Dataset:
    if kind not in DATASETS:
        raise InputError(f"data.kind {kind!r} is not known; allowed: {', '.join(DATASETS)}")
    try:
        return DATASETS[kind](**kwargs)
    except TypeError as exc:
        raise InputError(f"data ({kind}): {exc}") from None

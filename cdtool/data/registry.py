"""Dataset kinds a recipe can name under ``data.kind``: a builder from (split arguments) to a torch
Dataset of samples in the layout of `cdtool.data.chips`.

- ``folder``: `cdtool.data.pair_folder.PairFolderDataset`, whole pairs in LEVIR/DSIFN/OSCD folders,
  random crops for training, whole pairs for validation;
- ``chips``: `cdtool.data.chips.ChipDataset`, what `cdtool tile` / `cdtool patches` wrote, by split;
  ``root`` may list several such folders (e.g. PCD patches of two datasets), read as one set.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch.utils.data import ConcatDataset, Dataset

from cdtool.errors import InputError
from cdtool.data.subsets import select, split_selection
from cdtool.registry import Registry


DATASETS: Registry[Callable[..., Dataset]] = Registry("data.kind", "cdtool.data:register_kinds")


@DATASETS.register("folder")
def _folder(role: str = "train", seed: int = 0, **kwargs: Any) -> Dataset:
    """Whole labelled pairs in LEVIR/DSIFN/OSCD folders: random crops for training, whole pairs to validate."""
    from cdtool.data.pair_folder import PairFolderDataset

    if role == "val":  # whole pairs; seed + 1 so its simulated shifts are not the training draws
        kwargs["crop"], seed = None, seed + 1
    return PairFolderDataset(seed=seed, **kwargs)


class _ChipSets(ConcatDataset):
    """Several chip folders as one dataset, with their labels joined for the class samplers."""

    def __init__(self, parts: list[Dataset]):
        super().__init__(parts)
        labels = [getattr(p, "labels", None) for p in parts]
        self.labels = None if any(lab is None for lab in labels) else [x for lab in labels for x in lab]


@DATASETS.register("chips")
def _chips(root: str | list[str], split: str | None = None) -> Dataset:
    """What `cdtool tile` / `cdtool patches` wrote, by split; several folders read as one set."""
    from cdtool.data.chips import ChipDataset  # imported lazily: only runs that use chips need it

    if isinstance(root, (list, tuple)):
        if not root:
            raise InputError("data.args.root: an empty list; name at least one dataset folder")
        parts = [ChipDataset(r, split) for r in root]
        return parts[0] if len(parts) == 1 else _ChipSets(parts)
    return ChipDataset(root, split)


def build_dataset(kind: str, *, role: str = "train", seed: int = 0, **kwargs: Any) -> Dataset:
    """A dataset of a registered kind for a role ("train" or "val"); builders that take `role` and `seed`
    get them (a folder's validation pairs are whole and drawn with seed + 1). The selection arguments every
    kind takes (labels, positives, subset, resize: `cdtool.data.subsets`) are applied on top."""
    builder = DATASETS.get(kind)
    own, selection = split_selection(kwargs)
    params = inspect.signature(builder).parameters
    own = {**{k: v for k, v in (("role", role), ("seed", seed)) if k in params}, **own}
    try:
        data = builder(**own)
    except TypeError as exc:
        raise InputError(f"data ({kind}): {exc}") from None
    return select(data, seed, **selection) if selection else data


"""An epoch's draw from the recipe's named training sources: each source in its own order (shuffled, or
class-balanced by under-/over-sampling) at its own batch size, one batch of each per step. The longest
source sets the epoch; shorter ones start again (a fresh draw each cycle). Every order and augmentation is
seeded from (seed, epoch, source, cycle), so an epoch is the same whether a run was resumed or not; the
first source draws exactly as a single-source run always has.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from cdtool.data.augment import PairAugment
from cdtool.data.samplers import OverSampler, UnderSampler
from cdtool.errors import InputError


def epoch_sampler(dataset: Dataset, kind: str, ratio: float, seed: int, epoch: int, process_group) -> Sampler[int]:
    """One epoch's order: shuffled, or class-balanced; under DDP each rank takes its share of one draw."""
    if kind == "random":
        if process_group.enabled:
            sampler = DistributedSampler(dataset, num_replicas=process_group.world, rank=process_group.rank,
                                         shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            return sampler
        return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    labels = getattr(dataset, "labels", None)
    if not labels:
        raise InputError(f"sampler {kind!r} needs labelled samples; this training set has no labels")
    try:
        sampler = UnderSampler(labels, seed, ratio) if kind == "under" else OverSampler(labels, seed)
    except ValueError as exc:
        raise InputError(f"sampler {kind!r}: {exc}") from None
    sampler.set_epoch(epoch)
    if process_group.enabled:
        sampler.set_shard(process_group.rank, process_group.world)
    return sampler


class SourceDraw:
    """One source's batches for one epoch, restarted with a new draw when a longer source needs more."""

    def __init__(self, index: int, dataset: Dataset, cfg, sampler_kind: str, seed: int, epoch: int, workers: int,
                 process_group):
        self.index, self.dataset, self.cfg, self.kind = index, dataset, cfg, sampler_kind
        self.seed, self.epoch, self.workers, self.process_group = seed, epoch, workers, process_group
        self.cycle = 0
        self.loader = self._loader()
        aug = cfg.augment
        self.augment = None if aug is None or not any(aug.model_dump().values()) else \
            PairAugment(**aug.model_dump(), seed=(seed * 1_000_003 + epoch) * 64 + index)

    def _loader(self) -> DataLoader:
        # the first source, first cycle, is drawn as a single-source run always was
        shift = 0 if (self.index, self.cycle) == (0, 0) else 104_729 * (self.index * 1000 + self.cycle)
        sampler = epoch_sampler(self.dataset, self.kind, self.cfg.sampler_ratio, self.seed + shift, self.epoch,
                                self.process_group)
        bs = self.cfg.batch_size
        return DataLoader(self.dataset, batch_size=bs, sampler=sampler, num_workers=self.workers,
                          drop_last=len(sampler) >= 2 * bs)

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, cycle: bool) -> Iterator[dict]:
        while True:
            yield from self.loader
            if not cycle:
                return
            self.cycle += 1
            self.loader = self._loader()


class EpochDraw:
    """The step-by-step dict of batches ({source: batch}) of one epoch, on the training device."""

    def __init__(self, datasets: dict[str, Dataset], recipe, phase, epoch: int, device: torch.device, process_group,
                 sources: list[str] | None = None):
        """`sources`: the ones this phase draws (default all); each keeps its index in data.train for its seeds,
        and the phase's `sampler` applies to the first of them."""
        self.device = device
        drawn = [n for n in datasets if sources is None or n in sources]
        first = drawn[0]
        self.sources = {}
        for i, (name, data) in enumerate(datasets.items()):
            if name not in drawn:
                continue
            cfg = recipe.data.train[name]
            kind = (phase.sampler if name == first and phase.sampler else None) or cfg.sampler
            self.sources[name] = SourceDraw(i, data, cfg, kind, recipe.seed, epoch, recipe.data.workers, process_group)
        self.steps = max(len(s) for s in self.sources.values())

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, dict]]:
        longest = max(self.sources, key=lambda n: len(self.sources[n]))
        iters = {n: s.batches(cycle=n != longest) for n, s in self.sources.items()}
        for _ in range(self.steps):
            out = {}
            for name, it in iters.items():
                batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                         for k, v in next(it).items()}
                aug = self.sources[name].augment
                out[name] = aug(batch) if aug is not None else batch
            yield out

"""Samplers for the class imbalance of change data (paper 000, baselines of section 4.2).

`undersampler` keeps every sample of the rarest class and, each epoch, a fresh random subset of
`ratio` times as many of every other class; `oversampler` draws every class as often as the most
frequent one, repeating rare samples. Both are seeded and re-draw per epoch (seed + epoch), so runs
are reproducible and epochs differ. Labels < 0 (no label) are never drawn.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _classes(labels: Sequence[int]) -> dict[int, np.ndarray]:
    arr = np.asarray(labels if labels is not None else [], dtype=np.int64)
    groups = {int(c): np.flatnonzero(arr == c) for c in np.unique(arr) if c >= 0}
    if not groups:
        raise ValueError("samplers need per-sample labels (dataset.labels is None or empty)")
    return groups


class _EpochSampler(Sampler[int]):
    def __init__(self, labels: Sequence[int], seed: int):
        self.groups = _classes(labels)
        self.seed, self.epoch = seed, 0
        self.rank, self.world = 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop (as with DistributedSampler) to pick the epoch's draw."""
        self.epoch = epoch

    def set_shard(self, rank: int, world: int) -> None:
        """Under DDP: every rank draws the same epoch (same seed) and takes every `world`-th index from
        `rank` on, the draw padded by wrapping so all ranks run the same number of steps."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.rank, self.world = rank, world

    @abstractmethod
    def _size(self) -> int:
        """Indices drawn per epoch (all ranks together)."""

    def __len__(self) -> int:
        return -(-self._size() // self.world)

    @abstractmethod
    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        """Indices of one epoch, before shuffling."""

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        idx = rng.permutation(self._draw(rng))
        if self.world > 1:
            idx = np.resize(idx, len(self) * self.world)[self.rank::self.world]
        return iter(idx.tolist())


class UnderSampler(_EpochSampler):
    def __init__(self, labels: Sequence[int], seed: int = 0, ratio: float = 1.0):
        super().__init__(labels, seed)
        if ratio <= 0:
            raise ValueError(f"ratio must be positive, got {ratio}")
        self.minority = min(len(v) for v in self.groups.values())
        self.per_class = {c: min(len(v), int(round(self.minority * (1 if len(v) == self.minority else ratio))))
                          for c, v in self.groups.items()}

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([rng.choice(v, self.per_class[c], replace=False) for c, v in self.groups.items()])

    def _size(self) -> int:
        return sum(self.per_class.values())


class OverSampler(_EpochSampler):
    def __init__(self, labels: Sequence[int], seed: int = 0):
        super().__init__(labels, seed)
        self.majority = max(len(v) for v in self.groups.values())

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        parts = []
        for v in self.groups.values():
            reps, rest = divmod(self.majority, len(v))
            parts += [np.tile(v, reps), rng.choice(v, rest, replace=False)]
        return np.concatenate(parts)

    def _size(self) -> int:
        return self.majority * len(self.groups)


def undersampler(labels: Sequence[int], seed: int, ratio: float = 1.0) -> Sampler[int]:
    """All of the rarest class plus `ratio` x as many of each other class, re-drawn every epoch."""
    return UnderSampler(labels, seed, ratio)


def oversampler(labels: Sequence[int], seed: int) -> Sampler[int]:
    """Every class drawn as often as the largest one (rare samples repeated, each at least once)."""
    return OverSampler(labels, seed)

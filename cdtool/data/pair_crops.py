"""The base of datasets that draw crops from labelled pairs: kept free of rasterio, so a dataset module that loads
its pairs lazily can build on it."""

from __future__ import annotations

from torch.utils.data import Dataset


class PairCrops(Dataset):
    """Datasets of crops from labelled pairs (`records`), drawn from (seed, epoch, index): the pairs' names, and
    `set_epoch`, called before each epoch for fresh, reproducible draws."""

    records: list
    epoch: int = 0

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

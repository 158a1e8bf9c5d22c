"""Dataset kind ``pair_windows``: the windows of whole pairs, read without their change masks, each labelled
by a label-free screen of the pair itself, so a one-class model can learn "unchanged" from the pair it will
then be run on, with no labels at all (change as an anomaly of the pair itself).

For each selected pair (LEVIR/DSIFN/OSCD folders, found as `cdtool.data.pair_folder` finds them; only BEFORE
and AFTER are read, never the mask), the screen, a registered label-free model (``cva`` by default; a
pair-fitted one such as ``pca_kmeans`` is fitted on the pair), scores every pixel of the pair standardised per
date and band. Windows of ``patch`` pixels every ``stride`` pixels (wholly valid ones only) are ranked by
their mean screen score, and the lowest ``keep`` share of each pair gets label 0 ("unchanged-looking"), the
rest label 1. The pair is first padded by ``(patch - cell) / 2`` pixels on every side, repeating its edge
pixels, as detection's centre-patch slider pads it (`cdtool.inference.centre_patch`, cells of ``cell``
pixels), so the windows along the borders that detection will score are among those learnt from. These are
pseudo-labels from the screen, not ground truth: train with the selection
``labels: [0]`` and the one-class family learns from the unchanged-looking windows only.

Samples follow `cdtool.data.chips`: ``image`` float32 (2, C, patch, patch) raw, ``valid`` bool (1, patch,
patch), ``label`` int64 (the screen's), and ``mean``/``std`` (2, C) of the whole pair, so per-image
normalisation sees the statistics detection computes over the whole raster. No ``mask``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cdtool.data.pair_folder import discover, pair_stats, select
from cdtool.data.registry import DATASETS
from cdtool.errors import InputError
from cdtool.io.pair import open_pair
from cdtool.windows import Tile


def screen_scores(data: np.ndarray, valid: np.ndarray, screen: str) -> np.ndarray:
    """(H, W) scores of the registered label-free model `screen` on one pair (raw (2, C, H, W)), standardised
    per date and band over its valid pixels; a pair-fitted model is fitted on the pair itself."""
    from cdtool.models import create_model

    mean, std = pair_stats(data, valid)
    x = torch.from_numpy(((data - mean[..., None, None]) / std[..., None, None]).astype(np.float32))
    model = create_model(screen).eval()
    with torch.no_grad():
        if model.needs_fit:
            model.fit([(x[0], x[1], torch.from_numpy(np.asarray(valid, bool)))])
        s = model(x[0][None], x[1][None])[0, 0].numpy()
    return np.where(valid, s, np.nan)


class PairWindows(Dataset):
    """Windows of whole pairs, labelled 0 (unchanged-looking) or 1 by a label-free screen of each pair."""

    def __init__(self, roots: list[str], pairs: list[str] | None = None, exclude: list[str] | None = None,
                 patch: int = 42, stride: int = 7, screen: str = "cva", keep: float = 0.5,
                 bands: list[int] | None = None, cell: int = 14):
        if isinstance(roots, str):
            roots = [roots]
        if not 0 < float(keep) <= 1:
            raise InputError(f"data args keep: a share of the windows in (0, 1], got {keep}")
        if int(patch) < 1 or int(stride) < 1 or not 0 < int(cell) <= int(patch):
            raise InputError(f"data args patch, stride, cell: positive pixel counts, cell at most patch; got "
                             f"{patch}, {stride}, {cell}")
        margin = (int(patch) - int(cell)) // 2
        self.patch, self.stride, self.screen, self.keep = int(patch), int(stride), str(screen), float(keep)
        records = select([r for root in roots for r in discover(root)], pairs, exclude)
        self.records = records
        self._data, self._stats, self.windows, self.labels = [], [], [], []
        counts = set()
        for k, rec in enumerate(records):
            with open_pair(rec.before, rec.after, bands=bands, align=rec.align) as pair:
                h, w = pair.shape
                data, valid = pair.read(Tile(0, 0, h, w))
            counts.add(data.shape[1])
            stats = pair_stats(data, valid)  # of the pair itself, as detection computes them
            if h < self.patch or w < self.patch:
                raise InputError(f"pair {rec.name}: {w}x{h} is smaller than the {self.patch}-pixel window")
            s = screen_scores(data, valid, self.screen)
            if margin:  # the edge padding detection's slider gives the border windows
                pad = ((margin, margin), (margin, margin))
                data = np.pad(data, ((0, 0), (0, 0), *pad), mode="edge")
                valid, s = np.pad(valid, pad, mode="edge"), np.pad(s, pad, mode="edge")
                h, w = h + 2 * margin, w + 2 * margin
            p = self.patch
            origins = [(r0, c0) for r0 in range(0, h - p + 1, self.stride) for c0 in range(0, w - p + 1, self.stride)
                       if valid[r0:r0 + p, c0:c0 + p].all()]
            if not origins:
                raise InputError(f"pair {rec.name}: no wholly valid {p}-pixel window")
            score = np.array([s[r0:r0 + p, c0:c0 + p].mean() for r0, c0 in origins])
            n_keep = max(1, int(round(self.keep * len(origins))))
            label = np.ones(len(origins), np.int64)
            label[np.argsort(score, kind="stable")[:n_keep]] = 0
            self._data.append(data.astype(np.float32, copy=False))
            self._stats.append(stats)
            self.windows += [(k, r0, c0) for r0, c0 in origins]
            self.labels += label.tolist()
        if len(counts) > 1:
            raise InputError(f"selected pairs have different band counts {sorted(counts)}; select pairs of one sensor")
        self.channels = counts.pop()

    @property
    def names(self) -> list[str]:
        """The pairs the windows come from (checkpoint metadata records them as training pairs)."""
        return [r.name for r in self.records]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        k, r0, c0 = self.windows[i]
        p = self.patch
        image = torch.from_numpy(np.ascontiguousarray(self._data[k][..., r0:r0 + p, c0:c0 + p]))
        mean, std = self._stats[k]
        return {"image": image, "valid": torch.ones(1, p, p, dtype=torch.bool),
                "label": torch.tensor(self.labels[i], dtype=torch.int64),
                "mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}


@DATASETS.register("pair_windows")
def _pair_windows(roots: list[str], pairs: list[str] | None = None, exclude: list[str] | None = None,
                  patch: int = 42, stride: int = 7, screen: str = "cva", keep: float = 0.5,
                  bands: list[int] | None = None, cell: int = 14) -> Dataset:
    """Windows of whole pairs (no masks read), labelled 0 when a label-free screen of the pair ranks them in
    its lowest `keep` share: a one-class model trains on a pair's own unchanged-looking windows."""
    return PairWindows(roots, pairs, exclude, patch, stride, screen, keep, bands, cell)

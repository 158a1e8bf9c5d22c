"""Single labelled images for one-class methods (papers 003 and 004 evaluate them this way): MNIST from the
shared 5,000-digit CSV, Fashion-MNIST from Debian's `dataset-fashion-mnist` (the full 60,000 + 10,000),
or any IDX folder or CSV file of the same layout (`source`: fashion_mnist, or a path).

`normal` names the classes that count as normal (label 0); every other class is an anomaly (label 1). Train
on normal images only with the selection argument every kind takes, `labels: [0]`. Samples follow the
chips layout with one date: ``image`` float32 (1, 1, H, W) raw grey levels 0..255, ``label`` int64, and
``class`` (the original class). The shared MNIST has no test split: its first 80 % of each digit are
`train`, the rest `test`.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cdtool.data.mnist import load_mnist
from cdtool.data.registry import DATASETS
from cdtool.errors import InputError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MNIST_TRAIN_SHARE = 0.8


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST distribution format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 8:
        raise InputError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{raw[3]}I", raw[4:4 + 4 * raw[3]])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3])
    if data.size != int(np.prod(dims)):
        raise InputError(f"{path}: holds {data.size} values, its header says {dims}")
    return data.reshape(dims)


def _fashion(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    files = [root / f"{prefix}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1))]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: missing; install Fashion-MNIST with `apt-get install dataset-fashion-mnist`")
    return read_idx(files[0]), read_idx(files[1]).astype(np.int64)


def _mnist_csv(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The shared digits, split per class: the first 80 % train, the rest test."""
    images, labels = load_mnist(path)
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        cut = int(round(MNIST_TRAIN_SHARE * len(idx)))
        keep[idx[:cut] if split == "train" else idx[cut:]] = True
    return images[keep], labels[keep].astype(np.int64)


def load_images(source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, classes (N,)) of `source`: fashion_mnist (Debian's package), or the path of an
    MNIST CSV (file or folder, e.g. ../shared/data/mnist) or of a folder of IDX files."""
    if split not in ("train", "test"):
        raise InputError(f"data args split: {split!r}; allowed: train, test")
    if source == "fashion_mnist":
        return _fashion(FASHION_MNIST, split)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such image set (source: fashion_mnist, or the path of an MNIST CSV or IDX folder)")
    if path.is_dir() and any(path.glob("*-idx3-ubyte*")):
        return _fashion(path, split)
    return _mnist_csv(path, split)


class ImageSet(Dataset):
    """Labelled single images: normal (label 0) when their class is in `normal`, else anomalous (1)."""

    def __init__(self, source: str, split: str = "train", normal: list[int] | None = None):
        self.images, self.classes = load_images(source, split)
        known = set(np.unique(self.classes).tolist())
        normal = list(normal) if normal is not None else sorted(known)
        if not set(normal) <= known:
            raise InputError(f"data args normal: {sorted(set(normal) - known)} are not classes of {source} "
                             f"(classes: {sorted(known)})")
        self.labels = (~np.isin(self.classes, normal)).astype(np.int64).tolist()
        self.channels = 1
        self.names = [f"{source}/{split}/{i}" for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        img = torch.from_numpy(self.images[i].astype(np.float32))[None, None]
        return {"image": img, "label": torch.tensor(self.labels[i]), "class": torch.tensor(int(self.classes[i]))}


@DATASETS.register("images")
def _images(source: str, split: str = "train", normal: list[int] | None = None) -> Dataset:
    """Single labelled images (MNIST, Fashion-MNIST) for one-class methods: `normal` classes are label 0."""
    return ImageSet(source, split, normal)

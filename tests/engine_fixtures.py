"""Tiny labelled pair folders and recipes for the engine, training-CLI and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_pair_folder(root: Path, n: int = 4, size: int = 32, seed: int = 0) -> Path:
    """root/A, root/B, root/label with `n` RGB pairs: a textured scene, and the same scene with a bright
    square added (the change) and a little noise."""
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = rng.integers(40, 120, (size, size, 3)).astype(np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
        lab = np.zeros((size, size), np.uint8)
        r, c = rng.integers(2, size // 2, 2)
        s = size // 3
        b[r:r + s, c:c + s] = 230
        lab[r:r + s, c:c + s] = 255
        Image.fromarray(a).save(root / "A" / f"p{i}.png")
        Image.fromarray(b).save(root / "B" / f"p{i}.png")
        Image.fromarray(lab).save(root / "label" / f"p{i}.png")
    return root


def tiny_recipe(root: Path, **over) -> dict:
    """A CosimNet recipe small enough to train two epochs in about a second; `over` sets dotted keys
    (``{"data.train.pairs.args.crop": 32}``), a `models`/`losses` value replaces the whole entry."""
    r = {
        "name": "tiny", "task": "metric",
        "models": {"model": {"name": "cosimnet", "args": {"width": 4, "embed": 8, "side_outputs": 3}}},
        "losses": {"change": {"name": "contrastive", "args": {"margin": 2.0}}},
        "data": {"args": {"roots": [str(root)]},
                 "train": {"pairs": {"kind": "folder", "args": {"exclude": ["pairs/p3"], "crop": 24, "samples": 8},
                                     "batch_size": 4, "augment": {"rot90": True, "hflip": 0.5}}},
                 "val": {"kind": "folder", "args": {"pairs": ["pairs/p3"]}}},
        "optim": {"name": "adam", "lr": 0.01},
        "schedule": {"epochs": 2, "scheduler": "cosine"},
        "seed": 3,
    }
    for k, v in over.items():
        node = r
        keys = k.split(".")
        for kk in keys[:-1]:
            node = node.setdefault(kk, {})
        node[keys[-1]] = v
    return r

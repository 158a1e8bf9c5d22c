"""SHA-256 of a file, read in 1 MiB blocks: recorded where a result must name exactly what it was made from
(the labels a model was fitted on, a training run's checkpoints)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

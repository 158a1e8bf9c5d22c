"""Finding the image pairs a dataset is built from: one BEFORE/AFTER[/MASK] triple, a folder in the
common `A/ B/ label/` layout (LEVIR-CD, DSIFN-CD), or a list file. Every pair is checked before
anything is written, so a folder with a missing B/ image fails up front with its name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from cdtool.errors import InputError
from cdtool.io.change_mask import ChangeMask
from cdtool.windows import Tile, wrapped_runs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".vrt", ".bmp"}
BEFORE_DIRS, AFTER_DIRS, MASK_DIRS = ("A", "im1", "before", "t1"), ("B", "im2", "after", "t2"), \
    ("label", "labels", "mask", "cm", "OUT")


@dataclass(frozen=True)
class PairSource:
    """One pair to cut: its name (unique, file-system safe), the two images and an optional mask."""

    name: str
    before: Path
    after: Path
    mask: Path | None = None


def name_split(name: str) -> str | None:
    """The split a file name declares, as LEVIR-CD names do (train_36_..., val_27_..., test_2_...)."""
    head = name.split("_", 1)[0].lower()
    return head if head in ("train", "val", "test") else None


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "pair"


def _find_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def is_pair_folder(root: Path) -> bool:
    """Whether `root` holds before and after sub-folders (A/ B/, im1/ im2/, before/ after/, t1/ t2/)."""
    return _find_dir(root, BEFORE_DIRS) is not None and _find_dir(root, AFTER_DIRS) is not None


def pairs_from_folder(root: Path, require_mask: bool = False) -> list[PairSource]:
    """Pairs of an `A/ B/ [label/]` folder, matched by file stem; a list/*.txt restricts the names."""
    a_dir, b_dir = _find_dir(root, BEFORE_DIRS), _find_dir(root, AFTER_DIRS)
    if a_dir is None or b_dir is None:
        raise InputError(f"{root}: expected sub-folders A/ and B/ (before and after images)")
    m_dir = _find_dir(root, MASK_DIRS)
    if require_mask and m_dir is None:
        raise InputError(f"{root}: no label/ folder with change masks")
    a, b = _images(a_dir), _images(b_dir)
    m = _images(m_dir) if m_dir else {}
    names = sorted(a)
    lists = sorted((root / "list").glob("*.txt")) if (root / "list").is_dir() else []
    if lists:
        listed = {Path(line.strip()).stem for f in lists for line in f.read_text().splitlines() if line.strip()}
        missing = sorted(listed - set(a))
        if missing:
            raise InputError(f"{a_dir}: image {missing[0]} named in {lists[0].name} is missing")
        names = sorted(listed)
    if not names:
        raise InputError(f"{a_dir}: holds no images")
    out = []
    for n in names:
        if n not in b:
            raise InputError(f"{b_dir}: missing the after image for {a[n].name}")
        if m_dir is not None and n not in m:
            raise InputError(f"{m_dir}: missing the change mask for {a[n].name}")
        out.append(PairSource(safe_name(n), a[n], b[n], m.get(n)))
    return out


def pairs_from_list(path: Path) -> list[PairSource]:
    """A text file with `before after [mask]` per line (paths relative to the file)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split("#")[0].split()
        if not parts:
            continue
        if len(parts) not in (2, 3):
            raise InputError(f"{path}:{i}: expected 'before after [mask]', got {line.strip()!r}")
        files = [(path.parent / p) for p in parts]
        for f in files:
            if not f.exists():
                raise InputError(f"{path}:{i}: {f} does not exist")
        out.append(PairSource(safe_name(f"{i:04d}_{files[0].stem}"), files[0], files[1],
                              files[2] if len(files) == 3 else None))
    if not out:
        raise InputError(f"{path}: list file names no pairs")
    return out


def collect_pairs(before: Path, after: Path | None = None, mask: Path | None = None,
                  require_mask: bool = False) -> list[PairSource]:
    """The pairs named on a command line: BEFORE AFTER [--mask], an A/B/label folder, or a list file."""
    if after is None:
        if before.is_dir() and is_pair_folder(before):
            pairs = pairs_from_folder(before, require_mask)
        elif before.is_file() and before.suffix.lower() in (".txt", ".lst", ".list"):
            pairs = pairs_from_list(before)
        elif not before.exists():
            raise InputError(f"{before}: no such file or folder")
        else:
            raise InputError(f"{before}: give BEFORE AFTER, a folder with A/ B/ [label/], or a list file")
        if mask is not None:
            raise InputError(f"{mask}: --mask applies to one BEFORE AFTER pair; folders bring label/")
    else:
        for p in (before, after, mask):
            if p is not None and not p.exists():
                raise InputError(f"{p}: no such file or folder")
        stem = f"{before.parent.name}_{before.name}" if before.is_dir() else before.stem
        pairs = [PairSource(safe_name(stem), before, after, mask)]
    if require_mask and any(p.mask is None for p in pairs):
        raise InputError(f"{pairs[0].before}: this protocol needs a change mask (--mask or a label/ folder)")
    return pairs


class MaskReader:
    """Windows of a change mask on the pair grid, wrapping columns for panoramas; the mask's coding (0/1,
    0/255, OSCD 1/2, nodata) is decided once for the whole file by `cdtool.io.change_mask`."""

    def __init__(self, path: Path, height: int, width: int, origin: tuple[int, int] = (0, 0)):
        self.path = path
        self.mask = ChangeMask(path)
        if self.mask.shape != (height, width) and origin == (0, 0):
            self.mask.close()
            raise InputError(f"{path}: mask is {self.mask.shape[1]}x{self.mask.shape[0]} but the images are "
                             f"{width}x{height}")
        self.width, self.origin = width, origin

    @property
    def has_nodata(self) -> bool:
        return self.mask.has_nodata

    def read_valid(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """(changed, valid) of a tile: valid is False where the mask itself holds nodata."""
        parts = [self.mask.read(Window(c0 + self.origin[1], tile.row + self.origin[0], c1 - c0, tile.height))
                 for c0, c1 in wrapped_runs(tile.col, tile.col_stop, self.width)]
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate([p[k] for p in parts], axis=1) for k in (0, 1))

    def read(self, tile: Tile) -> np.ndarray:
        """Changed pixels of a tile (nodata reads as unchanged; `read_valid` tells them apart)."""
        return self.read_valid(tile)[0]

    def close(self) -> None:
        self.mask.close()

    def __enter__(self) -> "MaskReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_pairs(pairs: list[PairSource], bands: list[int] | None = None, align: bool = False) -> list[tuple]:
    """Open every pair (and mask) once so bad input fails before anything is written.

    Returns (height, width, count, crs, image dtype) per pair."""
    from cdtool.io.pair import open_pair

    out = []
    for p in pairs:
        with open_pair(p.before, p.after, bands=bands, align=align) as rp:
            info = rp.info
            dtypes = {rp.before.dtypes[i - 1] for i in rp.bands_before} | \
                     {rp.after.dtypes[i - 1] for i in rp.bands_after}
            if p.mask is not None:
                MaskReader(p.mask, info.height, info.width, rp.origin).close()
            out.append((info.height, info.width, info.count, info.crs,
                        dtypes.pop() if len(dtypes) == 1 else "float32"))
    counts = {o[2] for o in out}
    if len(counts) > 1:
        raise InputError(f"{pairs[0].before}: pairs have different band counts {sorted(counts)}; "
                         "pick common bands with --bands")
    return out

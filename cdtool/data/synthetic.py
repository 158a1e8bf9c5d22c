"""`cdtool patches --protocol synthetic`: labelled synthetic pairs with flow (paper 001, after SimSaC).

BEFORE is a crop of a background image. Objects are cut from real change data (each connected
component of a change mask is one object shape, its pixels taken from the AFTER image of that pair)
and pasted at random places; the composite is then warped by a random similarity transform A (rotation,
scale, shift about the centre) to give AFTER:

    AFTER(p) = composite(A p)     mask(p) = pasted(A p)     flow(p) = A p - p   (dx, dy in pixels)

so BEFORE(p + flow(p)) equals AFTER(p) wherever nothing was pasted, which is the flow a change model
has to recover. Pixels whose source A p falls outside the crop are marked invalid. With `margin` m > 0 the
background is cut m pixels larger on every side and objects are pasted over all of it: BEFORE is its centre,
and AFTER samples real content wherever A p lies within the margin, instead of an empty (black) border whose
width would give the shift away (a shortcut that does not exist in real misregistered pairs).

A share `still` of the samples are no-change pairs: nothing pasted and no motion (A the identity, flow 0,
mask 0); half of them are identical dates, the other half get a global photometric change of AFTER (gain
1 ± 0.2, offset ± 10 grey levels), so a model learns that neither identical dates nor a radiometric
difference alone are change or motion.

`scene="street"` makes street-level pairs instead (`cdtool.data.street_synthetic.street_sample`): a homography
plus parallax for the viewpoint change, a local lighting change, objects pasted from the street image itself
when no object bank is given, still pairs that keep their viewpoint and lighting change, and with `wrap` crops
that run across a 360° panorama's seam. `generated` adds that many generated street panoramas
(`street_scene`) to the backgrounds, each its own background for the split.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import find_objects, label as cc_label, map_coordinates
from tqdm import tqdm

from cdtool.data.sources import IMAGE_SUFFIXES, PairSource
from cdtool.data.splits import split_of
from cdtool.data.street_synthetic import crop_rows_cols, street_sample, street_scene
from cdtool.data.store import DatasetWriter
from cdtool.errors import InputError
from cdtool.io.change_mask import read_change_mask

SAMPLES_PER_UNIT = 200


@dataclass(frozen=True)
class SyntheticOptions:
    samples: int = 1000
    size: int = 256
    objects: tuple[int, int] = (1, 4)     # objects pasted per sample (inclusive range)
    min_object: int = 64                  # smallest object area in pixels
    max_rotation: float = 10.0            # degrees
    max_scale: float = 0.1                # relative
    max_shift: float = 16.0               # pixels
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    still: float = 0.0                    # share of no-change pairs (no object, no motion)
    margin: int = 0                       # background context around each crop (pixels per side)
    scene: str = "aerial"                 # aerial: similarity motion; street: homography + parallax + lighting
    max_parallax: float = 0.0             # street: largest parallax displacement, pixels
    wrap: bool = False                    # street: backgrounds are 360° panoramas, crops may span the seam
    generated: int = 0                    # street: generated panoramas added to the backgrounds

SCENES = ("aerial", "street")


def _load_rgb(path: Path) -> np.ndarray:
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read as an image ({exc})") from None


class ObjectBank:
    """Object shapes (connected components of change masks) with their AFTER-image pixels, loaded
    lazily and cached a few pairs at a time, so memory does not grow with the number of pairs."""

    def __init__(self, pairs: list[PairSource], min_area: int, cache: int = 8):
        self.pairs, self.min_area, self.cache = [p for p in pairs if p.mask is not None], min_area, cache
        if not self.pairs:
            raise InputError("synthetic pairs need object shapes: give --objects FOLDER with A/ B/ label/")
        self._cache: OrderedDict[int, tuple] = OrderedDict()

    def _objects(self, k: int) -> tuple:
        if k not in self._cache:
            p = self.pairs[k]
            tex = _load_rgb(p.after)
            mask = read_change_mask(p.mask)[0]  # the one mask rule: an OSCD 1/2 mask is not all change
            if mask.shape != tex.shape[:2]:
                raise InputError(f"{p.mask}: mask size {mask.shape[::-1]} differs from {p.after}")
            lab, _ = cc_label(mask)
            objs = [(sl, lab[sl] == i + 1) for i, sl in enumerate(find_objects(lab))
                    if sl is not None and (lab[sl] == i + 1).sum() >= self.min_area]
            self._cache[k] = (tex, objs)
            if len(self._cache) > self.cache:
                self._cache.popitem(last=False)
        return self._cache[k]

    def draw(self, rng: np.random.Generator, max_size: int) -> tuple[np.ndarray, np.ndarray] | None:
        """One object: its pixels (h, w, 3) and shape (h, w), or None when the drawn pair has none."""
        tex, objs = self._objects(int(rng.integers(len(self.pairs))))
        objs = [o for o in objs if o[1].shape[0] <= max_size and o[1].shape[1] <= max_size]
        if not objs:
            return None
        sl, shape = objs[int(rng.integers(len(objs)))]
        return tex[sl], shape


def random_similarity(rng: np.random.Generator, size: int, opts: SyntheticOptions) -> np.ndarray:
    """2x3 matrix A mapping AFTER pixel (x, y, 1) to composite coordinates."""
    th = np.deg2rad(rng.uniform(-opts.max_rotation, opts.max_rotation))
    s = 1.0 + rng.uniform(-opts.max_scale, opts.max_scale)
    t = rng.uniform(-opts.max_shift, opts.max_shift, 2)
    c = (size - 1) / 2.0
    rot = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return np.hstack([rot, (np.array([c, c]) - rot @ [c, c] + t)[:, None]])


def synth_pair(bg: np.ndarray, bank: ObjectBank | None, rng: np.random.Generator, opts: SyntheticOptions,
               source: np.ndarray | None = None):
    """(image (2, 3, S, S) uint8, mask (S, S), valid (S, S), flow (2, S, S)) for one background crop: bg is
    (S + 2m, S + 2m, 3), m the margin of context around the crop; `source`, the whole background image, gives
    street pairs their objects when there is no bank."""
    if opts.scene == "street":
        return street_sample(bg, bg if source is None else source, bank, rng, opts)
    size = opts.size
    m = (bg.shape[0] - size) // 2
    full = bg.astype(np.float32)
    before = full[m:m + size, m:m + size]
    if opts.still and rng.random() < opts.still:  # a no-change pair: identical, or a global radiometric change
        after = before.transpose(2, 0, 1)
        if rng.random() < 0.5:
            after = after * rng.uniform(0.8, 1.2) + rng.uniform(-10, 10)
        image = np.stack([before.transpose(2, 0, 1), after]).clip(0, 255).round().astype(np.uint8)
        return (image, np.zeros((size, size), bool), np.ones((size, size), bool),
                np.zeros((2, size, size), np.float32))
    big = full.shape[0]
    comp, pasted = full.copy(), np.zeros((big, big), bool)
    want = int(rng.integers(opts.objects[0], opts.objects[1] + 1))
    for _ in range(want * 4):
        if want == 0:
            break
        obj = bank.draw(rng, size)
        if obj is None:
            continue
        pix, shape = obj
        r, c = int(rng.integers(0, big - shape.shape[0] + 1)), int(rng.integers(0, big - shape.shape[1] + 1))
        region = comp[r:r + shape.shape[0], c:c + shape.shape[1]]
        region[shape] = pix[shape]
        pasted[r:r + shape.shape[0], c:c + shape.shape[1]] |= shape
        want -= 1
    a = random_similarity(rng, size, opts)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    sx = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    sy = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    coords = np.stack([sy + m, sx + m])  # composite coordinates
    after = np.stack([map_coordinates(comp[..., ch], coords, order=1, mode="constant") for ch in range(3)])
    mask = map_coordinates(pasted.astype(np.float32), coords, order=0, mode="constant") > 0.5
    valid = (sx >= -m) & (sx <= size - 1 + m) & (sy >= -m) & (sy <= size - 1 + m)
    flow = np.stack([sx - xs, sy - ys]).astype(np.float32)
    image = np.stack([before.transpose(2, 0, 1), after]).clip(0, 255).round().astype(np.uint8)
    return image, mask & valid, valid, flow


def check_scene(opts: SyntheticOptions) -> None:
    """Street-only settings are refused on aerial pairs rather than ignored."""
    if opts.scene not in SCENES:
        raise InputError(f"scene must be one of {', '.join(SCENES)}, got {opts.scene!r}")
    if opts.scene != "street" and (opts.wrap or opts.generated or opts.max_parallax):
        raise InputError("--wrap, --generated and --max-parallax make street-level pairs: add --scene street")


def _backgrounds(backgrounds: list[Path], opts: SyntheticOptions) -> list[tuple[str, object, tuple[int, int]]]:
    """(name, file or generated seed, (width, height)) of every background at least one cut high (and wide,
    unless crops wrap)."""
    files = sorted({p for f in backgrounds for p in (sorted(f.iterdir()) if f.is_dir() else [f])
                    if p.suffix.lower() in IMAGE_SUFFIXES})
    if not files and not opts.generated:
        raise InputError(f"{backgrounds[0] if backgrounds else '--backgrounds'}: no background images")
    found = []
    for f in files:
        try:
            with Image.open(f) as im:
                found.append((f.name, f, im.size))
        except OSError as exc:
            raise InputError(f"{f}: cannot read as an image ({exc})") from None
    found += [(f"generated_street_{k:03d}", k, (1024, 224)) for k in range(opts.generated)]
    cut = opts.size + 2 * opts.margin
    found = [b for b in found if b[2][1] >= cut and (opts.wrap or b[2][0] >= cut)]
    if not found:
        raise InputError(f"{backgrounds[0] if backgrounds else '--generated'}: no background image is at least "
                         f"{cut}x{cut}")
    return found


def _image(source) -> np.ndarray:
    return street_scene(1000 + source) if isinstance(source, int) else _load_rgb(source)


def make_synthetic(backgrounds: list[Path], objects: list[PairSource] | None, out: Path, opts: SyntheticOptions, *,
                   overwrite: bool = False, progress: bool = False) -> dict:
    """Write `opts.samples` synthetic pairs; the split follows the background image, so a background
    never appears in two splits. Street pairs (`opts.scene`) may go without `objects`."""
    t0 = time.perf_counter()
    check_scene(opts)
    found = _backgrounds(backgrounds, opts)
    cut = opts.size + 2 * opts.margin
    bank = ObjectBank(objects, opts.min_object) if objects or opts.scene != "street" else None
    params = {"backgrounds": [str(b[1]) if isinstance(b[1], Path) else b[0] for b in found],
              "objects": [str(p.mask) for p in bank.pairs] if bank else [],
              "samples": opts.samples, "size": opts.size, "objects_per_sample": list(opts.objects),
              "min_object": opts.min_object, "max_rotation": opts.max_rotation, "max_scale": opts.max_scale,
              "max_shift": opts.max_shift, "fractions": list(opts.fractions), "seed": opts.seed,
              **({"still": opts.still} if opts.still else {}), **({"margin": opts.margin} if opts.margin else {}),
              **({"scene": opts.scene, "max_parallax": opts.max_parallax, "wrap": opts.wrap,
                  "generated": opts.generated} if opts.scene != "aerial" else {})}
    store = DatasetWriter(out, "synthetic", params, overwrite=overwrite, image_dtype="uint8")
    if store.complete:
        return {**store.summary(), "already_complete": True}
    bar = tqdm(total=opts.samples, desc="synthetic pairs", unit="pair", disable=not progress)
    for writer, samples in store.fixed_size_units("synthetic", opts.samples, SAMPLES_PER_UNIT, bar):
        rng = np.random.default_rng([opts.seed, samples.start])
        cache: dict = {}
        for k in samples:
            name, source, (w, h) = found[int(rng.integers(len(found)))]
            r = int(rng.integers(0, h - cut + 1))
            c = int(rng.integers(0, w)) if opts.wrap else int(rng.integers(0, w - cut + 1))
            if name not in cache:
                cache = {name: _image(source)}  # one image held at a time
            whole = cache[name]
            bg = crop_rows_cols(whole, r, c, cut, opts.wrap)
            image, mask, valid, flow = synth_pair(bg, bank, rng, opts, whole)
            writer.add({"sample": f"{k}", "background": str(source) if isinstance(source, Path) else name,
                        "row": r + opts.margin, "col": (c + opts.margin) % w,
                        "height": opts.size, "width": opts.size, "changed_share": float(mask.mean()), "label": -1,
                        "split": split_of(name, opts.seed, opts.fractions)},
                       image, mask=mask, valid=valid, flow=flow)
            bar.update(1)
    bar.close()
    summary = store.finish(crs=None, channels=3)
    return {**summary, "seconds": round(time.perf_counter() - t0, 2)}

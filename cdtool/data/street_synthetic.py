"""Synthetic street-level change pairs with a known viewpoint change, known changes and a lighting change.

Real street pairs with change masks are rare (one TSUNAMI panorama pair could be obtained here), and none says
how far its dates are out of register. This makes pairs whose answers are known, from one real image:

    scene   = the image with objects pasted in (patches of the same image from a quarter turn away: real
              street texture, in the wrong place), the known changes;
    lit     = scene * gain(x, y) + offset, a lighting change: a global gain and a smooth sun/shade gradient;
    AFTER(q) = lit(M(q)) sampled bilinearly, M a small homography (plus, for panoramas, a circular shift)
              from AFTER's pixels to BEFORE's;
    BEFORE  = the image itself, unchanged.

For a 360° panorama (`panorama=True`) M closes over one turn (see `viewpoint`) and columns wrap, so AFTER
still closes at its seam, as a real panorama does. A photo
pair is a crop `photo_width` wide of the panorama; AFTER then sees real content beyond the crop's edges, as a
photo from another spot would. Rows M sends outside the image repeat its edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates


@dataclass
class StreetPair:
    before: np.ndarray  # (H, W, 3) uint8
    after: np.ndarray  # (H, W, 3) uint8
    changed: np.ndarray  # (H, W) bool on BEFORE's grid: where objects were pasted
    lit_on_before: np.ndarray  # (H, W, 3) float32: AFTER's content on BEFORE's grid (what a perfect warp gives)
    matrix: np.ndarray  # 3x3 homography M, AFTER pixel -> BEFORE pixel (before the periodic correction)
    shift: float  # circular shift added to M's x (panoramas), in pixels
    panorama: bool
    origin: int  # column of the scene where BEFORE starts (0 for a panorama)
    scene_width: int

    def after_to_before(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BEFORE pixel coordinates of AFTER pixels (x, y): the true transform, for checking an estimate."""
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        m = self.matrix
        w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
        sx = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w + self.shift
        sy = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w
        if self.panorama:
            sx = np.mod(sx, self.scene_width)
        return sx, sy


def viewpoint(rng: np.random.Generator, width: int, height: int, panorama: bool) -> tuple[np.ndarray, float]:
    """The homography M and circular shift of a change of viewpoint. A photo: rotation up to 1.5°, scale up to
    ±4 %, a touch of perspective and a shift of up to 8 px, about the image centre. A panorama: a circular
    shift of up to an eighth of a turn (the heading) and a homography that closes over one turn, x' = x + a y
    + tx, y' = (1 + b) y + ty (a rotation or zoom of a 360° image has no such form: their drift around the turn
    is what a real panorama's seam forbids)."""
    centre = np.array([[1, 0, width / 2], [0, 1, height / 2], [0, 0, 1]])
    if panorama:
        core = np.array([[1, rng.uniform(-0.01, 0.01), rng.uniform(-3, 3)],
                         [0, 1 + rng.uniform(-0.02, 0.02), rng.uniform(-3, 3)], [0, 0, 1]])
        shift = float(rng.uniform(-width / 8, width / 8))
    else:
        angle, scale = np.deg2rad(rng.uniform(-1.5, 1.5)), 1 + rng.uniform(-0.04, 0.04)
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        core = np.array([[c, -s, rng.uniform(-8, 8)], [s, c, rng.uniform(-8, 8)],
                         [rng.uniform(-5, 5) * 1e-5, rng.uniform(-5, 5) * 1e-5, 1]])
        shift = 0.0
    m = centre @ core @ np.linalg.inv(centre)
    return m / m[2, 2], shift


def paste_objects(image: np.ndarray, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` elliptical patches of the image copied from a quarter turn away, where they differ clearly from
    what they cover; returns the scene and the mask of what changed."""
    h, w = image.shape[:2]
    scene, changed = image.astype(np.float32), np.zeros((h, w), bool)
    placed = 0
    while placed < count:
        ph, pw = int(rng.integers(18, 48)), int(rng.integers(24, 72))
        r, c = int(rng.integers(10, h - ph - 10)), int(rng.integers(0, w - pw))
        src_c = (c + w // 4 + int(rng.integers(0, w // 2))) % (w - pw)
        yy, xx = np.mgrid[:ph, :pw]
        shape = ((yy - (ph - 1) / 2) / (ph / 2)) ** 2 + ((xx - (pw - 1) / 2) / (pw / 2)) ** 2 <= 1
        patch = image[r:r + ph, src_c:src_c + pw].astype(np.float32)
        if np.abs(patch - scene[r:r + ph, c:c + pw]).mean(axis=-1)[shape].mean() < 25:
            continue  # too like what it would cover: no visible change
        scene[r:r + ph, c:c + pw][shape] = patch[shape]
        changed[r:r + ph, c:c + pw] |= shape
        placed += 1
    return scene, changed


def lighting(scene: np.ndarray, rng: np.random.Generator, panorama: bool) -> np.ndarray:
    """scene * gain + offset: a global gain of 0.7-0.9, a sun/shade swing of ±15 % along x (periodic around a
    panorama) and ±10 % from top to bottom, and an offset of ±10 grey levels."""
    h, w = scene.shape[:2]
    x, y = np.arange(w)[None, :] / w, np.arange(h)[:, None] / h
    swing = np.cos(2 * np.pi * x + rng.uniform(0, 2 * np.pi)) if panorama else np.cos(np.pi * x + rng.uniform(0, np.pi))
    gain = rng.uniform(0.7, 0.9) * (1 + 0.15 * swing) * (1 + 0.1 * (2 * y - 1) * rng.choice([-1, 1]))
    return np.clip(scene * gain[..., None] + rng.uniform(-10, 10), 0, 255)


def street_pair(image: np.ndarray, seed: int, panorama: bool = True, objects: int = 8,
                photo_width: int = 512, noise: float = 1.5) -> StreetPair:
    """A seeded synthetic pair from `image` (H, W, 3 uint8, a 360° panorama): see the module doc."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    scene, changed = paste_objects(image, rng, objects)
    lit = lighting(scene, rng, panorama)
    origin = 0 if panorama else int(rng.integers(0, w - photo_width))
    width = w if panorama else photo_width
    m, shift = viewpoint(rng, width, h, panorama)
    qy, qx = np.mgrid[:h, :width].astype(float)
    pair = StreetPair(image[:, origin:origin + width].copy(), np.empty(0), changed[:, origin:origin + width],
                      lit[:, origin:origin + width].astype(np.float32), m, shift, panorama, origin, w)
    sx, sy = pair.after_to_before(qx, qy)
    after = _sample(lit, (sx + origin) % w, sy) + rng.normal(0, noise, (h, width, 1))
    pair.after = np.clip(np.rint(after), 0, 255).astype(np.uint8)
    return pair


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of a panorama at (x, y): columns wrap, rows repeat the edge."""
    h, w = image.shape[:2]
    padded = np.concatenate([image, image[:, :1]], axis=1)  # column w is column 0 again
    coords = [np.clip(y, 0, h - 1), np.mod(x, w)]
    return np.stack([map_coordinates(padded[..., k], coords, order=1) for k in range(image.shape[2])], axis=-1)

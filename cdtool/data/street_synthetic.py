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
        placed += paste_visible(scene, changed, image[r:r + ph, src_c:src_c + pw].astype(np.float32), r, c)
    return scene, changed


def paste_visible(canvas: np.ndarray, changed: np.ndarray, patch: np.ndarray, r: int, c: int) -> bool:
    """Paste the ellipse inscribed in `patch` into `canvas` at (r, c), marking `changed`, unless it is too like
    what it would cover (a mean difference under 25 grey levels: no visible change); whether it was pasted."""
    ph, pw = patch.shape[:2]
    yy, xx = np.mgrid[:ph, :pw]
    shape = ((yy - (ph - 1) / 2) / (ph / 2)) ** 2 + ((xx - (pw - 1) / 2) / (pw / 2)) ** 2 <= 1
    if np.abs(patch - canvas[r:r + ph, c:c + pw]).mean(axis=-1)[shape].mean() < 25:
        return False
    canvas[r:r + ph, c:c + pw][shape] = patch[shape]
    changed[r:r + ph, c:c + pw] |= shape
    return True


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


# --- training pairs: `cdtool patches synthetic --scene street` ----------------------------------------------


def street_scene(seed: int, height: int = 224, width: int = 1024) -> np.ndarray:
    """A generated 360° street panorama (H, W, 3 uint8) that closes at its seam: a sky gradient, a row of
    facades of random widths, heights and colours with window grids, poles, a pavement and a road with dashed
    lane markings, and fine texture. A second source of street imagery beside the one real panorama: its
    geometry is plausible, its texture is not a photograph's."""
    rng = np.random.default_rng(seed)
    y = np.arange(height, dtype=np.float32)[:, None, None]
    horizon = int(height * rng.uniform(0.55, 0.65))
    top, bottom = rng.uniform([90, 120, 170], [150, 180, 235]), rng.uniform(200, 245, 3)
    img = np.broadcast_to(top + (bottom - top) * np.clip(y / horizon, 0, 1), (height, width, 3)).copy()
    x = 0
    while x < width:
        bw = min(int(rng.integers(48, 176)), width - x)
        roof = int(rng.integers(int(0.08 * height), int(0.4 * horizon) + int(0.08 * height)))
        img[roof:horizon, x:x + bw] = rng.uniform(50, 225, 3)
        sx, sy = int(rng.integers(12, 26)), int(rng.integers(14, 28))
        glass = rng.uniform(20, 120, 3) if rng.random() < 0.7 else rng.uniform(150, 230, 3)
        for r in range(roof + 6, horizon - sy, sy):
            for c in range(x + 4, x + bw - sx + 1, sx):
                img[r:r + int(0.6 * sy), c:c + int(0.6 * sx)] = glass
        x += bw
    for c in rng.integers(0, width, int(rng.integers(3, 9))):  # poles and trunks in front of the facades
        w = int(rng.integers(2, 6))
        img[int(rng.integers(0, horizon)):horizon + 6, c:c + w] = rng.uniform(20, 80, 3)
    img[horizon:horizon + 8] = rng.uniform(150, 200, 3)  # pavement
    road = rng.uniform(70, 120)
    img[horizon + 8:] = road * (1 + 0.3 * (y[horizon + 8:] - horizon) / height)
    lane = horizon + 8 + int((height - horizon - 8) * 0.6)
    dash = np.arange(width) % 64 < 32  # 64 divides a panorama's width: the dashes close at the seam
    img[lane:lane + 3, dash] = 235
    fine = rng.normal(0, 6, (height, width, 1)) + 4 * np.cos(2 * np.pi * np.arange(width) / width * 7)[None, :, None]
    return np.clip(img + fine, 0, 255).astype(np.uint8)


def crop_rows_cols(image: np.ndarray, row: int, col: int, size: int, wrap: bool) -> np.ndarray:
    """A size x size crop; with `wrap` the columns are taken modulo the width, so a crop may span the seam."""
    rows = image[row:row + size]
    if not wrap:
        return rows[:, col:col + size]
    return np.take(rows, np.arange(col, col + size) % image.shape[1], axis=1)


def street_motion(rng: np.random.Generator, size: int, opts) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (x, y) in the crop of every AFTER pixel: a small homography about the centre
    (rotation, scale, shift, a touch of perspective) plus parallax, a smooth horizontal displacement of up to
    `opts.max_parallax` px that grows towards the bottom of the crop (nearer things move more when the camera
    moves sideways), with a quarter of it vertically."""
    c = (size - 1) / 2.0
    th = np.deg2rad(rng.uniform(-opts.max_rotation, opts.max_rotation))
    s = 1.0 + rng.uniform(-opts.max_scale, opts.max_scale)
    core = np.array([[s * np.cos(th), -s * np.sin(th), rng.uniform(-opts.max_shift, opts.max_shift)],
                     [s * np.sin(th), s * np.cos(th), rng.uniform(-opts.max_shift, opts.max_shift)],
                     [*rng.uniform(-0.5, 0.5, 2) * opts.max_scale / size, 1.0]])
    centre = np.array([[1, 0, c], [0, 1, c], [0, 0, 1.0]])
    m = centre @ core @ np.linalg.inv(centre)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    w = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    sx = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / w
    sy = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / w
    if opts.max_parallax:
        field = np.zeros((size, size))
        for _ in range(3):
            f = rng.uniform(0.3, 1.5, 2) * 2 * np.pi / size
            field += np.cos(f[0] * xs + f[1] * ys + rng.uniform(0, 2 * np.pi)) / 3
        field *= opts.max_parallax * rng.uniform(0.3, 1.0) * (0.5 + 0.5 * ys / max(size - 1, 1))
        sx, sy = sx + field, sy + 0.25 * field
    return sx.astype(np.float32), sy.astype(np.float32)


def paste_from(cut: np.ndarray, source: np.ndarray, rng: np.random.Generator, count: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """`count` elliptical patches of `source` (the whole street image, so real texture from elsewhere in it)
    pasted into `cut` where they differ clearly from what they cover; returns the composite and its mask."""
    size = cut.shape[0]
    comp, pasted = cut.astype(np.float32), np.zeros(cut.shape[:2], bool)
    placed = 0
    for _ in range(count * 8):
        if placed == count:
            break
        ph, pw = int(rng.integers(size // 8, size // 3 + 1)), int(rng.integers(size // 6, size // 2 + 1))
        r, c = int(rng.integers(0, size - ph + 1)), int(rng.integers(0, size - pw + 1))
        sr, sc = int(rng.integers(0, source.shape[0] - ph + 1)), int(rng.integers(0, source.shape[1] - pw + 1))
        placed += paste_visible(comp, pasted, source[sr:sr + ph, sc:sc + pw].astype(np.float32), r, c)
    return comp, pasted


def street_sample(cut: np.ndarray, source: np.ndarray, bank, rng: np.random.Generator, opts):
    """(image (2, 3, S, S) uint8, mask, valid, flow) of one street training pair from a (S + 2m)² cut of a
    street image: objects pasted (shapes from `bank` when given, else patches of `source` itself), a lighting
    change (`lighting`: global gain, sun/shade swing, offset) and a viewpoint change (`street_motion`), as

        AFTER(p) = lit(M(p))   mask(p) = pasted(M(p))   flow(p) = M(p) - p.

    A `still` pair gets no objects but keeps its viewpoint and lighting change: nothing changed, the camera
    moved and the sun did, which is what a street model must leave alone."""
    size = opts.size
    m = (cut.shape[0] - size) // 2
    want = 0 if opts.still and rng.random() < opts.still else int(rng.integers(opts.objects[0], opts.objects[1] + 1))
    if bank is None:
        comp, pasted = paste_from(cut, source, rng, want)
    else:
        comp, pasted = cut.astype(np.float32), np.zeros(cut.shape[:2], bool)
        for _ in range(want * 4):
            obj = bank.draw(rng, size) if want else None
            if obj is None:
                continue
            pix, shape = obj
            r, c = (int(rng.integers(0, cut.shape[k] - shape.shape[k] + 1)) for k in (0, 1))
            comp[r:r + shape.shape[0], c:c + shape.shape[1]][shape] = pix[shape]
            pasted[r:r + shape.shape[0], c:c + shape.shape[1]] |= shape
            want -= 1
    lit = lighting(comp, rng, panorama=False)
    sx, sy = street_motion(rng, size, opts)
    coords = np.stack([sy + m, sx + m])
    after = np.stack([map_coordinates(lit[..., k], coords, order=1, mode="nearest") for k in range(3)])
    after = after + rng.normal(0, 1.5, after.shape)
    mask = map_coordinates(pasted.astype(np.float32), coords, order=0, mode="constant") > 0.5
    valid = (sx >= -m) & (sx <= size - 1 + m) & (sy >= -m) & (sy <= size - 1 + m)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([sx - xs, sy - ys]).astype(np.float32)
    before = cut[m:m + size, m:m + size].transpose(2, 0, 1).astype(np.float32)
    image = np.stack([before, after]).clip(0, 255).round().astype(np.uint8)
    return image, mask & valid, valid, flow

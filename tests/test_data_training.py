"""Samplers and PairAugment: class balance, seeding, geometric consistency, per-date photometrics."""

from __future__ import annotations

import numpy as np
import torch

from cdtool.data.augment import PairAugment
from cdtool.data.samplers import oversampler, undersampler

LABELS = [0] * 90 + [1] * 10


def test_undersampler_balances_and_reseeds_per_epoch():
    s = undersampler(LABELS, seed=1, ratio=2.0)
    e1, e2 = list(s), list(s)
    assert len(e1) == len(s) == 30
    assert sum(LABELS[i] for i in e1) == 10 and len(set(e1)) == 30
    assert set(e1) != set(e2)
    assert list(undersampler(LABELS, seed=1, ratio=2.0)) == e1


def test_oversampler_repeats_the_rare_class():
    s = oversampler(LABELS + [-1], seed=0)
    idx = list(s)
    assert len(idx) == 180 and 100 not in idx
    assert sum(LABELS[i] for i in idx) == 90 and set(i for i in idx if LABELS[i] == 1) == set(range(90, 100))


def test_geometry_shared_by_dates_and_mask_photometry_independent():
    torch.manual_seed(0)
    base = torch.rand(4, 1, 3, 16, 16) * 100
    batch = {"image": base.repeat(1, 2, 1, 1, 1), "mask": (base[:, 0, :1] > 50).float(),
             "label": torch.tensor([0, 1, 0, 1])}
    geo = PairAugment(hflip=1.0, vflip=0.0, rot90=True, gain=0.0, offset=0.0, seed=3)(batch)
    # both dates moved identically, and the mask followed the first channel
    assert torch.equal(geo["image"][:, 0], geo["image"][:, 1])
    assert torch.equal(geo["mask"], (geo["image"][:, 0, :1] > 50).float())
    assert not torch.equal(geo["image"], batch["image"]) and torch.equal(geo["label"], batch["label"])
    photo = PairAugment(hflip=0, vflip=0, rot90=False, gain=0.3, offset=0.3, seed=3)(batch)
    assert not torch.allclose(photo["image"][:, 0], photo["image"][:, 1])
    assert torch.equal(photo["mask"], batch["mask"])


def test_affine_on_single_sample_and_flip_of_flow():
    x = {"image": torch.rand(2, 4, 20, 20), "mask": torch.zeros(1, 20, 20), "valid": torch.ones(1, 20, 20, dtype=torch.bool)}
    y = PairAugment(degrees=20, scale=0.1, seed=0)(x)
    assert y["image"].shape == (2, 4, 20, 20) and y["valid"].dtype == torch.bool and not y["valid"].all()
    flow = torch.zeros(2, 8, 8)
    flow[0] = torch.arange(8.0)  # dx grows to the right
    z = PairAugment(hflip=1.0, vflip=0, rot90=False, gain=0, offset=0)({"image": torch.rand(2, 1, 8, 8), "flow": flow})
    np.testing.assert_allclose(z["flow"][0, 0].numpy(), -np.arange(8.0)[::-1])
    assert torch.equal(z["flow"][1], flow[1])


def _pair_folder(root):
    """im1/ im2/ mask/ with .tif, .jpg and .bmp images: names and suffixes `cdtool tile` accepts."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("im1", "im2", "mask"):
        (root / sub).mkdir(parents=True)
    for name, suffix in (("a", ".tif"), ("b", ".jpg"), ("c", ".bmp")):
        for sub in ("im1", "im2"):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3)).astype(np.uint8)).save(root / sub / f"{name}{suffix}")
        Image.fromarray((rng.random((24, 24)) > 0.8).astype(np.uint8) * 255).save(root / "mask" / f"{name}.png")
    return root


def test_a_folder_tile_accepts_trains_as_kind_folder(tmp_path):
    """One pair discovery: other folder names and suffixes (im1/ im2/ mask/, .tif .jpg .bmp) work for both."""
    from cdtool.data.pair_folder import PairFolderDataset
    from cdtool.data.sources import collect_pairs

    root = _pair_folder(tmp_path / "set")
    tiled = collect_pairs(root, require_mask=True)
    data = PairFolderDataset([str(root)], crop=None)
    assert [p.name for p in tiled] == ["a", "b", "c"] and data.names == ["set/a", "set/b", "set/c"]


def test_folder_kind_roles_plain_crops_and_whole_validation_pairs(tmp_path):
    """Training crops are windows of the pair as it is (turns and flips are the recipe's augment), seeded by
    the run; validation pairs are whole, drawn with seed + 1."""
    from cdtool.data.pair_folder import PairFolderDataset
    from cdtool.data.registry import build_dataset

    roots = [str(_pair_folder(tmp_path / "set"))]
    train = build_dataset("folder", role="train", seed=5, roots=roots, crop=8, samples=6)
    val = build_dataset("folder", role="val", seed=5, roots=roots, crop=8)
    assert (train.crop, train.seed, len(train)) == (8, 5, 6) and (val.crop, val.seed, len(val)) == (None, 6, 3)
    for i in range(len(train)):
        crop, whole = train[i], val[i % 3]
        windows = whole["image"].unfold(-2, 8, 1).unfold(-2, 8, 1)  # (2, C, 17, 17, 8, 8)
        hits = (windows == crop["image"][:, :, None, None]).flatten(-2).all(-1).all(0).all(0).nonzero()
        assert len(hits) >= 1
        r, c = hits[0].tolist()
        assert torch.equal(crop["mask"], whole["mask"][..., r:r + 8, c:c + 8])
    assert torch.equal(train[4]["image"], PairFolderDataset(roots, crop=8, samples=6, seed=5)[4]["image"])

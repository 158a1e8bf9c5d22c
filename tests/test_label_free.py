"""Label-free detectors fitted per pair (pca_kmeans, irmad) and the per-image threshold methods."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from cdtool.engine.evaluate import threshold_scores
from cdtool.inference.threshold import METHODS, ScoreHistogram
from cdtool.models import create_model
from cdtool.normalization import sample_tiles

LEVIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "levir"
FITTED = ("pca_kmeans", "irmad")


def standardise(x: np.ndarray) -> torch.Tensor:
    """Each date per band to mean 0, std 1, as detection's per-image normalisation does."""
    x = x.astype(np.float64)
    return torch.from_numpy((x - x.mean((-2, -1), keepdims=True)) / x.std((-2, -1), keepdims=True).clip(1e-6)).float()


def whole(before: torch.Tensor, after: torch.Tensor) -> list:
    return [(before, after, torch.ones(before.shape[-2:], dtype=torch.bool))]


def spread_tiles(before: torch.Tensor, after: torch.Tensor, size: int = 64, per_side: int = 3) -> list:
    """Fit tiles spread over the pair as detection samples them (9 tiles of 64: 14 % of a 256 image)."""
    return [(before[:, t.row:t.row + t.height, t.col:t.col + t.width],
             after[:, t.row:t.row + t.height, t.col:t.col + t.width], torch.ones(t.height, t.width, dtype=torch.bool))
            for t in sample_tiles(*before.shape[-2:], size, per_side)]


def fitted(name: str, tiles: list) -> torch.nn.Module:
    model = create_model(name)
    model.fit(tiles)
    return model


def scores(model: torch.nn.Module, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(before[None], after[None])[0, 0]


def texture(rng: np.random.Generator, c: int, h: int, w: int) -> np.ndarray:
    """Spatially smooth random bands, correlated with each other like real imagery."""
    x = torch.from_numpy(rng.normal(size=(1, c, h, w))).float()
    x = F.avg_pool2d(x, 5, stride=1, padding=2)[0].numpy()
    return x + 0.5 * x.mean(0, keepdims=True)


@pytest.fixture(scope="module")
def planted():
    """A pair related by a band mix and small noise, except a 32x32 square replaced by new ground."""
    rng = np.random.default_rng(0)
    before = texture(rng, 3, 96, 96)
    after = np.einsum("dc,chw->dhw", [[0.9, 0.2, 0.0], [0.1, 0.8, 0.1], [0.0, 0.3, 0.7]], before) * 1.5 + 2.0
    after += rng.normal(0, 0.02, after.shape)
    truth = np.zeros((96, 96), bool)
    truth[30:62, 40:72] = True
    after[:, truth] = rng.normal(0, 1.5, (3, truth.sum())) + 4.0
    return standardise(before), standardise(after), truth


@pytest.fixture(scope="module")
def levir() -> tuple[np.ndarray, np.ndarray]:
    names = sorted((LEVIR / "A").glob("*.png")) if LEVIR.is_dir() else []
    if not names:
        pytest.skip(f"LEVIR sample pairs not found at {LEVIR}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(names[0]) as a, rasterio.open(LEVIR / "B" / names[0].name) as b:
            return a.read()[:3], b.read()[:3]


@pytest.mark.parametrize("name", FITTED)
@pytest.mark.parametrize("bands", [1, 4])
def test_shapes_and_range(name, bands):
    rng = np.random.default_rng(1)
    before, after = standardise(texture(rng, bands, 40, 48)), standardise(texture(rng, bands, 40, 48))
    model = create_model(name)
    y = model(torch.stack([before, before]), torch.stack([after, before]))  # unfitted: each sample on itself
    assert y.shape == (2, 1, 40, 48) and torch.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    assert (y[1] == 0).all()  # identical dates
    model.fit(whole(before, after))
    y = model(before[None], after[None])
    assert y.shape == (1, 1, 40, 48) and 0 <= y.min() and y.max() <= 1


@pytest.mark.parametrize("name", FITTED)
def test_planted_square_is_found(name, planted):
    before, after, truth = planted
    model = fitted(name, whole(before, after))
    pred = scores(model, before, after).numpy() >= model.default_threshold
    f1 = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert f1 > 0.8


@pytest.mark.parametrize("name", FITTED)
def test_degenerate_fit_scores_zero(name):
    zero = torch.zeros(3, 32, 32)
    model = fitted(name, whole(zero, zero))
    assert (scores(model, zero, zero) == 0).all()


@pytest.mark.parametrize("name", FITTED)
@pytest.mark.parametrize("source", ["synthetic", "levir"])
def test_no_change_is_not_flagged(name, source, request):
    """The floor: identical dates, a global gain and offset (only quantisation noise after standardisation),
    and the same with 1 DN of sensor noise (IR-MAD alone flags 18 % of it) flag (almost) nothing, fitted on
    the whole image or on tiles."""
    if source == "levir":
        before = request.getfixturevalue("levir")[0]
    else:
        x = texture(np.random.default_rng(2), 3, 128, 128)
        before = np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)
    radiometric = np.round(before * 0.8 + 10).astype(np.uint8)
    noisy = np.clip(np.round(before * 0.8 + 10 + np.random.default_rng(3).normal(0, 1, before.shape)), 0, 255)
    for after, most in ((before, 0.001), (radiometric, 0.01), (noisy, 0.01)):
        b, a = standardise(before), standardise(after)
        for fit in (whole(b, a), spread_tiles(b, a)):
            model = fitted(name, fit)
            assert (scores(model, b, a) >= model.default_threshold).float().mean() <= most


@pytest.mark.parametrize("name", FITTED)
def test_tile_fit_matches_whole_fit(name, planted, levir):
    """Where the model holds (planted pair) a fit on spread tiles gives the whole-image map; on a real 0.5 m
    pair the fits drift more (IR-MAD's reweighting is sample-sensitive: about 91 % of mask pixels agree)."""
    real = tuple(standardise(x) for x in levir)
    for (b, a), size, diff, agree in ((planted[:2], 16, 0.03, 0.99), (real, 64, 0.08, 0.85)):
        model = fitted(name, whole(b, a))
        full, by_tiles = scores(model, b, a), scores(fitted(name, spread_tiles(b, a, size)), b, a)
        thr = model.default_threshold
        assert (full - by_tiles).abs().mean() < diff
        assert ((full >= thr) == (by_tiles >= thr)).float().mean() > agree


@pytest.mark.parametrize("name", FITTED)
def test_tiles_stitch(name, levir):
    """One fit applied to a crop equals the whole-image map away from the crop's edges (the halo)."""
    b, a = (standardise(x) for x in levir)
    model = fitted(name, whole(b, a))
    full = scores(model, b, a)
    r0, r1, c0, c1, h = 40, 200, 30, 170, model.halo
    crop = scores(model, b[:, r0:r1, c0:c1], a[:, r0:r1, c0:c1])
    torch.testing.assert_close(crop[h:crop.shape[0] - h, h:crop.shape[1] - h], full[r0 + h:r1 - h, c0 + h:c1 - h],
                               atol=1e-5, rtol=0)


def test_fit_is_deterministic(planted):
    before, after, _ = planted
    for name in FITTED:
        assert torch.equal(scores(fitted(name, whole(before, after)), before, after),
                           scores(fitted(name, whole(before, after)), before, after))


def test_thresholds_split_two_modes():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.2, 0.05, 20000), rng.normal(0.75, 0.08, 3000)
    h = ScoreHistogram()
    h.add(np.concatenate([low, high]))
    for method in METHODS:
        t = h.pick(method)
        assert 0.3 < t < 0.6, method
        assert (low >= t).mean() < 0.02 and (high < t).mean() < 0.05, method


def test_thresholds_on_degenerate_histograms_are_half():
    one_bin = ScoreHistogram()
    one_bin.add(np.full(100, 0.3))
    for h in (ScoreHistogram(), one_bin, ScoreHistogram.from_counts(np.zeros(16))):
        assert all(h.pick(m) == 0.5 for m in METHODS)
    with pytest.raises(ValueError):
        one_bin.pick("triangle")


def test_threshold_scores_accepts_every_method():
    s = np.concatenate([np.full(90, 0.1), np.full(10, 0.9)]).reshape(10, 10)
    for method in METHODS:
        assert threshold_scores(s, method).sum() == 10
    assert threshold_scores(s, 0.95).sum() == 0
    assert not threshold_scores(np.full((4, 4), 0.3), "otsu").any()  # degenerate: 0.5

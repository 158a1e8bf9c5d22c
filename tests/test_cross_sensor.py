"""Dates from two sensors (SAR or panchromatic beside optical): `patch_structure` compares each date only with
itself, detect recognises such pairs and picks it, and a model that compares values is refused or warned."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.metrics import exact_auroc
from cdtool.models.classical import ChangeVectorAnalysis
from cdtool.models.structure import PatchStructure

runner = CliRunner()


def land_cover(seed: int, size: int = 128, classes: int = 6) -> np.ndarray:
    """(size, size) class labels: a few smooth random regions, as fields and roofs make a scene."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, size, (24, 2))
    labels = rng.integers(0, classes, 24)
    yy, xx = np.mgrid[:size, :size]
    nearest = ((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2).argmin(-1)
    return labels[nearest]


def two_sensor_pair(seed: int = 0):
    """BEFORE: one band (a 'SAR' response per class); AFTER: three bands (an unrelated 'optical' response per
    class), with a 32x32 block whose class changed. Both standardised, with noise."""
    rng = np.random.default_rng(seed)
    cover = land_cover(seed)
    after_cover = cover.copy()
    after_cover[40:72, 60:92] = (after_cover[40:72, 60:92] + 3) % 6
    sar = rng.normal(0, 1, 6)[cover] + rng.normal(0, 0.15, cover.shape)
    optical = rng.normal(0, 1, (3, 6))[:, after_cover] + rng.normal(0, 0.15, (3, *cover.shape))
    truth = cover != after_cover
    to_t = lambda a: torch.tensor((a - a.mean()) / a.std(), dtype=torch.float32)  # noqa: E731
    return to_t(sar[None])[None], to_t(optical)[None], truth


def fitted(before, after, **kw) -> PatchStructure:
    model = PatchStructure(**kw)
    model.fit([(before[0], after[0], torch.ones(before.shape[-2:], dtype=torch.bool))])
    return model


def test_identical_dates_score_exactly_zero():
    before, _, _ = two_sensor_pair(1)
    assert fitted(before, before)(before, before).max().item() == 0.0


def test_structure_finds_change_between_two_sensors_where_values_cannot():
    before, after, truth = two_sensor_pair(0)
    scores = fitted(before, after)(before, after)[0, 0].numpy()
    auroc = exact_auroc(scores.ravel(), truth.ravel())
    cva = ChangeVectorAnalysis()(before.expand(-1, 3, -1, -1), after)[0, 0].numpy()
    assert auroc > 0.9 and exact_auroc(cva.ravel(), truth.ravel()) < 0.75
    assert np.median(scores[truth]) > 3 * np.median(scores[~truth])
    flagged = scores >= PatchStructure.default_threshold
    assert flagged[~truth].mean() < 0.05 and flagged[truth].mean() > 5 * flagged[~truth].mean()


def test_tiles_scored_with_the_pairs_anchors_equal_the_whole_image():
    before, after, _ = two_sensor_pair(2)
    model = fitted(before, after)
    whole = model(before, after)
    h = model.halo
    tile = model(before[..., 30:90, 20:100], after[..., 30:90, 20:100])
    torch.testing.assert_close(tile[..., h:-h, h:-h], whole[..., 30 + h:90 - h, 20 + h:100 - h])


def test_anchor_windows_touch_every_pixel_where_the_normalisers_sample_leaves_gaps():
    from cdtool.normalization import sample_tiles

    def covered(tiles, h, w):
        seen = np.zeros((h, w), bool)
        for t in tiles:
            seen[t.row:t.row_stop, t.col:t.col_stop] = True
        return seen.mean()

    for h, w in ((300, 412), (700, 1300), (1536, 1536)):
        assert covered(sample_tiles(h, w, cover=True), h, w) == 1.0
    assert covered(sample_tiles(300, 412), 300, 412) < 0.6  # one 256² window: the statistics' sample
    assert PatchStructure.fits_whole_pair


def _write(path, array):
    Image.fromarray(array).save(path)
    return path


def _scene(tmp_path, grey_as_rgb: bool):
    """A 1-band (or grey-as-RGB) BEFORE and a colour AFTER of the same generated scene, as PNGs."""
    cover = land_cover(3, size=160)
    rng = np.random.default_rng(3)
    after_cover = cover.copy()
    after_cover[50:90, 60:100] = (after_cover[50:90, 60:100] + 2) % 6
    grey = (rng.uniform(30, 220, 6)[cover] + rng.normal(0, 4, cover.shape)).clip(0, 255).astype(np.uint8)
    colour = (rng.uniform(30, 220, (6, 3))[after_cover] + rng.normal(0, 4, (*cover.shape, 3))).clip(0, 255)
    before = np.repeat(grey[..., None], 3, axis=2) if grey_as_rgb else grey
    return _write(tmp_path / "before.png", before), _write(tmp_path / "after.png", colour.astype(np.uint8))


def test_detect_picks_the_cross_sensor_default_for_a_one_band_date(tmp_path):
    before, after = _scene(tmp_path, grey_as_rgb=False)
    r = runner.invoke(app, ["detect", str(before), str(after), "--out", str(tmp_path / "o"), "--no-report"])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "o" / "detect.json").read_text())
    assert record["model"] == "patch_structure" and "two sensors" in record["model_choice"]["reason"]
    assert 0.03 < record["changed_share"] < 0.15  # the 40x40 block is 6 % of the scene
    r = runner.invoke(app, ["detect", str(before), str(after), "--out", str(tmp_path / "c"), "--model", "cva"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "has 1" in lines[0] and "--model patch_structure" in lines[0]
    assert not (tmp_path / "c").exists()


def test_detect_warns_when_a_value_model_is_named_for_grey_and_colour_dates(tmp_path):
    before, after = _scene(tmp_path, grey_as_rgb=True)
    r = runner.invoke(app, ["detect", str(before), str(after), "--out", str(tmp_path / "o"), "--model", "cva",
                            "--no-report"])
    assert r.exit_code == 0 and "two sensors" in r.stderr and "before.png is grey in all 3 bands" in r.stderr
    r = runner.invoke(app, ["detect", str(before), str(before), "--out", str(tmp_path / "same"), "--no-report"])
    record = json.loads((tmp_path / "same" / "detect.json").read_text())
    assert r.exit_code == 0 and record["model"] != "patch_structure"  # one date twice: one sensor


@pytest.mark.parametrize("name", [pytest.param("shuguang", marks=pytest.mark.slow), "Italy"])
def test_real_sar_and_nir_beside_optical(shared_data, tmp_path, name):
    """INLPG's heterogeneous pairs (SAR / Landsat NIR beside optical RGB): the default is patch_structure, it
    finds the changes far better than comparing values does, and flags nothing on identical dates."""
    folder = shared_data / "inlpg"
    if not folder.is_dir():
        pytest.skip("INLPG pairs not in ../shared/data")
    before, after = folder / f"{name}_1.bmp", folder / f"{name}_2.bmp"
    truth = np.asarray(Image.open(folder / f"{name}_gt.bmp").convert("L")) > 127
    f1 = {}
    for model in ("default", "cva"):
        out = tmp_path / model
        args = ["detect", str(before), str(after), "--out", str(out), "--no-report", "--no-polygons", "-q"]
        r = runner.invoke(app, args + ([] if model == "default" else ["--model", model]))
        assert r.exit_code == 0, r.output
        mask = np.asarray(Image.open(out / "change_mask.png").convert("L")) > 0
        f1[model] = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert json.loads((tmp_path / "default" / "detect.json").read_text())["model"] == "patch_structure"
    assert f1["default"] > 0.35 and f1["default"] > f1["cva"] + 0.05  # measured: 0.41 / 0.29, 0.38 / 0.29
    r = runner.invoke(app, ["detect", str(before), str(before), "--out", str(tmp_path / "same"), "--model",
                            "patch_structure", "--no-report", "--no-polygons", "-q"])
    assert json.loads((tmp_path / "same" / "detect.json").read_text())["changed_share"] == 0.0

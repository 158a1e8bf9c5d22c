"""Street-level training data: `cdtool patches synthetic --scene street` (viewpoint change with parallax, pasted
objects, lighting; panoramas that wrap) and PCD-style 112 x 112 crops of the real panorama by `cdtool tile --wrap`."""

import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from scipy.ndimage import map_coordinates
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.data.chips import ChipDataset
from cdtool.data.street_synthetic import crop_rows_cols, street_scene, street_motion
from cdtool.data.synthetic import SyntheticOptions, synth_pair

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tsunami(shared_data):
    return shared_data / "streetview" / "tsunami_pcd"


def warped_before(before: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """BEFORE (3, S, S) sampled at p + flow(p): what AFTER shows at p when nothing changed there."""
    ys, xs = np.mgrid[:before.shape[1], :before.shape[2]].astype(float)
    coords = [ys + flow[1], xs + flow[0]]
    return np.stack([map_coordinates(b.astype(float), coords, order=1, mode="nearest") for b in before])


def residual(after, pred, where):
    """Per-pixel residual of AFTER against `pred` times a smooth gain (quadratic in x and y) plus an offset:
    the lighting change, a sun/shade swing across the crop, taken out by least squares on `where`."""
    a, p = after.mean(0), pred.mean(0)
    y, x = np.mgrid[:a.shape[0], :a.shape[1]] / a.shape[0]
    basis = np.stack([p, p * x, p * y, p * x * x, p * x * y, p * y * y, np.ones_like(p)], -1)
    coef, *_ = np.linalg.lstsq(basis[where], a[where], rcond=None)
    return np.abs(a - basis @ coef)


def test_street_pair_flow_mask_and_lighting(tsunami):
    """BEFORE moved by the true flow explains AFTER where nothing was pasted, not where something was; and the
    unmoved BEFORE explains it worse (the viewpoint really changed)."""
    image = np.asarray(Image.open(tsunami / "t0.jpg").convert("RGB"))
    opts = SyntheticOptions(size=96, margin=16, scene="street", max_shift=4, max_rotation=1.5, max_scale=0.04,
                            max_parallax=3, objects=(2, 3))
    rng = np.random.default_rng(5)
    for _ in range(3):
        cut = crop_rows_cols(image, int(rng.integers(0, 224 - 128)), int(rng.integers(0, 1024)), 128, wrap=True)
        pair, mask, valid, flow = synth_pair(cut, None, rng, opts, image)
        before, after = pair[0].astype(float), pair[1].astype(float)
        inner = valid.copy()
        inner[:6], inner[-6:], inner[:, :6], inner[:, -6:] = False, False, False, False
        kept, changed = inner & ~mask, inner & mask
        assert 0.03 < changed.mean() < 0.6 and np.abs(flow).max() > 1.0
        moved = residual(after, warped_before(before, flow), kept)
        still = residual(after, before, kept)
        assert np.median(moved[kept]) < 6 and np.median(moved[changed]) > 3 * np.median(moved[kept])
        assert np.median(still[kept]) > 1.5 * np.median(moved[kept])


def test_street_motion_has_parallax_beyond_a_homography():
    """With --max-parallax the flow is no homography (a fitted one leaves pixels of residual); without, it is."""
    import cv2

    ys, xs = np.mgrid[0:96:4, 0:96:4].reshape(2, -1).astype(np.float32)
    for parallax, lo, hi in ((0.0, 0.0, 0.01), (3.0, 0.3, 3.1)):
        opts = SyntheticOptions(size=96, scene="street", max_shift=4, max_rotation=1.5, max_scale=0.04,
                                max_parallax=parallax)
        sx, sy = street_motion(np.random.default_rng(1), 96, opts)
        dst = np.stack([sx[ys.astype(int), xs.astype(int)], sy[ys.astype(int), xs.astype(int)]], 1)
        h, _ = cv2.findHomography(np.stack([xs, ys], 1), dst, 0)
        fitted = cv2.perspectiveTransform(np.stack([xs, ys], 1)[None], h)[0]
        err = np.hypot(*(fitted - dst).T).max()
        assert lo <= err <= hi, (parallax, err)


def test_generated_scene_closes_at_its_seam():
    """Sky and road run on across the 360° seam (a facade may end there, as anywhere)."""
    for seed in range(3):
        scene = street_scene(seed).astype(float)
        assert scene.shape == (224, 1024, 3)
        for rows in (slice(0, 12), slice(-10, None)):  # above every roof, below the lane markings
            part = scene[rows]
            across = np.abs(part[:, -1] - part[:, 0]).mean()
            inside = np.abs(np.diff(part, axis=1)).mean(axis=(0, 2))
            assert across < np.percentile(inside, 90) + 2, (seed, across)


def test_cli_street_synthetic_set(tsunami, tmp_path):
    """The real panorama plus generated scenes: every pair has its flow, mask and validity; still pairs have no
    change but a moved camera; wrapped crops start anywhere around the turn; each background keeps to one split."""
    out = tmp_path / "s"
    r = invoke("patches", "synthetic", tsunami / "t0.jpg", "--scene", "street", "--wrap", "--generated", "4",
               "--samples", "40", "--size", "64", "--margin", "16", "--max-shift", "4", "--max-rotation", "1.5",
               "--max-scale", "0.04", "--max-parallax", "3", "--still", "0.25", "-o", out)
    assert r.exit_code == 0 and "40 synthetic samples" in r.output and "patches of the backgrounds" in r.output, \
        r.output
    ds = ChipDataset(out)
    assert len(ds) == 40 and ds.has_flow and ds.has_mask
    index = ds.index
    assert set(index["background"]) == {str(tsunami / "t0.jpg")} | {f"generated_street_{k:03d}" for k in range(4)}
    assert index.groupby("background")["split"].nunique().max() == 1
    assert (index["col"] < 1024).all() and (index["col"] > 1024 - 64 - 16).any()  # crops across the seam
    shares = np.array([float(ds[i]["mask"].mean()) for i in range(40)])
    moved = np.array([float(ds[i]["flow"].abs().max()) for i in range(40)])
    assert 4 <= (shares == 0).sum() <= 18 and (moved > 1).all()  # still pairs: about a quarter, all moved
    params = json.loads((out / "dataset.json").read_text())["params"]
    assert params["scene"] == "street" and params["max_parallax"] == 3 and params["generated"] == 4


def test_cli_street_options_need_scene_street(tsunami, tmp_path):
    r = invoke("patches", "synthetic", tsunami / "t0.jpg", "--wrap", "--objects", tsunami, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "add --scene street" in r.output and not (tmp_path / "o").exists()
    r = invoke("patches", "synthetic", tsunami / "t0.jpg", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "needs --objects" in r.output


def test_pcd_style_crops_of_the_real_panorama_wrap(tsunami, tmp_path):
    """`cdtool tile --wrap --size 112 --stride 56` on the 1024 x 224 TSUNAMI pair: 3 rows x 19 columns all round
    the turn; the crops past the right edge hold its last columns and then the first ones, for both dates and
    the mask."""
    truth = np.asarray(Image.open(tsunami / "mask.jpg").convert("L")) < 128  # PCD: black = changed
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "mask.png")
    r = invoke("tile", tsunami / "t0.jpg", tsunami / "t1.jpg", "--mask", tmp_path / "mask.png", "--wrap",
               "--size", "112", "--stride", "56", "--split-by", "pair", "-o", tmp_path / "t")
    assert r.exit_code == 0 and "57 tiles" in r.output, r.output
    ds = ChipDataset(tmp_path / "t")
    assert sorted(set(ds.index["row"])) == [0, 56, 112] and sorted(set(ds.index["col"])) == list(range(0, 1024, 56))
    dates = []
    for f in ("t0.jpg", "t1.jpg"):  # decoded as tile decodes them (GDAL's JPEG decoder differs from PIL's by a level)
        with rasterio.open(tsunami / f) as ds_:
            dates.append(ds_.read().transpose(1, 2, 0))
    for i in np.flatnonzero(ds.index["col"].to_numpy() + 112 > 1024):
        row, col = int(ds.index["row"].iloc[i]), int(ds.index["col"].iloc[i])
        cols = np.arange(col, col + 112) % 1024
        sample = ds[int(i)]
        for k in (0, 1):
            want = dates[k][row:row + 112][:, cols].transpose(2, 0, 1).astype(np.float32)
            np.testing.assert_array_equal(sample["image"][k].numpy(), want)
        np.testing.assert_array_equal(sample["mask"][0].numpy() > 0, truth[row:row + 112][:, cols])
        assert 0 < (cols < 112).sum() < 112  # both edges' pixels are in it
    first = ds.index.query("row == 0 and col == 0").index[0]
    assert ds.index["changed_share"].iloc[first] == pytest.approx(truth[:112, :112].mean())


@pytest.mark.slow
def test_simsac_street_recipe_trains_and_detects(tsunami, tmp_path):
    """recipes/simsac_street.yaml on a small street set: one epoch trains, and `detect` with its checkpoint flags
    nothing on identical dates of the real panorama (simsac's difference gate)."""
    from cdtool.engine.loop import train
    from cdtool.engine.recipe import load_recipe

    root = tmp_path / "street"
    r = invoke("patches", "synthetic", tsunami / "t0.jpg", "--scene", "street", "--wrap", "--generated", "6",
               "--samples", "48", "--size", "64", "--margin", "16", "--max-parallax", "3", "--max-shift", "4",
               "--still", "0.2", "-o", root, "--quiet")
    assert r.exit_code == 0, r.output
    sets = [f"data.train.{s}.args.root={root}" for s in ("labelled", "unlabelled")] + [f"data.val.args.root={root}"]
    recipe = load_recipe("recipes/simsac_street.yaml", sets + ["phases=[{name: pretrain, epochs: 1, lr: 0.001}]"])
    res = train(recipe, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "best.safetensors").is_file(), res
    r = invoke("detect", tsunami / "t0.jpg", tsunami / "t0.jpg", "--wrap", "--model", tmp_path / "run" / "best.safetensors",
               "-o", tmp_path / "o", "--no-polygons", "--no-preview")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "detect.json").read_text())
    assert summary["model"] == "simsac" and summary["changed_share"] == 0.0

"""The siamese patch classifier (paper 000's baseline): sliding-window equivalence, training by label
with class samplers, detection through a checkpoint, and the refusals around the patch task."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.data.pcd import PcdOptions, make_pcd
from cdtool.data.registry import build_dataset
from cdtool.data.samplers import OverSampler, UnderSampler
from cdtool.data.sources import collect_pairs
from cdtool.engine.evaluate import evaluate_chips
from cdtool.engine.loop import train
from cdtool.engine.recipe import load_recipe
from cdtool.errors import InputError
from cdtool.inference.detect import DetectOptions, detect
from cdtool.inference.detector import Detector, load_detector
from cdtool.models import create_model
from engine_fixtures import make_pair_folder, tiny_recipe


@pytest.mark.parametrize("patch,stages", [(112, 4), (28, 2)])
def test_one_pass_equals_classifying_every_patch(patch, stages):
    torch.manual_seed(0)
    m = create_model("siamese_patch", patch=patch, stages=stages, width=4).eval()
    s = m.stride
    a, b = torch.randn(1, 3, patch + 3 * s, patch + 2 * s), torch.randn(1, 3, patch + 3 * s, patch + 2 * s)
    with torch.no_grad():
        grid = m.patch_logits(a, b)
        assert grid.shape[-2:] == (4, 3)
        for i in range(4):
            for j in range(3):
                crop = (..., slice(i * s, i * s + patch), slice(j * s, j * s + patch))
                one = m.forward_train(a[crop], b[crop])["logits"][0]
                assert one.shape == (1, 1, 1, 1)
                assert torch.allclose(one[0, 0, 0, 0], grid[0, 0, i, j], atol=1e-5)
        dense = m(a, b)
    # the dense map passes through each patch's score at its centre pixel
    c = (patch - 1) // 2
    if (patch - 1) % 2 == 0:
        assert torch.allclose(dense[0, 0, c + s, c + 2 * s], torch.sigmoid(grid[0, 0, 1, 2]), atol=1e-5)
    assert dense.shape == (1, 1, *a.shape[-2:])


def test_patch_too_small_for_the_stages_is_refused():
    with pytest.raises(ValueError, match="too small"):
        create_model("siamese_patch", patch=16, stages=4)


@pytest.mark.parametrize("cls", [UnderSampler, OverSampler])
def test_class_samplers_shard_one_draw_across_ranks(cls):
    labels = [0] * 23 + [1] * 5
    whole = cls(labels, seed=4)
    whole.set_epoch(2)
    draw = list(whole)
    shards = []
    for rank in range(3):
        s = cls(labels, seed=4)
        s.set_epoch(2)
        s.set_shard(rank, 3)
        shards.append(list(s))
        assert len(shards[-1]) == len(s) == -(-len(draw) // 3)
    joined = [shards[k % 3][k // 3] for k in range(len(draw))]
    assert joined == draw  # the ranks interleave the same draw, nothing lost


@pytest.fixture(scope="module")
def pcd_chips(tmp_path_factory):
    root = tmp_path_factory.mktemp("pcd")
    pairs = make_pair_folder(root / "pairs", n=10, size=64, seed=5)
    make_pcd(collect_pairs(pairs, require_mask=True), root / "chips",
             PcdOptions(patch=28, centre=4, stride=6, fractions=(0.6, 0.4, 0.0), seed=1))
    return root / "chips"


def patch_recipe(chips: Path, **over) -> dict:
    r = tiny_recipe(chips, **{
        "task": "patch",
        "models": {"model": {"name": "siamese_patch", "args": {"patch": 28, "stages": 2, "width": 4}}},
        "losses": {"change": {"name": "bce", "args": {}}},
        "data": {"args": {"root": [str(chips)]},
                 "train": {"patches": {"kind": "chips", "args": {"split": "train"}, "sampler": "under", "batch_size": 8}},
                 "val": {"kind": "chips", "args": {"split": "val"}}},
        "schedule.epochs": 2})
    r.update(over)
    return r


def test_patch_task_trains_with_undersampling_and_detects(pcd_chips, tmp_path):
    train_set = build_dataset("chips", root=[str(pcd_chips)], split="train")
    assert train_set.labels and 0 < sum(train_set.labels) < len(train_set.labels)
    res = train(load_recipe(patch_recipe(pcd_chips)), tmp_path / "run", quiet=True)
    assert [r["epoch"] for r in res.history] == [1, 2]
    assert np.isfinite(res.history[-1]["train_loss"]) and 0 <= res.history[-1]["val_auroc"] <= 1
    det = load_detector(str(tmp_path / "run" / "best.safetensors"), 3)
    assert det.name == "siamese_patch" and det.halo == 14 + 4
    x = torch.randn(1, 3, 50, 70)
    y = det.model(x, x)
    assert y.shape == (1, 1, 50, 70) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_patch_task_refusals(pcd_chips, tmp_path):
    with pytest.raises(InputError, match="task 'patch' needs a loss on logits"):
        load_recipe(patch_recipe(pcd_chips, losses={"change": {"name": "contrastive", "args": {}}}))
    with pytest.raises(InputError, match="model 'fc_siam_diff' gives dense maps; train it with task 'dense' or 'metric'"):
        load_recipe(patch_recipe(pcd_chips, models={"model": {"name": "fc_siam_diff", "args": {}}}))
    r = patch_recipe(pcd_chips, task="dense")
    r["data"]["train"] = {"pairs": r["data"]["train"]["patches"]}
    with pytest.raises(InputError, match="model 'siamese_patch' gives one score per patch; train it with task 'patch'"):
        load_recipe(r)
    folder = make_pair_folder(tmp_path / "pairs", n=4, size=32)
    r = tiny_recipe(folder.parent, **{"data.train.pairs.sampler": "under"})
    r["data"]["args"]["roots"] = [str(folder)]
    with pytest.raises(InputError, match="needs labelled samples"):
        train(load_recipe(r), tmp_path / "run", quiet=True)
    r = patch_recipe(pcd_chips)
    r["data"] = {"args": {"roots": [str(folder)]},
                 "train": {"patches": {"kind": "folder", "args": {"crop": 28, "samples": 4}, "batch_size": 4}}}
    with pytest.raises(InputError, match="task 'patch' needs labelled samples"):
        train(load_recipe(r), tmp_path / "run2", quiet=True)


def test_evaluate_labelled_chips_by_centre_score(pcd_chips, tmp_path):
    scores = evaluate_chips("cva", [str(pcd_chips)], None, 0.5)
    data = build_dataset("chips", root=[str(pcd_chips)], split=None)
    positives = sum(data.labels)
    # counted per pair, not per pixel: the confusion matrix sums to the number of samples
    assert 0 < positives < len(data)
    assert scores["recall"] * positives == pytest.approx(round(scores["recall"] * positives))
    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["evaluate", "--model", "cva", "--data", str(pcd_chips), "--split", "all",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    expected = evaluate_chips("cva", [str(pcd_chips)], None)["f1"]
    assert json.loads(out.read_text())["total"]["f1"] == pytest.approx(expected)


def test_detect_with_a_patch_model_stitches_like_the_whole_image(small_pair, tmp_path):
    """Tiles stepping by a multiple of the patch grid (here 28 = 7 x 4) see the same patches as the
    whole image, so the stitched map matches it."""
    torch.manual_seed(2)
    model = create_model("siamese_patch", patch=28, stages=2, width=4).eval()
    det = Detector("siamese_patch", model, {"mode": "fixed", "mean": [100.0] * 3, "std": [50.0] * 3}, 0.5)
    before, after, _ = small_pair
    whole = detect(before, after, tmp_path / "whole", DetectOptions(model=det, tile=1024, polygons=False))
    tiled = detect(before, after, tmp_path / "tiled", DetectOptions(model=det, tile=64, overlap=36, polygons=False))
    with rasterio.open(whole.outputs["change_prob.tif"]) as a, rasterio.open(tiled.outputs["change_prob.tif"]) as b:
        np.testing.assert_allclose(a.read(1), b.read(1), atol=2e-5)


def test_chips_carry_the_statistics_detection_normalises_with(pcd_chips):
    """Chip-trained models must see inputs standardised as `detect` will standardise the whole image."""
    from cdtool.io.pair import open_pair
    from cdtool.normalization import pair_statistics

    data = build_dataset("chips", root=[str(pcd_chips)], split=None)
    sample = data[0]
    row = data.index.iloc[0]
    with open_pair(row["before"], row["after"]) as rp:
        mean, std = pair_statistics(rp)
    assert torch.allclose(sample["mean"], torch.from_numpy(mean))
    assert torch.allclose(sample["std"], torch.from_numpy(std))
    assert sample["mean"].shape == (2, 3)

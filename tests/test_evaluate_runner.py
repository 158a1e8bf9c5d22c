"""`evaluate --model` runs a model as `detect` does (one runner: its windows, GSD rescaling, thresholds), so
scoring a model on a labelled pair gives the counts of scoring detect's own mask against the same truth."""

import json

import numpy as np
import pytest
from affine import Affine

from cdtool.engine.evaluate import evaluate_files, evaluate_model
from cdtool.inference.detect import DetectOptions, detect
from tests.conftest import write_tif

COUNTS = ("precision", "recall", "f1", "iou", "oa", "kappa")


def _pair_folder(root, gsd: float):
    """A/p.tif, B/p.tif, label/p.tif: smooth 3-band dates, a bright square built in AFTER, its truth."""
    rng = np.random.default_rng(5)
    size = 288  # over 256, so vhr_rgb at 8 m runs on more than one window (512 / 2 each)
    base = np.kron(rng.integers(40, 200, (3, size // 8, size // 8)), np.ones((1, 8, 8))).astype(np.uint8)
    before = base.copy()
    after = np.clip(base.astype(int) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    after[:, 40:90, 50:110] = after[:, 200:260, 230:270] = 250
    truth = np.zeros((size, size), np.uint8)
    truth[40:90, 50:110] = truth[200:260, 230:270] = 255
    transform = Affine(gsd, 0, 600000, 0, -gsd, 5000000)
    for name, array in (("A", before), ("B", after), ("label", truth)):
        (root / name).mkdir(parents=True, exist_ok=True)
        write_tif(root / name / "p.tif", array, transform=transform)
    return root


@pytest.mark.parametrize("model, gsd, scale", [("cva", 1.0, 1.0), ("vhr_rgb", 8.0, 2.0)])
def test_evaluating_a_model_counts_what_detect_writes(tmp_path, model, gsd, scale):
    """cva (Otsu per image) and vhr_rgb at 8 m, twice its coarsest training GSD (windows resampled 2x): the
    model's evaluation equals the evaluation of detect's mask, so evaluation rescales as detection does."""
    root = _pair_folder(tmp_path / "set", gsd)
    out = tmp_path / "out"
    detect(root / "A" / "p.tif", root / "B" / "p.tif", out,
           DetectOptions(model=model, polygons=False, preview=False))
    summary = json.loads((out / "detect.json").read_text())
    assert summary["model_choice"]["scale"] == pytest.approx(scale, rel=1e-3)
    of_mask, _ = evaluate_files(out / "change_mask.tif", root / "label" / "p.tif")
    of_model, rows = evaluate_model(model, [str(root)], pairs=["set/p"], device="cpu")
    assert [r["name"] for r in rows] == ["set/p"]
    assert 0.5 < of_mask["f1"] < 1.0  # a real detection, neither empty nor trivially perfect
    for key in COUNTS:
        assert of_model[key] == pytest.approx(of_mask[key], abs=1e-12), key
    assert of_model["auroc"] > 0.9  # the model's scores come along

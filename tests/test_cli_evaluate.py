import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cdtool.cli import app
from engine_fixtures import make_pair_folder

runner = CliRunner()


def test_evaluate_prediction_files(tmp_path):
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 255
    pred = np.zeros((4, 4), np.uint8)
    pred[:2, :3] = 255
    Image.fromarray(truth).save(tmp_path / "t.png")
    Image.fromarray(pred).save(tmp_path / "p.png")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.png"), str(tmp_path / "t.png"),
                              "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    total = json.loads((tmp_path / "s.json").read_text())["total"]
    assert total["precision"] == 4 / 6 and total["recall"] == 1.0 and total["iou"] == 4 / 6
    assert total["auroc"] is None  # a mask has no scores


def test_evaluate_scores_get_auroc(tmp_path):
    import rasterio

    truth = np.zeros((8, 8), np.uint8)
    truth[2:5, 2:5] = 1
    scores = np.where(truth > 0, 0.8, 0.2).astype(np.float32)
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="float32") as ds:
        ds.write(scores, 1)
    Image.fromarray(truth * 255).save(tmp_path / "t.png")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "s.tif"), str(tmp_path / "t.png"), "--json",
                              str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output
    total = json.loads((tmp_path / "o.json").read_text())["total"]
    assert total["f1"] == 1.0 and total["auroc"] == 1.0


def test_evaluate_model_on_dataset_and_errors(tmp_path):
    data = make_pair_folder(tmp_path / "pairs")
    res = runner.invoke(app, ["evaluate", "--model", "cva", "--data", str(data), "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "c.json").read_text())
    assert [r["name"] for r in out["per_pair"]] == [f"pairs/p{i}" for i in range(4)]
    assert out["total"]["f1"] > 0.8  # a bright square on a dull scene: CVA finds it
    res = runner.invoke(app, ["evaluate", "--model", "cva", "--data", str(data), "--pairs", "pairs/nope"])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["evaluate"])
    assert res.exit_code == 2


def test_detect_png_scores_are_read_as_scores(tmp_path):
    """change_prob.png holds scores × 255: a threshold applies to them, and AUROC is reported."""
    truth = np.zeros((4, 4), np.uint8)
    truth[:2] = 255
    grey = np.array([[250, 200, 180, 140]] * 2 + [[100, 20, 0, 90]] * 2, np.uint8)  # 140/255 > 0.5 > 100/255
    Image.fromarray(truth).save(tmp_path / "t.png")
    Image.fromarray(grey).save(tmp_path / "p.png")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.png"), str(tmp_path / "t.png"), "--threshold", "0.5",
                              "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    total = json.loads((tmp_path / "s.json").read_text())["total"]
    assert total["f1"] == 1.0 and total["auroc"] == 1.0


SHARED = Path(__file__).parents[1].parent / "shared" / "data"


def _mask_tif(path, a, **kw):
    import rasterio

    a = a if a.ndim == 3 else a[None]
    with rasterio.open(path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0],
                       dtype=a.dtype, **kw) as ds:
        ds.write(a)
    return path


def _coded(values, seed=0):
    """A 32x32 array drawn from `values`, so every value of a coding is present."""
    rng = np.random.default_rng(seed)
    return np.asarray(values, np.uint8)[rng.integers(0, len(values), (32, 32))]


@pytest.mark.parametrize("values", [(0, 1), (0, 255), (0, 1, 2), (0, 1, 2, 255), (0, 1, 255), (1, 2), (1, 2, 255)])
def test_every_mask_coding_scores_f1_one_against_itself(tmp_path, values):
    """The same file as PRED and TRUTH is a perfect prediction whatever its coding (0/1/2 read as scores gave
    F1 0.0; 0/1/2/255 with 255 as change in one reader and nodata in the other gave 0.4)."""
    f = _mask_tif(tmp_path / "m.tif", _coded(values))
    res = runner.invoke(app, ["evaluate", str(f), str(f), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["total"]["f1"] == 1.0


def test_mask_codings_agree_pixel_for_pixel(tmp_path):
    """One rule: the same changes coded 0/255, OSCD 1/2, 0/1 + 255 nodata, a file nodata value and a
    black-and-white RGBA PNG read as the same changed and valid pixels."""
    from cdtool.io.change_mask import read_change_mask

    change = _coded((0, 1), seed=3).astype(bool)
    hole = np.zeros_like(change)
    hole[:4] = True
    ch = change.astype(np.uint8)
    files = {"0/255": _mask_tif(tmp_path / "a.tif", ch * 255), "1/2": _mask_tif(tmp_path / "b.tif", ch + 1),
             "0/1/255": _mask_tif(tmp_path / "c.tif", np.where(hole, 255, ch).astype(np.uint8)),
             "nodata 9": _mask_tif(tmp_path / "d.tif", np.where(hole, 9, ch).astype(np.uint8), nodata=9)}
    rgba = np.dstack([ch * 255] * 3 + [np.where(hole, 0, 255).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "e.png")
    files["RGBA"] = tmp_path / "e.png"
    for name, f in files.items():
        changed, valid = read_change_mask(f)
        whole = name in ("0/255", "1/2")
        np.testing.assert_array_equal(valid, np.ones_like(hole) if whole else ~hole, err_msg=name)
        np.testing.assert_array_equal(changed, change & valid, err_msg=name)


@pytest.mark.skipif(not (SHARED / "oscd").is_dir(), reason="../shared/data/oscd not present")
def test_oscd_mask_against_itself_and_its_png(tmp_path):
    """rennes-cm.tif (1/2) against itself scored F1 0.05; its cm.png (RGBA, white = change) is the same truth."""
    cm = SHARED / "oscd" / "rennes" / "cm"
    for pred in (cm / "rennes-cm.tif", cm / "cm.png"):
        res = runner.invoke(app, ["evaluate", str(pred), str(cm / "rennes-cm.tif"), "--json", str(tmp_path / "s.json"),
                                  "--overwrite"])
        assert res.exit_code == 0, res.output
        total = json.loads((tmp_path / "s.json").read_text())["total"]
        assert total["f1"] == 1.0 and total["iou"] == 1.0, pred


@pytest.mark.parametrize("kind", ["only ones", "two colours", "class ids"])
def test_ambiguous_or_unknown_mask_is_refused_in_one_line(tmp_path, kind):
    """A truth of only 1s is "all changed" as 0/1 and "no change" as OSCD 1/2; a white mask with red changes
    or 0/3/7 class ids follow no coding: each is refused in one line naming the file, exit 2."""
    f = tmp_path / "t.png"
    if kind == "only ones":
        Image.fromarray(np.ones((8, 8), np.uint8)).save(f)
    elif kind == "two colours":
        rgb = np.full((8, 8, 3), 255, np.uint8)
        rgb[2:4, 2:4] = (255, 0, 0)
        Image.fromarray(rgb).save(f)
    else:
        Image.fromarray(np.array([[0, 3], [7, 0]], np.uint8).repeat(4, 0).repeat(4, 1)).save(f)
    pred = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pred)
    res = runner.invoke(app, ["evaluate", str(pred), str(f)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(f) in lines[0], res.output
    assert ("ambiguous" if kind == "only ones" else "not a change mask") in lines[0]

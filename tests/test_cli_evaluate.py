import json

import numpy as np
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

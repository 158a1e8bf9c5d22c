"""`cdtool evaluate` on a prediction and a truth of different grids (an --align run covers the common extent of
the dates, the truth BEFORE's whole grid), and score files cut where detect put the threshold."""

import glob
import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from cdtool.cli import app


def _stack(folder, path, crop=None):
    files = [sorted(glob.glob(f"{folder}/*{b}.tif"))[0] for b in ("B04", "B03", "B02", "B08")]
    with rasterio.open(files[0]) as first:
        profile = first.profile | {"count": 4, "dtype": "uint16", "driver": "GTiff"}
    data = np.stack([rasterio.open(f).read(1) for f in files]).astype("uint16")
    if crop:
        top, left, bottom, right = crop
        data = data[:, top:data.shape[1] - bottom, left:data.shape[2] - right]
        profile |= {"height": data.shape[1], "width": data.shape[2],
                    "transform": profile["transform"] * Affine.translation(left, top)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _scores(output: str) -> dict:
    return json.loads(output[output.index("{"):])


@pytest.fixture
def aligned_run(shared_data, tmp_path):
    """Pisa, the second date cut 3 rows and 2 columns short at the top-left and 1 at the bottom-right: --align
    scores the common 772 x 715 window of BEFORE's 776 x 718 grid."""
    city = shared_data / "oscd" / "pisa"
    b = _stack(city / "imgs_1", tmp_path / "b.tif")
    a = _stack(city / "imgs_2", tmp_path / "a.tif", crop=(3, 2, 1, 1))
    r = CliRunner().invoke(app, ["detect", str(b), str(a), "-o", str(tmp_path / "o"), "--align", "--model", "cva",
                                 "-q", "--no-preview", "--no-report", "--no-polygons"])
    assert r.exit_code == 0, r.output
    return city / "cm" / "pisa-cm.tif", tmp_path / "o"


def test_a_truth_on_befores_grid_scores_an_aligned_run(aligned_run, tmp_path):
    truth, out = aligned_run
    with rasterio.open(out / "change_mask.tif") as m:
        mask = m.read(1)
        assert m.shape == (772, 715)
    with rasterio.open(truth) as t:  # OSCD: 1 unchanged, 2 changed, no georeference, BEFORE's 776 x 718
        changed = t.read(1)[3:775, 2:717] == 2
    r = CliRunner().invoke(app, ["evaluate", str(out / "change_mask.tif"), str(truth), "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "s.json").read_text())["total"]
    predicted = mask == 1
    tp = int((predicted & changed).sum())
    assert got["f1"] == pytest.approx(2 * tp / (predicted.sum() + changed.sum()), abs=1e-6)


def test_a_score_file_is_cut_at_its_tagged_threshold(aligned_run, tmp_path):
    truth, out = aligned_run
    results = {}
    for name in ("change_mask.tif", "change_prob.tif"):
        r = CliRunner().invoke(app, ["evaluate", str(out / name), str(truth), "--json", str(tmp_path / f"{name}.json")])
        assert r.exit_code == 0, r.output
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["total"]
    assert results["change_prob.tif"]["f1"] == pytest.approx(results["change_mask.tif"]["f1"], abs=1e-6)


def test_grids_that_cannot_be_placed_are_refused(tmp_path):
    from tests.conftest import write_tif

    a = write_tif(tmp_path / "p.tif", np.zeros((1, 20, 20), "uint8"), crs=None, transform=Affine.identity())
    b = write_tif(tmp_path / "t.tif", np.zeros((1, 22, 20), "uint8"), crs=None, transform=Affine.identity())
    r = CliRunner().invoke(app, ["evaluate", str(a), str(b)])
    assert r.exit_code == 2 and "cannot be placed on one grid" in r.output


def test_a_georeferenced_truth_on_another_window_or_grid(tmp_path):
    from cdtool.engine.evaluate import evaluate_files
    from tests.conftest import write_tif

    rng = np.random.default_rng(0)
    t = Affine(10, 0, 600000, 0, -10, 5000000)
    pred = (rng.random((64, 64)) > 0.6).astype("uint8")
    truth = pred[8:56, 4:52].copy()
    truth[:10] = 1 - truth[:10]  # some disagreement
    write_tif(tmp_path / "p.tif", pred, transform=t)
    write_tif(tmp_path / "t.tif", truth, transform=t * Affine.translation(4, 8))
    total, _ = evaluate_files(tmp_path / "p.tif", tmp_path / "t.tif")
    inside = pred[8:56, 4:52] == 1
    tp = int((inside & (truth == 1)).sum())
    assert total["f1"] == pytest.approx(2 * tp / (inside.sum() + (truth == 1).sum()), abs=1e-6)
    # off the prediction's pixel edges (2.3 pixels): warped onto its grid (nearest), scored where it lands
    write_tif(tmp_path / "h.tif", truth, transform=t * Affine.translation(6.3, 8.0))
    shifted, _ = evaluate_files(tmp_path / "p.tif", tmp_path / "h.tif")
    moved = pred[8:56, 6:54] == 1
    assert shifted["f1"] == pytest.approx(2 * int((moved & (truth == 1)).sum()) / (moved.sum() + (truth == 1).sum()),
                                          abs=1e-6)
